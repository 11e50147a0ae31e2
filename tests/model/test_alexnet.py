"""build_alexnet and AlexNet: parameter counts, feature-map shapes, initialization, ablations, the
config the model carries, saving."""

import dataclasses
import json
import sys
import zipfile

import keras
import numpy as np
import pytest

import alexnet_tf
from alexnet_tf import errors
from alexnet_tf.model.architecture import CONV_LAYERS, AlexNetConfig, conv1_padding_pixels, pool5_size
from alexnet_tf.model import (AlexNet, architecture_of, build_alexnet, conv1_kernel, conv_layers, inner_layer,
                              without_placement)

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
    # The classifier feeds the softmax, not a ReLU: it keeps the paper's N(0, 0.01), so the logits start small
    # (0.44 here; He-normal's sqrt(2 / 1024) = 0.044 would make them 2.0).
    fc8 = keras.ops.convert_to_numpy(inner_layer(model, "fc8").kernel)
    assert fc8.std() == pytest.approx(0.01, rel=0.05) and not inner_layer(model, "fc8").bias.numpy().any()
    logits = model(np.random.default_rng(0).normal(0, 58, (8, 224, 224, 3)).astype(np.float32)).numpy()
    assert logits.std() < 1.0


@pytest.mark.parametrize("init, stddev", [("he", np.sqrt(2 / (11 * 11 * 3)) / (58.0 * 0.125)), ("paper", 0.01)])
def test_conv1_init_gain_scales_conv1_alone(init, stddev):
    kwargs = dict(towers=1, groups=1, init=init, width=0.25, image_size=67, num_classes=10, input_scale=0.125, seed=0)
    plain, scaled = build_alexnet(**kwargs), build_alexnet(conv1_init_gain=0.25, **kwargs)
    conv1 = keras.ops.convert_to_numpy(inner_layer(scaled, "conv1").kernel)
    assert conv1.std() == pytest.approx(0.25 * stddev, rel=0.05)
    for name in ("conv2", "fc6", "fc8"):
        np.testing.assert_array_equal(inner_layer(scaled, name).kernel.numpy(), inner_layer(plain, name).kernel.numpy())


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
    # 100,000 units: the mean's standard error is 0.003, so 0.02 is over 6 of them (4,000 units failed once
    # in a suite run at 1.051: the dropout mask is drawn from Keras' unseeded global generator).
    x = np.ones((10000, 10), np.float32)
    np.testing.assert_array_equal(dropout(x, training=False), x)
    train = keras.ops.convert_to_numpy(dropout(x, training=True))
    assert set(np.unique(train)) == {0.0, 2.0}
    assert train.mean() == pytest.approx(1.0, abs=0.02)


def test_width_scales_channels_but_not_classes():
    model = build_alexnet(width=0.25, image_size=67, num_classes=7, towers=1, groups=2)
    assert inner_layer(model, "conv1").filters == 24
    assert inner_layer(model, "conv5").filters == 64
    assert inner_layer(model, "fc6").units == 1024
    assert model.output.shape == (None, 7)
    assert model.get_layer("pool5").output.shape == (None, 1, 1, 64)


def test_invalid_arguments():
    for kwargs, message in [(dict(towers=3), "towers must be 1 or 2, got 3"), (dict(groups=4), "groups"),
                            (dict(towers=2, groups=1), "grouped by construction"),
                            (dict(towers=1, tower_devices=("/CPU:0", "/CPU:1")), "needs towers=2"),
                            (dict(tower_devices=("/CPU:0",)), "two devices"),
                            (dict(pooling="avg"), "pooling"), (dict(activation="gelu"), "activation"),
                            (dict(init="xavier"), "init"), (dict(width=0), "width"),
                            (dict(conv1_init_gain=0.0), "conv1_init_gain"),
                            (dict(num_classes=0), "num_classes"), (dict(lrn_depth=4), "lrn_depth"),
                            (dict(dropout=1.0), "dropout"), (dict(conv1_padding="same"), "conv1_padding"),
                            (dict(image_size=63), r"image_size=63 leaves no pixel after pool5")]:
        with pytest.raises(errors.ConfigError, match=message):
            build_alexnet(**kwargs)


def test_pool5_size_is_six_for_224_and_227_and_decides_the_smallest_image():
    assert pool5_size(AlexNetConfig(image_size=224)) == pool5_size(AlexNetConfig(image_size=227)) == 6
    # 64 pads conv1 by 2 to (64 + 4 - 11) // 4 + 1 = 15 -> 7 -> 3 -> 1; 63 is unpadded: 14 -> 6 -> 2 -> 0.
    assert pool5_size(AlexNetConfig(image_size=64)) == 1
    assert pool5_size(AlexNetConfig(image_size=67, pooling="non_overlapping")) == 1
    with pytest.raises(errors.ConfigError, match="^AlexNetConfig: image_size=63"):
        AlexNetConfig(image_size=63)


def test_config_defaults_are_the_papers():
    config = AlexNetConfig()
    assert (config.num_classes, config.towers, config.groups, config.image_size, config.width) == (1000, 2, 2, 224, 1.0)
    assert (config.lrn_depth, config.lrn_k, config.lrn_alpha, config.lrn_beta) == (5, 2.0, 1e-4, 0.75)
    assert (config.pooling, config.activation, config.dropout, config.init) == ("overlapping", "relu", 0.5, "paper")
    assert build_alexnet().config == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.towers = 1


