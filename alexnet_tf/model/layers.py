"""The custom layers AlexNet needs: local response normalization, tower placement, and grouped
convolutions as separate convolutions.

All are serializable Keras 3 layers (`get_config`) registered under the package name
"alexnet_tf", so a `.keras` file written by this project loads after `import alexnet_tf`.
They run on the TensorFlow backend only, as the rest of the project does.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import errors

# Section 3.3 of the paper: "k = 2, n = 5, alpha = 10^-4, and beta = 0.75".
LRN_DEPTH = 5
LRN_K = 2.0
LRN_ALPHA = 1e-4
LRN_BETA = 0.75


@keras.saving.register_keras_serializable(package="alexnet_tf")
class LocalResponseNormalization(keras.layers.Layer):
    """Local response normalization across channels (paper, section 3.3).

    For the activity a[x, y, i] of channel i at position (x, y), with N channels:

        b[x, y, i] = a[x, y, i] / (k + alpha * S[x, y, i]) ** beta,
        S[x, y, i] = sum over j from max(0, i - n // 2) to min(N - 1, i + n // 2) of a[x, y, j]**2

    Conventions for alpha differ between frameworks, and this layer uses the paper's:
    - The paper and TensorFlow (`tf.nn.local_response_normalization`): alpha multiplies the
      plain sum S. The paper's alpha = 1e-4 is `alpha=1e-4` here.
    - Caffe (`LRN` layer) and PyTorch (`nn.LocalResponseNorm`): alpha multiplies the mean S / n,
      so their alpha=1e-4 with n=5 is `alpha=2e-5` here. Caffe's bvlc_alexnet also uses k=1,
      so its layers are `LocalResponseNormalization(depth=5, k=1.0, alpha=2e-5, beta=0.75)`.
      (PyTorch divides by n even where the window is cut at the first and last channels; Caffe
      and TensorFlow divide by n everywhere, which is what a fixed alpha/n expresses.)

    The window is cut at the first and last channels, never wrapped. Input is NHWC.

    Trained through `local_response_normalization` (below), which gives the same values as
    `tf.nn.local_response_normalization` and runs forward and backward about twice as fast on the
    CPU; inference (`training` false or unset) runs TensorFlow's op, faster forward.

    Args:
        depth: n, the number of adjacent channels in the window (odd).
        k: the additive constant.
        alpha: the scale of the sum of squares (paper/TensorFlow convention, see above).
        beta: the exponent.
    """

    def __init__(
        self,
        depth: int = LRN_DEPTH,
        k: float = LRN_K,
        alpha: float = LRN_ALPHA,
        beta: float = LRN_BETA,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if depth < 1 or depth % 2 == 0:
            raise errors.ConfigError(f"LRN depth must be a positive odd number, got {depth}")
        self.depth = int(depth)
        self.k = float(k)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        # Under a mixed policy the normalization runs in float32, which keeps the sum of squares
        # exact (and matches TensorFlow's LRN, which has no float16 CPU kernel).
        x = tf.cast(inputs, tf.float32)
        if training:
            y = local_response_normalization(x, self.depth, self.k, self.alpha, self.beta)
        else:
            # Inference (evaluation, serving): TensorFlow's kernel is faster forward (1.2-1.5x on
            # conv1's and conv2's outputs, docs/benchmarks.md); its slow gradient is the training
            # path's reason to exist. A gradient through this branch is still exact.
            y = tf.nn.local_response_normalization(x, self.depth // 2, self.k, self.alpha, self.beta)
        return tf.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "depth": self.depth,
            "k": self.k,
            "alpha": self.alpha,
            "beta": self.beta,
        }


def local_response_normalization(
    x: tf.Tensor, depth: int, k: float, alpha: float, beta: float
) -> tf.Tensor:
    """`tf.nn.local_response_normalization(x, depth // 2, k, alpha, beta)` with a faster gradient.

    The sum of squares over each window is one matmul of the squares with the [C, C] band matrix
    of the window, and so is the gradient's sum over windows:

        norm = k + alpha * (x**2 @ band),   y = x * norm**-beta,
        dL/dx = g * norm**-beta - 2 * alpha * beta * x * ((g * y / norm) @ band).

    TensorFlow's CPU LRNGrad kernel loops over each element's window and, with the float power,
    makes LRN forward and backward about 2x slower on the CPU than this
    (docs/benchmarks.md). Values agree with TensorFlow's to float32 rounding.
    """
    channels = x.shape[-1]
    offsets = np.arange(channels)
    band = tf.constant(np.abs(offsets[:, None] - offsets[None, :]) <= depth // 2, tf.float32)

    @tf.custom_gradient
    def normalize(x):
        norm = k + alpha * tf.tensordot(tf.square(x), band, 1)
        scale = _inverse_power(norm, beta)
        y = x * scale
        # Named as TensorFlow names registered gradients, so graphs and profiles show the
        # backward ops under their layer.
        gradient_scope = f"gradient_tape/{tf.get_current_name_scope()}/"

        def gradient(dy):
            with tf.name_scope(gradient_scope):
                # The band is symmetric: the windows that read channel j are the ones j's reads.
                return dy * scale - (2.0 * alpha * beta) * x * tf.tensordot(dy * y / norm, band, 1)

        return y, gradient

    return normalize(x)


def _inverse_power(x: tf.Tensor, beta: float) -> tf.Tensor:
    """x ** -beta; for the paper's beta = 0.75 as rsqrt(x) * rsqrt(sqrt(x)), several times
    faster on the CPU than the exp-log that a float power takes."""
    if beta == 0.75:
        return tf.math.rsqrt(x) * tf.math.rsqrt(tf.sqrt(x))
    if beta == 0.5:
        return tf.math.rsqrt(x)
    return tf.pow(x, -beta)


@keras.saving.register_keras_serializable(package="alexnet_tf")
class SplitGroupsConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose groups run as separate convolutions, concatenated.

    The same layer as `Conv2D(groups=g)`: same kernel [h, w, in / g, out] and bias, same function
    (group i reads input channels [i * in / g, (i + 1) * in / g) and writes the i-th slice of
    the outputs). Keras' TensorFlow backend runs a grouped convolution through XLA on the CPU,
    where TensorFlow has no grouped kernel, and XLA's CPU convolutions and their gradients are
    several times slower than oneDNN's plain ones (docs/benchmarks.md). Channels-last only.
    """

    def convolution_op(self, inputs, kernel):
        if self.groups == 1:
            return super().convolution_op(inputs, kernel)
        convolve = super().convolution_op
        pairs = zip(
            keras.ops.split(inputs, self.groups, axis=-1),
            keras.ops.split(kernel, self.groups, axis=-1),
        )
        return keras.ops.concatenate([convolve(x, k) for x, k in pairs], axis=-1)


@keras.saving.register_keras_serializable(package="alexnet_tf")
class OnDevice(keras.layers.Wrapper):
    """Runs a layer's variables, forward pass and backward pass on one device.

    The paper's two-tower model puts each tower on its own GPU (section 3.2). `tf.device`
    around a layer's call places its forward ops, but not its gradient: `tf.GradientTape`
    creates the backward ops when `tape.gradient` runs, outside any tower's device scope, and
    leaves them to TensorFlow's placer, which can put the backward pass of both towers on one
    device. So the wrapped call is a `tf.custom_gradient` whose gradient function computes the
    layer's vector-Jacobian product inside the same `tf.device` scope.

    XLA ignores `tf.device` scopes inside a compiled function (tensorflow issue 124880), so a
    placed layer sets `supports_jit = False`: Keras then never XLA-compiles a model holding it,
    neither with `jit_compile="auto"` on a GPU machine nor when asked (it warns and refuses).

    With `device=None` the wrapper is transparent (no scope, no custom gradient, XLA allowed):
    a two-tower model has the same layers and weight layout whether or not it is placed, so
    checkpoints move freely between a placed and an unplaced model.

    Args:
        layer: the wrapped layer; its inputs may be one tensor or a list of tensors.
        device: a device string such as "/GPU:0", or None.
    """

    def __init__(self, layer: keras.layers.Layer, device: str | None = None, **kwargs: Any):
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.device = device
        self.supports_jit = device is None

    def build(self, input_shape=None):
        if self.device is None:
            super().build(input_shape)
        else:
            with tf.device(self.device):
                super().build(input_shape)

    def call(self, inputs, training=None):
        # As Keras' own wrappers (TimeDistributed) do, pass `training` to layers that take it.
        kwargs = {"training": training} if self.layer._call_has_training_arg else {}
        if self.device is None:
            return self.layer(inputs, **kwargs)
        with tf.device(self.device):
            return self._call_with_placed_gradient(inputs, kwargs)

    def _call_with_placed_gradient(self, inputs, kwargs):
        device = self.device

        @tf.custom_gradient
        def placed(*args):
            with tf.GradientTape() as tape:
                tape.watch(args)
                outputs = self.layer(list(args) if len(args) > 1 else args[0], **kwargs)

            def gradient(d_outputs, variables=None):
                variables = list(variables or [])
                with tf.device(device):
                    d_args, d_vars = tape.gradient(
                        outputs, (list(args), variables), output_gradients=d_outputs
                    )
                # tf.custom_gradient expects the variables' gradients only when there are any.
                return (d_args, d_vars) if variables else d_args

            return outputs, gradient

        args = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        return placed(*args)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def compute_output_spec(self, inputs, training=None):
        return self.layer.compute_output_spec(inputs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "device": self.device}


def unwrap(layer: keras.layers.Layer) -> keras.layers.Layer:
    """The layer inside an `OnDevice` wrapper, or the layer itself."""
    return layer.layer if isinstance(layer, OnDevice) else layer
