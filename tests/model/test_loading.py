"""loading.load_model: .keras checkpoints as they describe themselves, .npy files into a given
architecture, and a one-line ModelFileError naming the file for everything else."""

import dataclasses
import json
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import errors
from alexnet_tf.model import loading, presets
from alexnet_tf.model.architecture import AlexNetConfig
from alexnet_tf.model import AlexNet, build_alexnet, inner_layer
from alexnet_tf.model.npy_weights import npy_weights, save_npy_weights

SMALL = AlexNetConfig(num_classes=10, towers=1, groups=2, image_size=67, width=0.125, seed=0)


def images(n=2):
    return np.random.default_rng(1).normal(0, 40, (n, 67, 67, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(path, model) of a saved two-tower checkpoint trained on two devices."""
    model = build_alexnet(config=dataclasses.replace(SMALL, towers=2, lrn_k=1.0), tower_devices=("/CPU:0", "/CPU:1"))
    path = str(tmp_path_factory.mktemp("ckpt") / "epoch_001.keras")
    model.save(path)
    return path, model


def test_a_checkpoint_loads_as_it_describes_itself_unplaced(checkpoint):
    path, model = checkpoint
    # `config` is not read for a checkpoint: comparing it is the caller's business.
    loaded = loading.load_model(path, AlexNetConfig())
    assert isinstance(loaded, AlexNet) and loaded.config == model.config and loaded.tower_devices is None
    np.testing.assert_allclose(loaded(images()), model(images()), rtol=1e-6)


def test_npy_takes_fc8_from_the_file_unless_num_classes_is_given(tmp_path):
    source = build_alexnet(config=dataclasses.replace(SMALL, num_classes=7, seed=5))
    path = str(tmp_path / "w.npy")
    save_npy_weights(source, path)
    loaded = loading.load_model(path, SMALL)  # SMALL says 10 classes; the file's fc8 has 7.
    assert loaded.config == dataclasses.replace(SMALL, num_classes=7)
    np.testing.assert_allclose(loaded(images()), source(images()), rtol=1e-5)
    with pytest.raises(errors.ModelFileError,
                       match=r"w\.npy does not fit the model described: layer fc8: the weights have shape "
                             r"\(512, 7\), the model expects \(512, 10\)"):
        loading.load_model(path, SMALL, num_classes=10)


def test_npy_into_another_variant_names_the_layer_and_shapes(tmp_path):
    path = str(tmp_path / "w.npy")
    save_npy_weights(build_alexnet(config=SMALL), path)
    with pytest.raises(errors.ModelFileError, match=r"layer conv1: the weights have shape \(11, 11, 3, 12\), "
                                                     r"the model expects \(11, 11, 3, 24\)"):
        loading.load_model(path, dataclasses.replace(SMALL, width=0.25))


def test_npy_on_ram_filesystem():
    source = build_alexnet(config=SMALL)
    save_npy_weights(source, "ram://loading/w.npy")
    loaded = loading.load_model("ram://loading/w.npy", SMALL)
    np.testing.assert_array_equal(inner_layer(loaded, "conv5").kernel, inner_layer(source, "conv5").kernel)


def test_a_checkpoint_of_an_older_alexnet_tf_is_refused(tmp_path):
    # Before the model described itself, build_alexnet returned a plain functional model.
    model = build_alexnet(config=SMALL)
    old = keras.Model(model.inputs, model.outputs, name="alexnet")
    path = str(tmp_path / "old.keras")
    old.save(path)
    with pytest.raises(errors.ModelFileError, match=r"old\.keras: model 'alexnet' is not an AlexNet: it was written "
                                                     r"by an older alexnet_tf.*save_npy_weights.*--pretrained"):
        loading.load_model(path)


def test_safe_mode_stays_on(tmp_path):
    inputs = keras.Input((3,))
    lambda_model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = str(tmp_path / "lambda.keras")
    lambda_model.save(path)
    with pytest.raises(errors.ModelFileError, match=r"lambda\.keras: Keras cannot load it \(ValueError: .*safe_mode"):
        loading.load_model(path)


def zip_with(path, files):
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)


@pytest.mark.parametrize("name, make, message", [
    ("dir.keras", lambda p: p.mkdir(), r"dir\.keras is a directory, not a \.keras or \.npy model file"),
    ("missing.keras", lambda p: None, r"missing\.keras: no such file"),
    ("text.keras", lambda p: p.write_text("not a model"),
     r"text\.keras is not a \.keras checkpoint \(not a readable zip"),
    ("empty.keras", lambda p: zip_with(p, {"metadata.json": "{}"}), r"empty\.keras is a zip archive without "
                                                                       r"config\.json"),
    ("junk.keras", lambda p: zip_with(p, {"config.json": "{"}), r"junk\.keras: Keras cannot load it"),
    ("other.keras", lambda p: zip_with(p, {"config.json": json.dumps({"class_name": "Nope", "config": {}})}),
     r"other\.keras: Keras cannot load it"),
    ("weights.h5", lambda p: p.write_bytes(b"\x89HDF"), r"weights\.h5 is neither a \.keras checkpoint nor a "
                                                         r"bvlc-layout \.npy weights file"),
    ("dir.npy", lambda p: p.mkdir(), r"dir\.npy is a directory"),
    ("archive.npy", lambda p: np.savez(p.open("wb"), fc8=np.zeros(3)), r"archive\.npy is a zip archive"),
    ("ints.npy", lambda p: np.save(p, {n: [np.zeros((1, 1), np.int64), np.zeros(1, np.int64)] for n in
                                       ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")},
                                   allow_pickle=True), r"ints\.npy: layer conv1 holds int64 and int64, not floats"),
    ("no_fc8.npy", lambda p: np.save(p, {k: v for k, v in npy_weights(build_alexnet(config=SMALL)).items()
                                         if k != "fc8"}, allow_pickle=True), r"no_fc8\.npy has no layer fc8"),
])
def test_files_that_are_no_model_give_one_line_naming_the_file(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(errors.ModelFileError, match=message) as raised:
        loading.load_model(str(path), SMALL)
    text = str(raised.value)
    assert text.startswith(str(path)) and "\n" not in text


def test_averaged_probabilities_average_softmax_over_models_and_crops():
    class Fixed(keras.Model):
        def __init__(self, logits):
            super().__init__()
            self.logits = tf.constant(logits, tf.float32)

        def call(self, x, training=False):
            return tf.tile(self.logits[None], [tf.shape(x)[0], 1])

    models = [Fixed([0.0, 0.0]), Fixed([np.log(3.0), 0.0])]  # softmax (0.5, 0.5) and (0.75, 0.25)
    crops = np.zeros((4, 10, 5, 5, 3), np.float32)
    probabilities = loading.averaged_probabilities(models, crops).numpy()
    assert probabilities.shape == (4, 2)
    np.testing.assert_allclose(probabilities, [[0.625, 0.375]] * 4, rtol=1e-6)


def test_a_npy_file_without_an_architecture_is_read_as_caffes_network(tmp_path):
    """The bvlc_alexnet layout holds Caffe's weights: unless told otherwise, a .npy file is that network."""
    bvlc = presets.get(presets.BVLC_ALEXNET).architecture
    caffe = build_alexnet(config=dataclasses.replace(bvlc, width=0.0625, num_classes=7, seed=3))
    save_npy_weights(caffe, str(tmp_path / "w.npy"))
    with pytest.raises(errors.ModelFileError, match="conv1"):  # Full width by default: the narrow file does not fit.
        loading.load_model(str(tmp_path / "w.npy"))
    loaded = loading.load_model(str(tmp_path / "w.npy"), dataclasses.replace(bvlc, width=0.0625))
    assert loaded.config == dataclasses.replace(bvlc, width=0.0625, num_classes=7)
    assert (loaded.config.towers, loaded.config.image_size, loaded.config.lrn_k, loaded.config.lrn_alpha) == \
        (1, 227, 1.0, 2e-5)
    x = np.random.default_rng(0).normal(0, 50, (1, 227, 227, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x, training=False), caffe(x, training=False), rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
