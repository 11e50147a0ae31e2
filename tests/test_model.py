"""build_alexnet: parameter counts, feature-map shapes, initialization, ablations, saving."""

import sys

import keras
import numpy as np
import pytest

import alexnet_tf
from alexnet_tf.model import build_alexnet, conv1_kernel, conv1_padding_pixels, inner_layer

# Per-layer parameters, kernel + bias, from the paper's layer sizes (section 3.5, Figure 2).
GROUPED_COUNTS = {
    "conv1": 11 * 11 * 3 * 96 + 96,
    "conv2": 5 * 5 * 48 * 256 + 256,
    "conv3": 3 * 3 * 256 * 384 + 384,
    "conv4": 3 * 3 * 192 * 384 + 384,
    "conv5": 3 * 3 * 192 * 256 + 256,
    "fc6": 6 * 6 * 256 * 4096 + 4096,
    "fc7": 4096 * 4096 + 4096,
    "fc8": 4096 * 1000 + 1000,
}
DENSE_COUNTS = {
    **GROUPED_COUNTS,
    "conv2": 5 * 5 * 96 * 256 + 256,
    "conv4": 3 * 3 * 384 * 384 + 384,
    "conv5": 3 * 3 * 384 * 256 + 256,
}
VARIANTS = {"two_tower": dict(towers=2), "grouped": dict(towers=1, groups=2),
            "dense": dict(towers=1, groups=1)}


def layer_params(model, name):
    names = {layer.name for layer in model.layers}
    parts = [name] if name in names else [name + "a", name + "b"]
    return sum(model.get_layer(p).count_params() for p in parts)


@pytest.fixture(scope="module")
def full_models():
    return {key: build_alexnet(seed=0, **kwargs) for key, kwargs in VARIANTS.items()}


@pytest.mark.parametrize("variant, total", [("two_tower", 60_965_224), ("grouped", 60_965_224),
                                            ("dense", 62_378_344)])
def test_parameter_counts(full_models, variant, total):
    model = full_models[variant]
    assert model.count_params() == total
    counts = DENSE_COUNTS if variant == "dense" else GROUPED_COUNTS
    assert sum(counts.values()) == total
    for name, count in counts.items():
        assert layer_params(model, name) == count, name


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("image_size", [224, 227])
def test_feature_map_sizes(variant, image_size):
    model = build_alexnet(image_size=image_size, **VARIANTS[variant])
    tower = "a" if variant == "two_tower" else ""
    channels = 1 if tower else 2
    expected = {
        "conv1": (55, 48), "pool1": (27, 48), "conv2": (27, 128), "pool2": (13, 128),
        "conv3": (13, 192), "conv4": (13, 192), "conv5": (13, 128), "pool5": (6, 128),
    }
    for name, (side, c) in expected.items():
        assert model.get_layer(name + tower).output.shape == (None, side, side, c * channels), name
    assert model.get_layer("flatten").output.shape == (None, 9216)
    assert model.output.shape == (None, 1000)


def test_conv1_padding_rule():
    # 224: (224 + 2*2 - 11) // 4 + 1 = 55; 227: (227 - 11) / 4 + 1 = 55 exactly, no padding.
    assert conv1_padding_pixels(224) == 2 and conv1_padding_pixels(227) == 0
    assert build_alexnet(image_size=224).get_layer("conv1_pad").output.shape == (None, 228, 228, 3)
    assert "conv1_pad" not in {layer.name for layer in build_alexnet(image_size=227).layers}


def test_paper_initialization_statistics(full_models):
    model = full_models["two_tower"]
    for name in ["conv1a", "conv2b", "conv3a", "conv4b", "conv5a", "fc6", "fc7", "fc8"]:
        layer = inner_layer(model, name)
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        bias = keras.ops.convert_to_numpy(layer.bias)
        assert abs(kernel.mean()) < 3 * 0.01 / np.sqrt(kernel.size), name
        assert kernel.std() == pytest.approx(0.01, rel=0.05), name
        expected_bias = 1.0 if name[:-1] in ("conv2", "conv4", "conv5") or name in ("fc6", "fc7") else 0.0
        np.testing.assert_array_equal(bias, expected_bias, err_msg=name)


def test_he_initialization():
    model = build_alexnet(towers=1, groups=1, init="he", width=0.25, seed=0)
    conv3 = keras.ops.convert_to_numpy(inner_layer(model, "conv3").kernel)
    fan_in = 3 * 3 * conv3.shape[2]
    # HeNormal is a truncated normal whose stddev is sqrt(2 / fan_in).
    assert conv3.std() == pytest.approx(np.sqrt(2 / fan_in), rel=0.05)
    assert not keras.ops.convert_to_numpy(inner_layer(model, "conv2").bias).any()
    conv1 = keras.ops.convert_to_numpy(inner_layer(model, "conv1").kernel)
    assert conv1.std() == pytest.approx(np.sqrt(2 / (11 * 11 * 3)) / 58.0, rel=0.05)


