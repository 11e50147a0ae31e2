"""PaperSGD follows the update rule of section 5 of the paper exactly."""

import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf.training.optimizer import PaperSGD


def test_updates_follow_the_papers_rule():
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(3, 2)), rng.normal(size=(2,))
    kernel, bias = keras.Variable(w0, dtype="float32"), keras.Variable(b0, dtype="float32")
    optimizer = PaperSGD(learning_rate=0.01, momentum=0.9, weight_decay_l2=5e-4)
    w, b = w0.copy(), b0.copy()
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for _ in range(3):
        gw, gb = rng.normal(size=w.shape), rng.normal(size=b.shape)
        optimizer.apply_gradients([(gw.astype("float32"), kernel), (gb.astype("float32"), bias)])
        # v <- 0.9 v - 0.0005 eps w - eps g ; w <- w + v  (biases: no decay)
        vw = 0.9 * vw - 5e-4 * 0.01 * w - 0.01 * gw
        vb = 0.9 * vb - 0.01 * gb
        w, b = w + vw, b + vb
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), w, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bias), b, rtol=1e-5)


@pytest.mark.parametrize("nesterov", [False, True])
def test_traced_update_equals_keras_sgd_on_the_decayed_gradient(nesterov):
    # The fused XLA update (and, with Nesterov momentum, Keras' own) against Keras' SGD applied to
    # gradient + 0.0005 * kernel, inside a traced function as in fit.
    rng = np.random.default_rng(1)
    w0 = rng.normal(size=(4, 3)).astype("float32")
    grads = [rng.normal(size=(4, 3)).astype("float32") for _ in range(3)]
    ours, theirs = keras.Variable(w0), keras.Variable(w0)
    paper = PaperSGD(learning_rate=0.1, momentum=0.9, nesterov=nesterov)
    plain = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=nesterov)
    step = tf.function(lambda g: paper.apply([g], [ours]))
    for g in grads:
        step(tf.constant(g))
        plain.apply([g + 5e-4 * keras.ops.convert_to_numpy(theirs)], [theirs])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs),
                               rtol=1e-6)


def test_defaults_and_config():
    optimizer = PaperSGD()
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    assert optimizer.momentum == 0.9 and optimizer.weight_decay_l2 == 5e-4
    assert optimizer.weight_decay is None  # not Keras' decoupled decay
    clone = PaperSGD.from_config(optimizer.get_config())
    assert clone.weight_decay_l2 == 5e-4


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
