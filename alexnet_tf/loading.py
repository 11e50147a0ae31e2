"""Trained models for evaluation and export, and the paper's averaging of their softmax outputs.

A model path names either a `.keras` checkpoint written by training (which holds its own
architecture), or a `.npy` file in the bvlc_alexnet layout (`alexnet_tf.weights`), whose
architecture the model flags describe (flags/bvlc.cfg for Caffe's published weights).

Predictions are averaged as the paper's test-time results are (section 4.1: "averaging the
predictions made by the network's softmax layer on the ten patches"; section 6: "averaging the
predictions of five similar CNNs"): the softmax probabilities, never the logits.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf
from absl import app, flags

from alexnet_tf import flags as flags_lib
from alexnet_tf import model as model_lib
from alexnet_tf import weights as weights_lib
from alexnet_tf.layers import OnDevice

CHECKPOINT_SUFFIX = ".keras"


def model_paths(flags_obj: flags.FlagValues) -> list[str]:
    """The models a run reads: --checkpoint or --pretrained, then every --ensemble entry."""
    if flags_obj.checkpoint and flags_obj.pretrained:
        raise app.UsageError("give --checkpoint or --pretrained, not both")
    first = flags_obj.checkpoint or flags_obj.pretrained
    paths = ([first] if first else []) + list(flags_obj.ensemble)
    if not paths:
        raise app.UsageError("no model: give --checkpoint=FILE.keras, --pretrained=FILE.npy or --ensemble")
    return paths


def load_model(path: str, flags_obj: flags.FlagValues) -> keras.Model:
    """The model at `path`: a `.keras` checkpoint, or a bvlc-layout `.npy` file on the model flags.

    For a `.npy` file, fc8 has --num_classes units, else as many as the file's fc8.

    Raises:
        app.UsageError: the file's weights do not fit the model the flags describe.
    """
    if path.endswith(CHECKPOINT_SUFFIX):
        return keras.models.load_model(path, compile=False)
    weights = weights_lib.read_npy(path)
    num_classes = flags_obj.num_classes or len(weights["fc8"][1])
    model = model_lib.build_alexnet(**flags_lib.model_kwargs(flags_obj, num_classes))
    try:
        weights_lib.load_npy_weights(model, weights)
    except ValueError as error:
        raise app.UsageError(f"{path} does not fit the model the flags describe: {error}") from error
    return model


def image_size(model: keras.Model) -> int:
    """S, the side of the square images [batch, S, S, 3] the model reads."""
    return int(model.input_shape[1])


def num_classes(model: keras.Model) -> int:
    return int(model.output_shape[-1])


def unplaced(model: keras.Model) -> keras.Model:
    """`model` without device placement: every `OnDevice` wrapper with device None, same weights.

    Placement only matters on GPUs; a SavedModel for serving must not name devices its server may lack.
    Returns `model` itself when nothing in it is placed.
    """
    if not any(isinstance(layer, OnDevice) and layer.device for layer in model.layers):
        return model

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, OnDevice):
            config["device"] = None
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


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