def test_build_alexnet_takes_a_config_or_arguments_not_both():
    config = AlexNetConfig(num_classes=10, towers=1, groups=1, image_size=67, width=0.125)
    model = build_alexnet(config=config, name="net")
    assert isinstance(model, AlexNet) and model.config == config and model.name == "net"
    assert inner_layer(model, "conv2").kernel.shape == (5, 5, 12, 32)
    with pytest.raises(errors.ConfigError, match="not both.*towers, width"):
        build_alexnet(towers=1, width=0.5, config=config)
    # An equal-to-default argument beside a config is refused too: nothing is silently ignored.
    with pytest.raises(errors.ConfigError, match="not both.*towers"):
        build_alexnet(config, towers=2)
    with pytest.raises(errors.ConfigError, match="unknown architecture argument tower, widht"):
        build_alexnet(tower=1, widht=0.5)
    with pytest.raises(errors.ConfigError, match="tower_devices takes two devices and needs towers=2"):
        build_alexnet(config, tower_devices=("/CPU:0", "/CPU:1"))


def test_get_config_is_the_config_fields_and_the_name_without_placement():
    model = build_alexnet(width=0.125, image_size=67, num_classes=10, tower_devices=("/CPU:0", "/CPU:1"))
    assert model.get_config() == {"name": "alexnet", **dataclasses.asdict(model.config)}
    assert "tower_devices" not in model.get_config()
    assert model.tower_devices == ("/CPU:0", "/CPU:1")


def test_from_config_round_trip_gives_identical_logits():
    model = build_alexnet(width=0.125, image_size=67, num_classes=10, seed=4, towers=1, lrn_k=1.0)
    clone = AlexNet.from_config(model.get_config())
    assert isinstance(clone, AlexNet) and clone.config == model.config
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(0).normal(0, 50, (2, 67, 67, 3)).astype(np.float32)
    np.testing.assert_array_equal(clone(x), model(x))


def test_model_config_refuses_a_plain_keras_model():
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="old")
    with pytest.raises(errors.ModelFileError, match="'old' is not an AlexNet.*older alexnet_tf.*save_npy_weights"):
        architecture_of(plain)


def test_conv_layers_of_every_variant_can_be_frozen():
    for kwargs, names in [(VARIANTS["two_tower"], [c + t for c in CONV_LAYERS for t in "ab"]),
                          (VARIANTS["dense"], list(CONV_LAYERS))]:
        model = build_alexnet(width=0.125, image_size=67, num_classes=10, **kwargs)
        layers = conv_layers(model)
        assert [layer.name for layer in layers] == names
        assert all(isinstance(layer, keras.layers.Conv2D) for layer in layers)
        for layer in layers:
            layer.trainable = False
        # Only fc6, fc7 and fc8 train: their kernels and biases.
        assert [v.path.split("/")[-2] for v in model.trainable_variables] == ["fc6", "fc6", "fc7", "fc7", "fc8", "fc8"]


def test_without_placement_keeps_the_network_and_weights():
    placed = build_alexnet(width=0.125, image_size=67, num_classes=10, seed=2, tower_devices=("/CPU:0", "/CPU:1"))
    plain = without_placement(placed)
    assert plain.tower_devices is None and plain.config == placed.config
    assert plain.get_layer("conv2b").device is None and placed.get_layer("conv2b").device == "/CPU:1"
    for a, b in zip(placed.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert without_placement(plain) is plain


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
    loaded = keras.models.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).normal(size=(2, 67, 67, 3)).astype(np.float32) * 50
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    lrn = inner_layer(loaded, "lrn1a" if devices else "lrn1")
    assert isinstance(lrn, alexnet_tf.LocalResponseNormalization) and lrn.alpha == 2e-5
    # The variant comes back from the file, and placement does not: a two-GPU checkpoint loads unplaced.
    assert isinstance(loaded, AlexNet) and loaded.config == model.config
    assert loaded.tower_devices is None
    if devices:
        assert loaded.get_layer("conv2b").device is None


def test_keras_file_records_the_variant(tmp_path):
    model = build_alexnet(num_classes=7, towers=1, groups=2, image_size=227, width=0.125,
                          lrn_k=1.0, lrn_alpha=2e-5, input_scale=0.5, seed=3, name="caffe")
    path = tmp_path / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        saved = json.loads(archive.read("config.json"))
    assert saved["registered_name"] == "alexnet_tf>AlexNet"
    expected = {"name": "caffe", "num_classes": 7, "towers": 1, "groups": 2, "image_size": 227, "width": 0.125,
                "lrn": True, "lrn_depth": 5, "lrn_k": 1.0, "lrn_alpha": 2e-5, "lrn_beta": 0.75,
                "pooling": "overlapping", "activation": "relu", "dropout": 0.5, "init": "paper",
                "conv1_padding": "auto", "input_scale": 0.5, "conv1_init_gain": 1.0, "seed": 3}
    assert saved["config"] == expected
    assert keras.models.load_model(path, safe_mode=True).get_config() == expected


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
