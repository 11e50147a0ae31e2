"""LocalResponseNormalization against the paper's formula and TensorFlow's kernel; grouped
convolutions as separate convolutions; OnDevice wrapper basics."""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import errors
from alexnet_tf.model.layers import (
    LocalResponseNormalization,
    OnDevice,
    SplitGroupsConv2D,
    local_response_normalization,
)


def lrn_reference(a: np.ndarray, n: int, k: float, alpha: float, beta: float) -> np.ndarray:
    """Section 3.3 of the paper, written out loop by loop over channels."""
    channels = a.shape[-1]
    b = np.empty_like(a, dtype=np.float64)
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        s = np.sum(a[..., lo : hi + 1].astype(np.float64) ** 2, axis=-1)
        b[..., i] = a[..., i] / (k + alpha * s) ** beta
    return b


@pytest.mark.parametrize(
    "n, k, alpha, beta",
    [(5, 2.0, 1e-4, 0.75), (5, 1.0, 2e-5, 0.75), (3, 1.5, 0.3, 0.5)],
)
def test_lrn_matches_the_papers_formula(n, k, alpha, beta):
    rng = np.random.default_rng(0)
    # Activations of the size ReLU outputs reach, so that alpha * sum is not negligible.
    a = rng.uniform(0, 60, size=(2, 4, 5, 11)).astype(np.float32)
    layer = LocalResponseNormalization(depth=n, k=k, alpha=alpha, beta=beta)
    got = keras.ops.convert_to_numpy(layer(a))
    np.testing.assert_allclose(got, lrn_reference(a, n, k, alpha, beta), rtol=1e-5)


@pytest.mark.parametrize(
    "n, k, alpha, beta", [(5, 2.0, 1e-4, 0.75), (5, 1.0, 2e-5, 0.75), (3, 1.5, 0.3, 0.5), (7, 1.0, 0.01, 0.6)]
)
def test_fast_lrn_has_tensorflows_outputs_and_gradients(n, k, alpha, beta):
    # The fast path against tf.nn.local_response_normalization, forward and backward, on ReLU-like
    # activations (zeros included) large enough that the normalization matters.
    rng = np.random.default_rng(1)
    x = tf.constant(np.maximum(rng.normal(0, 40, (2, 5, 6, 13)), 0).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(2, 5, 6, 13)).astype(np.float32))
    results = []
    for lrn in (local_response_normalization, _tensorflow_lrn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = lrn(x, n, k, alpha, beta)
        results.append((y.numpy(), tape.gradient(y, x, output_gradients=upstream).numpy()))
    (y_fast, dx_fast), (y_tf, dx_tf) = results
    np.testing.assert_allclose(y_fast, y_tf, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx_fast, dx_tf, rtol=1e-4, atol=1e-5 * np.abs(dx_tf).max())


def test_lrn_trains_on_the_fast_gradient_and_infers_with_tensorflows_op():
    layer = LocalResponseNormalization()
    x = tf.constant(np.maximum(np.random.default_rng(2).normal(0, 40, (2, 5, 6, 13)), 0).astype(np.float32))

    def op_types(training):
        graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(x).graph
        return {op.type for op in graph.get_operations()}

    assert "LRN" in op_types(False) and "LRN" in op_types(None) and "LRN" not in op_types(True)
    np.testing.assert_allclose(layer(x, training=True), layer(x, training=False), rtol=1e-5, atol=1e-6)


def _tensorflow_lrn(x, n, k, alpha, beta):
    return tf.nn.local_response_normalization(x, n // 2, k, alpha, beta)


@pytest.mark.parametrize("groups, strides, padding", [(2, 1, "same"), (4, 2, "valid")])
def test_split_groups_conv_has_grouped_conv2ds_outputs_and_gradients(groups, strides, padding):
    config = dict(filters=8, kernel_size=3, strides=strides, padding=padding, groups=groups,
                  activation="relu")
    grouped, split = keras.layers.Conv2D(**config), SplitGroupsConv2D(**config)
    x = tf.random.stateless_normal((2, 9, 9, 8), seed=(0, 1))
    grouped.build(x.shape)
    split.build(x.shape)
    assert split.kernel.shape == grouped.kernel.shape == (3, 3, 8 // groups, 8)
    split.set_weights(grouped.get_weights())
    results = []
    for layer in (split, grouped):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.cos(y))
        results.append([y, *tape.gradient(loss, [x, layer.kernel, layer.bias])])
    for fast, plain in zip(*results):
        np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-5)


def test_lrn_defaults_are_the_papers_constants():
    layer = LocalResponseNormalization()
    assert (layer.depth, layer.k, layer.alpha, layer.beta) == (5, 2.0, 1e-4, 0.75)


def test_lrn_caffe_convention_is_alpha_over_n():
    # Caffe's bvlc_alexnet: k=1, alpha=1e-4 scaling the *mean* of the 5 squares.
    a = np.full((1, 1, 1, 5), 30.0, np.float32)
    layer = LocalResponseNormalization(depth=5, k=1.0, alpha=1e-4 / 5, beta=0.75)
    mean_square = np.mean(a[0, 0, 0, 0:3] ** 2)  # channel 0 sees channels 0..2, divided by n=5
    caffe = 30.0 / (1 + 1e-4 / 5 * 3 * mean_square) ** 0.75
    assert keras.ops.convert_to_numpy(layer(a))[0, 0, 0, 0] == pytest.approx(caffe, rel=1e-6)


def test_lrn_rejects_even_depth():
    with pytest.raises(errors.ConfigError, match="odd"):
        LocalResponseNormalization(depth=4)


def test_lrn_config_round_trip():
    layer = LocalResponseNormalization(depth=3, k=1.0, alpha=2e-5, beta=0.5, name="n")
    clone = LocalResponseNormalization.from_config(layer.get_config())
    assert (clone.depth, clone.k, clone.alpha, clone.beta, clone.name) == (3, 1.0, 2e-5, 0.5, "n")


def test_on_device_is_transparent_and_serializable():
    inner = keras.layers.Dense(3, name="d")
    wrapped = OnDevice(inner, "/CPU:1")
    assert wrapped.name == "d" and not wrapped.supports_jit
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(wrapped(x), inner(x))
    clone = OnDevice.from_config(wrapped.get_config())
    assert clone.device == "/CPU:1" and clone.layer.units == 3
    assert OnDevice(keras.layers.Dense(3), None).supports_jit


def test_on_device_gradient_equals_the_plain_layer_gradient():
    keras.utils.set_random_seed(0)
    inner = keras.layers.Conv2D(4, 3, activation="relu")
    x = tf.random.normal((2, 7, 7, 3))
    inner(x)
    for device in (None, "/CPU:1"):
        wrapped = OnDevice(inner, device)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = tf.reduce_sum(wrapped(x) ** 2)
        with tf.GradientTape(persistent=True) as plain_tape:
            plain_tape.watch(x)
            plain = tf.reduce_sum(inner(x) ** 2)
        targets = [x, inner.kernel.value, inner.bias.value]
        for got, want in zip(tape.gradient(y, targets), plain_tape.gradient(plain, targets)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
