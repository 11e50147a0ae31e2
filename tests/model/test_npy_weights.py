"""The bvlc_alexnet.npy layout into and out of every variant, and reading it without running code."""

import io
import os
import pickle
import pickletools
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from numpy.lib import format as npy_format

from alexnet_tf import errors
from alexnet_tf.model import build_alexnet, inner_layer, loading
from alexnet_tf.model.npy_weights import load_npy_weights, npy_weights, read_npy, save_npy_weights

SMALL = dict(width=0.125, image_size=67, num_classes=10)
VARIANTS = {"two_tower": dict(towers=2), "grouped": dict(towers=1, groups=2),
            "dense": dict(towers=1, groups=1)}


def bvlc_like(seed=0, width=0.125, num_classes=10) -> dict:
    """Random weights in the bvlc_alexnet layout for a network of the given width."""
    rng = np.random.default_rng(seed)
    c = {k: int(round(v * width)) * 2 for k, v in
         dict(conv1=48, conv2=128, conv3=192, conv4=192, conv5=128).items()}
    fc = int(round(4096 * width))
    shapes = {
        "conv1": (11, 11, 3, c["conv1"]), "conv2": (5, 5, c["conv1"] // 2, c["conv2"]),
        "conv3": (3, 3, c["conv2"], c["conv3"]), "conv4": (3, 3, c["conv3"] // 2, c["conv4"]),
        "conv5": (3, 3, c["conv4"] // 2, c["conv5"]), "fc6": (1 * 1 * c["conv5"], fc),
        "fc7": (fc, fc), "fc8": (fc, num_classes),
    }
    return {name: [rng.normal(0, 0.05, shape).astype(np.float32),
                   rng.normal(0, 0.05, shape[-1]).astype(np.float32)]
            for name, shape in shapes.items()}


def images(n=2, size=67):
    return np.random.default_rng(1).normal(0, 40, (n, size, size, 3)).astype(np.float32)


def test_npy_file_round_trip_in_every_variant(tmp_path):
    path = tmp_path / "bvlc_alexnet.npy"
    np.save(path, bvlc_like(), allow_pickle=True)
    for kwargs in (VARIANTS["two_tower"], VARIANTS["grouped"]):
        model = build_alexnet(**SMALL, **kwargs)
        load_npy_weights(model, path)
        save_npy_weights(model, tmp_path / "out.npy")
        for name, (w, b) in read_npy(tmp_path / "out.npy").items():
            np.testing.assert_array_equal(w, bvlc_like()[name][0], err_msg=name)
            np.testing.assert_array_equal(b, bvlc_like()[name][1], err_msg=name)


def test_two_tower_split_puts_group_zero_in_tower_a():
    weights = bvlc_like()
    model = build_alexnet(**SMALL)
    load_npy_weights(model, weights)
    w3 = weights["conv3"][0]
    np.testing.assert_array_equal(inner_layer(model, "conv3a").kernel, w3[..., : w3.shape[-1] // 2])
    np.testing.assert_array_equal(inner_layer(model, "conv3b").kernel, w3[..., w3.shape[-1] // 2:])
    np.testing.assert_array_equal(inner_layer(model, "fc6").kernel, weights["fc6"][0])


def test_all_variants_compute_the_same_function_from_the_same_file():
    weights = bvlc_like()
    outputs = {}
    for lrn in (False, True):
        for key, kwargs in VARIANTS.items():
            model = build_alexnet(lrn=lrn, **SMALL, **kwargs)
            load_npy_weights(model, weights)
            outputs[key, lrn] = model.predict(images(), verbose=0)
    # Without LRN the three are one function; with it, the two-tower network normalizes within
    # each tower, and the single streams across all channels.
    np.testing.assert_allclose(outputs["two_tower", False], outputs["grouped", False], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs["dense", False], outputs["grouped", False], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs["dense", True], outputs["grouped", True], rtol=1e-4, atol=1e-5)
    assert not np.allclose(outputs["two_tower", True], outputs["grouped", True], rtol=1e-4)


def test_dense_kernels_are_block_diagonal():
    weights = bvlc_like()
    model = build_alexnet(**SMALL, **VARIANTS["dense"])
    load_npy_weights(model, weights)
    dense = keras.ops.convert_to_numpy(inner_layer(model, "conv2").kernel)
    grouped = weights["conv2"][0]
    half_in, half_out = grouped.shape[2], grouped.shape[3] // 2
    np.testing.assert_array_equal(dense[:, :, :half_in, :half_out], grouped[..., :half_out])
    np.testing.assert_array_equal(dense[:, :, half_in:, half_out:], grouped[..., half_out:])
    assert not dense[:, :, :half_in, half_out:].any() and not dense[:, :, half_in:, :half_out].any()


def test_shape_mismatch_names_the_layer_and_both_shapes_and_assigns_nothing():
    model = build_alexnet(**SMALL, towers=1, groups=2)
    before = [w.copy() for w in model.get_weights()]
    weights = bvlc_like(num_classes=7)
    with pytest.raises(errors.ModelFileError, match=r"layer fc8: the weights have shape \(512, 7\), "
                                         r"the model expects \(512, 10\)"):
        load_npy_weights(model, weights)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    two_tower = build_alexnet(**SMALL)
    with pytest.raises(errors.ModelFileError, match=r"layer conv1: the weights have shape \(11, 11, 3, 6\), "
                                         r"the model expects \(11, 11, 3, 12\)"):
        load_npy_weights(two_tower, bvlc_like(width=0.0625))


def test_skip_leaves_a_new_fc8_for_fine_tuning():
    model = build_alexnet(**{**SMALL, "num_classes": 3})
    fc8 = keras.ops.convert_to_numpy(inner_layer(model, "fc8").kernel).copy()
    load_npy_weights(model, bvlc_like(), skip=("fc8",))
    np.testing.assert_array_equal(inner_layer(model, "fc8").kernel, fc8)
    with pytest.raises(errors.ModelFileError, match="no layer fc7"):
        load_npy_weights(model, {k: v for k, v in bvlc_like().items() if k != "fc7"}, skip=["fc8"])


def test_mismatch_from_a_file_names_the_file(tmp_path):
    path = str(tmp_path / "w.npy")
    np.save(path, bvlc_like(num_classes=7), allow_pickle=True)
    with pytest.raises(errors.ModelFileError, match=r"^\S+w\.npy: layer fc8: the weights have shape \(512, 7\)"):
        load_npy_weights(build_alexnet(**SMALL), path)


class _Exploit:
    """Pickles as a call of os.system, as a hostile weights file would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def object_npy(payload: bytes) -> bytes:
    """A .npy file of a 0-d object array whose pickle is `payload` (np.save's layout)."""
    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
    return header.getvalue() + payload


@pytest.mark.slow
@pytest.mark.parametrize("where", ["top level", "inside a layer"])
def test_a_pickle_that_calls_code_is_refused_and_never_run(tmp_path, where):
    marker = tmp_path / "pwned"
    weights = bvlc_like()
    if where == "top level":
        obj = _Exploit(marker)
    else:
        weights["conv1"] = [weights["conv1"][0], _Exploit(marker)]
        obj = np.array(weights, dtype=object)
    payload = pickle.dumps(obj, protocol=2)
    # The file is what it claims: its pickle names os.system (posix.system on Linux).
    assert any(op.name == "GLOBAL" and arg.endswith("system") for op, arg, _ in pickletools.genops(payload))
    path = tmp_path / "evil.npy"
    path.write_bytes(object_npy(payload))
    with pytest.raises(errors.ModelFileError, match=r"evil\.npy is refused: its pickle calls \w+\.system"):
        read_npy(path)
    with pytest.raises(errors.ModelFileError, match=r"evil\.npy is refused"):
        load_npy_weights(build_alexnet(**SMALL), path)
    assert not marker.exists()


def test_python2_style_pickles_of_the_layout_load(tmp_path):
    # Protocol 2 (Python 2's, as the published file was written) names numpy.core and pickles bytes
    # with _codecs.encode.
    payload = pickle.dumps(np.array(bvlc_like(), dtype=object), protocol=2)
    payload = payload.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path = tmp_path / "py2.npy"
    path.write_bytes(object_npy(payload))
    np.testing.assert_array_equal(read_npy(path)["conv3"][0], bvlc_like()["conv3"][0])


def test_save_and_read_through_gfile_on_ram():
    model = build_alexnet(**SMALL, towers=1, seed=0)
    save_npy_weights(model, "ram://weights/alexnet.npy")
    assert tf.io.gfile.exists("ram://weights/alexnet.npy")
    read = read_npy("ram://weights/alexnet.npy")
    np.testing.assert_array_equal(read["fc7"][0], inner_layer(model, "fc7").kernel)
    assert sorted(read) == sorted(bvlc_like())


def layout(change):
    weights = bvlc_like()
    change(weights)
    return weights


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"not numpy"), r"is not a \.npy file numpy writes"),
    (lambda p: np.save(p, np.zeros((2, 3), np.float32)), r"holds a float32 array of shape \(2, 3\)"),
    (lambda p: np.savez(p.open("wb"), conv1=np.zeros(3)), r"is a zip archive \(\.npz or \.keras\)"),
    (lambda p: np.save(p, [1, 2], allow_pickle=True), "holds a int64 array"),
    (lambda p: np.save(p, layout(lambda w: w.pop("fc8")), allow_pickle=True), "has no layer fc8"),
    (lambda p: np.save(p, layout(lambda w: w.update(fc7=[w["fc7"][0].astype(np.int32), w["fc7"][1]])),
                       allow_pickle=True), "layer fc7 holds int32 and float32, not floats"),
    (lambda p: np.save(p, layout(lambda w: w.update(conv2=[w["conv2"][0][0], w["conv2"][1]])),
                       allow_pickle=True), r"layer conv2 has W \(5, 6, 32\) and b \(32,\); expected a 4-dim"),
    (lambda p: np.save(p, layout(lambda w: w.update(fc6=[w["fc6"][0]])), allow_pickle=True),
     "layer fc6 is not a pair"),
    (lambda p: np.save(p, {"conv1": 3}, allow_pickle=True), "has no layer conv2"),
    (lambda p: p.write_bytes(object_npy(b"\x80\x02}q")), "is corrupt"),
])
def test_files_not_in_the_layout_give_one_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "bad.npy"
    make(path)
    with pytest.raises(errors.ModelFileError, match=message) as raised:
        read_npy(path)
    text = str(raised.value)
    assert text.startswith(str(path)) and "\n" not in text


# The shapes of the published bvlc_alexnet.npy (Caffe's bvlc_alexnet converted to numpy): conv2, conv4 and conv5
# read half of their inputs (group: 2), fc6 reads pool5's 6 x 6 x 256 values.
PUBLISHED_SHAPES = {"conv1": (11, 11, 3, 96), "conv2": (5, 5, 48, 256), "conv3": (3, 3, 256, 384),
                    "conv4": (3, 3, 192, 384), "conv5": (3, 3, 192, 256), "fc6": (9216, 4096),
                    "fc7": (4096, 4096), "fc8": (4096, 1000)}


@pytest.mark.slow
def test_a_file_of_the_published_layout_and_size_loads_as_caffes_network(tmp_path):
    """As the published file was written: a Python 2 (protocol 2) pickle of {layer: [W, b]}, 61 million floats."""
    rng = np.random.default_rng(0)
    weights = {name: [rng.standard_normal(shape, np.float32), rng.standard_normal(shape[-1:], np.float32)]
               for name, shape in PUBLISHED_SHAPES.items()}
    payload = pickle.dumps(np.array(weights, dtype=object), protocol=2)
    path = tmp_path / "bvlc_alexnet.npy"
    path.write_bytes(object_npy(payload.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")))
    model = loading.load_model(str(path))  # No architecture given: the bvlc_alexnet preset.
    config = model.config
    assert (config.towers, config.groups, config.image_size, config.lrn_k, config.num_classes) == \
        (1, 2, 227, 1.0, 1000)
    assert model.count_params() == 60_965_224
    loaded = npy_weights(model)
    for name in ("conv2", "fc6", "fc8"):
        np.testing.assert_array_equal(loaded[name][0], weights[name][0])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
