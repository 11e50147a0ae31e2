"""The two custom layers AlexNet needs: local response normalization and tower placement.

Both are serializable Keras 3 layers (`get_config`) registered under the package name
"alexnet_tf", so a `.keras` file written by this project loads after `import alexnet_tf`.
They run on the TensorFlow backend only, as the rest of the project does.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

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
            raise ValueError(f"LRN depth must be a positive odd number, got {depth}")
        self.depth = int(depth)
        self.k = float(k)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        # TensorFlow's LRN kernel (and its LRNGrad) has no float16 CPU kernel; under a mixed
        # policy the normalization runs in float32, which also keeps the sum of squares exact.
        x = tf.cast(inputs, tf.float32)
        y = tf.nn.local_response_normalization(
            x, depth_radius=self.depth // 2, bias=self.k, alpha=self.alpha, beta=self.beta
        )
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