def test_seed_makes_initialization_repeatable():
    a, b = (build_alexnet(width=0.125, image_size=67, num_classes=10, seed=3) for _ in range(2))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_ablation_switches():
    kwargs = dict(width=0.125, image_size=67, num_classes=10)
    names = {layer.name for layer in build_alexnet(lrn=False, **kwargs).layers}
    assert not any(n.startswith("lrn") for n in names)
    pool = inner_layer(build_alexnet(pooling="non_overlapping", **kwargs), "pool1a")
    assert (pool.pool_size, pool.strides) == ((2, 2), (2, 2))
    pool = inner_layer(build_alexnet(**kwargs), "pool1a")
    assert (pool.pool_size, pool.strides) == ((3, 3), (2, 2))
    tanh = build_alexnet(activation="tanh", **kwargs)
    assert inner_layer(tanh, "conv3b").activation is keras.activations.tanh
    assert inner_layer(tanh, "fc6").activation is keras.activations.tanh
    assert inner_layer(build_alexnet(**kwargs), "fc7").activation is keras.activations.relu
    assert "dropout6" not in {layer.name for layer in build_alexnet(dropout=0.0, **kwargs).layers}


def test_dropout_is_inverted_and_off_at_inference():
    model = build_alexnet(width=0.125, image_size=67, num_classes=10, seed=0)
    dropout = inner_layer(model, "dropout6")
    assert dropout.rate == 0.5
    x = np.ones((1000, 4), np.float32)
    np.testing.assert_array_equal(dropout(x, training=False), x)
    train = keras.ops.convert_to_numpy(dropout(x, training=True))
    assert set(np.unique(train)) == {0.0, 2.0}
    assert train.mean() == pytest.approx(1.0, abs=0.05)


def test_width_scales_channels_but_not_classes():
    model = build_alexnet(width=0.25, image_size=67, num_classes=7, towers=1, groups=2)
    assert inner_layer(model, "conv1").filters == 24
    assert inner_layer(model, "conv5").filters == 64
    assert inner_layer(model, "fc6").units == 1024
    assert model.output.shape == (None, 7)
    assert model.get_layer("pool5").output.shape == (None, 1, 1, 64)


def test_invalid_arguments():
    for kwargs, message in [(dict(towers=3), "towers"), (dict(groups=4), "groups"),
                            (dict(towers=2, groups=1), "grouped by construction"),
                            (dict(towers=1, tower_devices=("/CPU:0", "/CPU:1")), "towers=2"),
                            (dict(pooling="avg"), "pooling"), (dict(activation="gelu"), "activation"),
                            (dict(init="xavier"), "init")]:
        with pytest.raises(ValueError, match=message):
            build_alexnet(**kwargs)


def test_conv1_kernel_of_every_variant():
    for kwargs in VARIANTS.values():
        model = build_alexnet(width=0.25, image_size=67, num_classes=10, **kwargs)
        assert conv1_kernel(model).shape == (11, 11, 3, 24)
    model = build_alexnet(width=0.25, image_size=67, num_classes=10)
    a = keras.ops.convert_to_numpy(inner_layer(model, "conv1a").kernel)
    np.testing.assert_array_equal(conv1_kernel(model)[..., :12], a)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_keras_file_round_trip(tmp_path, variant):
    devices = ("/CPU:0", "/CPU:1") if variant == "two_tower" else None
    model = build_alexnet(width=0.125, image_size=67, num_classes=10, seed=1,
                          tower_devices=devices, lrn_k=1.0, lrn_alpha=2e-5, **VARIANTS[variant])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(0).normal(size=(2, 67, 67, 3)).astype(np.float32) * 50
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    lrn = inner_layer(loaded, "lrn1a" if devices else "lrn1")
    assert isinstance(lrn, alexnet_tf.LocalResponseNormalization) and lrn.alpha == 2e-5
    if devices:
        assert loaded.get_layer("conv2b").device == "/CPU:1"


def test_placed_model_is_never_xla_compiled():
    model = build_alexnet(width=0.125, image_size=67, num_classes=10,
                          tower_devices=("/CPU:0", "/CPU:1"))
    with pytest.warns(UserWarning, match="jit_compile"):
        model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    assert model.jit_compile is False
    unplaced = build_alexnet(width=0.125, image_size=67, num_classes=10)
    unplaced.compile(optimizer="sgd", loss="mse", jit_compile=True)
    assert unplaced.jit_compile is True


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
