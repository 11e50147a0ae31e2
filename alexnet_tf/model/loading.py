"""Trained models for evaluation and export, and the paper's averaging of their softmax outputs.

A model path names either a `.keras` checkpoint written by training, which describes its own
architecture (`AlexNet.get_config`), or a `.npy` file in the bvlc_alexnet layout
(`alexnet_tf.model.npy_weights`), which holds weights only: it is read into the architecture the caller
gives, by default the `bvlc_alexnet` preset's (Caffe's network, whose published weights the layout
holds). Paths are any `tf.io.gfile` path (local, `gs://...`). Nothing here knows flags: the binaries
pass plain values. Every file that is not such a model is refused with
one line naming it (`errors.ModelFileError`); Keras' safe mode stays on, and a `.npy` file is
unpickled only as far as numpy arrays go (`npy_weights.read_npy`), so no file runs code.

Predictions are averaged as the paper's test-time results are (section 4.1: "averaging the
predictions made by the network's softmax layer on the ten patches"; section 6: "averaging the
predictions of five similar CNNs"): the softmax probabilities, never the logits.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from typing import Sequence

import keras
import tensorflow as tf

from alexnet_tf import errors, files
from alexnet_tf.model import npy_weights, presets
from alexnet_tf.model.alexnet import AlexNet, architecture_of, build_alexnet
from alexnet_tf.model.architecture import AlexNetConfig

CHECKPOINT_SUFFIX = ".keras"
WEIGHTS_SUFFIX = ".npy"
_KERAS_CONFIG = "config.json"  # The member of a .keras archive that describes the model.
_ALEXNET_NAME = "alexnet_tf>AlexNet"  # AlexNet's name in Keras' registry (register_keras_serializable).


def load_model(path: str, config: AlexNetConfig | None = None, *, num_classes: int | None = None) -> AlexNet:
    """The model at `path`, unplaced and uncompiled.

    Args:
        path: a `.keras` checkpoint (its own architecture: `config` and `num_classes` are not
            read; comparing them with the checkpoint's `architecture_of` is the caller's business), or a
            bvlc-layout `.npy` file.
        config: for a `.npy` file, the architecture to read it into (default: the `bvlc_alexnet`
            preset's, `alexnet_tf.model.presets`).
        num_classes: for a `.npy` file, fc8's units, replacing `config.num_classes`; None takes
            as many as the file's fc8 has.

    Raises:
        errors.ModelFileError: the file is missing, a directory, neither a `.keras` checkpoint
            of an `AlexNet` nor a safe bvlc-layout `.npy` file, or its weights do not fit
            `config` (the message names the layer and both shapes).
    """
    _check_is_file(path)
    if path.endswith(CHECKPOINT_SUFFIX):
        return _load_checkpoint(path)
    if path.endswith(WEIGHTS_SUFFIX):
        return _load_npy(path, config or presets.get(presets.BVLC_ALEXNET).architecture, num_classes)
    raise errors.ModelFileError(
        f"{path} is neither a {CHECKPOINT_SUFFIX} checkpoint nor a bvlc-layout {WEIGHTS_SUFFIX} weights file"
    )


def checkpoint_architecture(path: str) -> AlexNetConfig:
    """The architecture a `.keras` checkpoint of an `AlexNet` describes, read from its config.json without
    building the model (seconds for the paper's 60 million parameters become milliseconds).

    Raises:
        errors.ModelFileError: the file is not a readable `.keras` archive, or not of an `AlexNet`.
    """
    _check_is_file(path)
    try:
        config = json.loads(_keras_config(path))
    except (ValueError, UnicodeDecodeError) as error:
        raise errors.ModelFileError(f"{path}: its {_KERAS_CONFIG} is not JSON ({error})") from None
    if not isinstance(config, dict) or config.get("registered_name") != _ALEXNET_NAME:
        found = (config.get("registered_name") or config.get("class_name")) if isinstance(config, dict) else None
        raise errors.ModelFileError(f"{path} is a Keras model of class {found}, not an AlexNet of this project")
    fields = {name: value for name, value in (config.get("config") or {}).items() if name != "name"}
    try:
        return AlexNetConfig(**fields)
    except (TypeError, errors.ConfigError) as error:
        raise errors.ModelFileError(f"{path}: its architecture is not one this version builds ({error})") from None


def _check_is_file(path: str) -> None:
    if tf.io.gfile.isdir(path):
        raise errors.ModelFileError(f"{path} is a directory, not a {CHECKPOINT_SUFFIX} or {WEIGHTS_SUFFIX} model file")
    if not tf.io.gfile.exists(path):
        raise errors.ModelFileError(f"{path}: no such file")


def _keras_config(path: str) -> bytes:
    """The config.json of the `.keras` zip archive at `path`; ModelFileError if it is no such archive."""
    # Keras says "File not found" of a file that is there but no .keras archive: look first.
    with tf.io.gfile.GFile(path, "rb") as f:
        try:
            # The magic first: zipfile's own test seeks before the start of a short GFile, which
            # raises no OSError.
            if f.read(len(files.ZIP_MAGIC)) != files.ZIP_MAGIC:
                raise zipfile.BadZipFile("no zip magic")
            with zipfile.ZipFile(f) as archive:
                if _KERAS_CONFIG not in archive.namelist():
                    raise errors.ModelFileError(
                        f"{path} is a zip archive without {_KERAS_CONFIG}, not a Keras model")
                return archive.read(_KERAS_CONFIG)
        except (zipfile.BadZipFile, OSError, tf.errors.OpError):
            raise errors.ModelFileError(
                f"{path} is not a {CHECKPOINT_SUFFIX} checkpoint (not a readable zip archive)") from None


def _load_checkpoint(path: str) -> AlexNet:
    _keras_config(path)
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - Keras fails in many ways on a bad archive; all one line.
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise errors.ModelFileError(f"{path}: Keras cannot load it ({type(error).__name__}: {first_line})") from None
    try:
        architecture_of(model)
    except errors.ModelFileError as error:
        raise errors.ModelFileError(f"{path}: {error}") from None
    return model


def _load_npy(path: str, config: AlexNetConfig, num_classes: int | None) -> AlexNet:
    weights = npy_weights.read_npy(path)
    classes = num_classes if num_classes is not None else len(weights["fc8"][1])
    model = build_alexnet(config=dataclasses.replace(config, num_classes=classes))
    try:
        npy_weights.load_npy_weights(model, weights)
    except errors.ModelFileError as error:
        raise errors.ModelFileError(f"{path} does not fit the model described: {error}") from None
    return model


def averaged_probabilities(models: Sequence[keras.Model], images: tf.Tensor) -> tf.Tensor:
    """Softmax probabilities averaged over models and crops: float32 [batch, num_classes].

    Args:
        models: the ensemble (one model for a single network); all read the same images.
        images: float32 [batch, S, S, 3], or [batch, crops, S, S, 3] (e.g. the ten patches of
            `augment.ten_crops`), preprocessed as the models were trained.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    crops = images.shape[1] if images.shape.rank == 5 else 1
    flat = tf.reshape(images, [-1, *images.shape[-3:]])
    probabilities = tf.add_n(
        [tf.nn.softmax(tf.cast(model(flat, training=False), tf.float32)) for model in models]
    ) / len(models)
    return tf.reduce_mean(tf.reshape(probabilities, [-1, crops, probabilities.shape[-1]]), axis=1)
