"""AlexNet as a Keras 3 functional model: `build_alexnet`.

The network of Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional
Neural Networks" (NeurIPS 2012), section 3 and Figure 2, in three variants:

- `towers=2` (the paper's Figure 2): two streams ("towers", one per GPU in the paper) that
  exchange activations only where conv3 and the fully connected layers read both. Layer names
  carry the tower: conv1a/conv1b, ..., then fc6, fc7, fc8.
- `towers=1, groups=2`: one stream whose conv2, conv4 and conv5 are grouped convolutions, as
  Caffe's bvlc_alexnet. The same function as `towers=2` with the same 60,965,224 parameters;
  only LRN differs (across all channels instead of within each tower).
- `towers=1, groups=1`: the dense single stream (62,378,344 parameters), where every layer reads
  every channel of the layer below.

Input: float32 images [batch, S, S, 3], already preprocessed (mean-subtracted, 0-255 scale).
Output: logits [batch, num_classes] (no softmax: losses take `from_logits=True`), in float32 under
any dtype policy.

Spatial sizes for S=224 and S=227 are 55 -> 27 -> 13 -> 6 (conv1, pool1, pool2, pool5). The
paper's 224 does not fit an 11x11 stride-4 convolution to 55 outputs; 227 does (Caffe). With
`conv1_padding="auto"`, conv1 is VALID when (S - 11) is a multiple of 4 (227: every pixel is
read), and otherwise pads 2 pixels on each side (224: (224 + 4 - 11) // 4 + 1 = 55, the last
padded row and column are never read; torchvision's choice).

Dropout is Keras' inverted dropout: training scales the kept activations by 1 / (1 - rate) and
inference is the identity. The paper instead multiplied the outputs by 0.5 at test time (section
4.2). Both make the test-time output equal to the expected training-time output, so the two
differ only by a constant factor that the next layer's weights absorb; Caffe's dropout (and so
the published bvlc_alexnet weights) is inverted as well.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import keras
import numpy as np

from alexnet_tf.layers import LocalResponseNormalization, OnDevice, SplitGroupsConv2D, unwrap

# Figure 2 / section 3.5: kernels per tower (half of each layer's total).
TOWER_CHANNELS = {"conv1": 48, "conv2": 128, "conv3": 192, "conv4": 192, "conv5": 128}
FC_UNITS = 4096  # Section 3.5: "The fully-connected layers have 4096 neurons each."
# Section 5: "We initialized the weights in each layer from a zero-mean Gaussian distribution
# with standard deviation 0.01. We initialized the neuron biases in the second, fourth, and fifth
# convolutional layers, as well as in the fully-connected hidden layers, with the constant 1."
INIT_STDDEV = 0.01
BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")
DROPOUT_RATE = 0.5  # Section 4.2.
# Section 3.4: overlapping pooling, z=3 and s=2; the ablation uses z=s=2.
POOLING = {"overlapping": (3, 2), "non_overlapping": (2, 2)}
TOWER_SUFFIXES = ("a", "b")
PIXEL_STDDEV = 58.0  # ImageNet's per-channel RGB standard deviation on the 0-255 scale, roughly.


def build_alexnet(
    num_classes: int = 1000,
    towers: int = 2,
    groups: int = 2,
    tower_devices: Sequence[str] | None = None,
    image_size: int = 224,
    width: float = 1.0,
    *,
    lrn: bool = True,
    lrn_depth: int = 5,
    lrn_k: float = 2.0,
    lrn_alpha: float = 1e-4,
    lrn_beta: float = 0.75,
    pooling: str = "overlapping",
    activation: str = "relu",
    dropout: float = DROPOUT_RATE,
    init: str = "paper",
    conv1_padding: str | int = "auto",
    input_scale: float = 1.0,
    seed: int | None = None,
    name: str = "alexnet",
) -> keras.Model:
    """Builds AlexNet (see the module docstring for the variants and conventions).

    Args:
        num_classes: units of fc8.
        towers: 2 for the paper's two-tower network, 1 for a single stream.
        groups: for `towers=1`, 2 for grouped conv2/conv4/conv5 (Caffe) or 1 for dense. A
            two-tower network is grouped by construction and takes only `groups=2`.
        tower_devices: for `towers=2`, the two devices (e.g. ("/GPU:0", "/GPU:1")) that hold
            each tower's variables and run its forward and backward passes. The layers that
            read both towers (each tower concatenates conv3's inputs on its own device) and
            the classifier run on the first device. Such a model is never XLA-compiled (see
            `alexnet_tf.layers.OnDevice`). None: no placement.
        image_size: S, the side of the square input.
        width: scales every channel and unit count (fc8 excepted), for narrow networks of the
            same topology; 1.0 is the paper's network.
        lrn: local response normalization after conv1 and conv2 (section 3.3 ablation).
        lrn_depth, lrn_k, lrn_alpha, lrn_beta: LRN constants, alpha in the paper's convention
            (see `LocalResponseNormalization`).
        pooling: "overlapping" (3x3, stride 2) or "non_overlapping" (2x2, stride 2), section 3.4.
        activation: "relu" or "tanh" (section 3.1, Figure 1).
        dropout: rate on fc6 and fc7 (0 disables).
        init: "paper" (N(0, 0.01) weights, biases 1 in conv2, conv4, conv5, fc6 and fc7, else
            0), or "he" (He-normal weights, conv1's scaled for 0-255 pixels, zero biases: trains
            from scratch without the loss sticking at ln(num_classes) that the paper's init can
            cause in reproductions).
        conv1_padding: "auto" (see the module docstring), or pixels of zero padding per side.
        input_scale: multiplies the input first (a weightless Rescaling layer). 1.0 is the
            paper's raw mean-subtracted 0-255 values; 1/64 brings them to about unit variance,
            which lets narrow networks with He initialization train at the paper's learning rate.
        seed: seeds the initializers (layer i gets seed + i); None uses Keras' global seed.
        name: the model's name.
    """
    if towers not in (1, 2):
        raise ValueError(f"towers must be 1 or 2, got {towers}")
    if groups not in (1, 2):
        raise ValueError(f"groups must be 1 or 2, got {groups}")
    if towers == 2 and groups != 2:
        raise ValueError("a two-tower network is grouped by construction: use groups=2")
    if tower_devices is not None and (towers != 2 or len(tower_devices) != 2):
        raise ValueError("tower_devices takes two devices and needs towers=2")
    if pooling not in POOLING:
        raise ValueError(f"pooling must be one of {sorted(POOLING)}, got {pooling!r}")
    if activation not in ("relu", "tanh"):
        raise ValueError(f"activation must be 'relu' or 'tanh', got {activation!r}")
    if init not in ("paper", "he"):
        raise ValueError(f"init must be 'paper' or 'he', got {init!r}")
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    padding = conv1_padding_pixels(image_size) if conv1_padding == "auto" else int(conv1_padding)

    devices = list(tower_devices) if tower_devices is not None else [None] * towers
    suffixes = TOWER_SUFFIXES if towers == 2 else ("",)
    # Channels of one stream: a tower holds half of each layer; a single stream holds all.
    channels = {k: _scaled(c, width) * (2 // towers) for k, c in TOWER_CHANNELS.items()}
    stream_groups = groups if towers == 1 else 1
    pool_size, pool_stride = POOLING[pooling]
    seeds = itertools.count(seed) if seed is not None else itertools.repeat(None)

    def place(layer: keras.layers.Layer, device: str | None) -> keras.layers.Layer:
        # Every layer of a two-tower model is wrapped, placed or not, so that placed and
        # unplaced two-tower models share one weight layout.
        return OnDevice(layer, device) if towers == 2 else layer

    def per_stream(make: Callable[[str], keras.layers.Layer], base: str, xs: list) -> list:
        return [
            place(make(base + suffix), device)(x) for suffix, device, x in zip(suffixes, devices, xs)
        ]

    def conv(base: str, kernel: int, strides: int = 1, padding: str = "same", groups: int = 1):
        # Grouped: see SplitGroupsConv2D, the same layer without XLA's slow CPU convolutions.
        layer_class = SplitGroupsConv2D if groups > 1 else keras.layers.Conv2D

        def make(layer_name: str) -> keras.layers.Layer:
            return layer_class(
                channels[base],
                kernel,
                strides=strides,
                padding=padding,
                groups=groups,
                activation=activation,
                name=layer_name,
                **_initializers(base, init, next(seeds), input_scale),
            )

        return make

    def norm(layer_name: str) -> keras.layers.Layer:
        return LocalResponseNormalization(lrn_depth, lrn_k, lrn_alpha, lrn_beta, name=layer_name)

    def pool(layer_name: str) -> keras.layers.Layer:
        return keras.layers.MaxPooling2D(pool_size, pool_stride, name=layer_name)

    def dense(base: str, units: int, **kwargs: Any) -> keras.layers.Layer:
        return keras.layers.Dense(units, name=base, **_initializers(base, init, next(seeds), input_scale), **kwargs)

    inputs = keras.Input((image_size, image_size, 3), name="images")
    x = inputs
    if input_scale != 1.0:
        x = place(keras.layers.Rescaling(input_scale, name="input_scale"), devices[0])(x)
    if padding:
        x = place(keras.layers.ZeroPadding2D(padding, name="conv1_pad"), devices[0])(x)
    xs = [x] * towers
    xs = per_stream(conv("conv1", 11, strides=4, padding="valid"), "conv1", xs)
    if lrn:
        xs = per_stream(norm, "lrn1", xs)
    xs = per_stream(pool, "pool1", xs)
    xs = per_stream(conv("conv2", 5, groups=stream_groups), "conv2", xs)
    if lrn:
        xs = per_stream(norm, "lrn2", xs)
    xs = per_stream(pool, "pool2", xs)
    if towers == 2:
        # Conv3 is where the towers talk (Figure 2): each tower reads both, [a, b] in that order.
        xs = per_stream(lambda n: keras.layers.Concatenate(name=n), "concat3", [xs, xs])
    xs = per_stream(conv("conv3", 3), "conv3", xs)
    xs = per_stream(conv("conv4", 3, groups=stream_groups), "conv4", xs)
    xs = per_stream(conv("conv5", 3, groups=stream_groups), "conv5", xs)
    xs = per_stream(pool, "pool5", xs)

    head = devices[0]
    x = place(keras.layers.Concatenate(name="pool5_concat"), head)(xs) if towers == 2 else xs[0]
    x = place(keras.layers.Flatten(name="flatten"), head)(x)
    fc_units = _scaled(FC_UNITS, width)
    for base in ("fc6", "fc7"):
        x = place(dense(base, fc_units, activation=activation), head)(x)
        if dropout:
            x = place(keras.layers.Dropout(dropout, name=f"dropout{base[2:]}"), head)(x)
    # Logits in float32 under a mixed policy: the softmax cross-entropy needs the range.
    logits = place(dense("fc8", num_classes, dtype="float32"), head)(x)
    return keras.Model(inputs, logits, name=name)


def conv1_padding_pixels(image_size: int) -> int:
    """Zero padding per side that conv1 gets with `conv1_padding="auto"` (module docstring)."""
    return 0 if (image_size - 11) % 4 == 0 else 2


def inner_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """The layer `name` of `model` (e.g. "conv1a" or "fc6"), outside any `OnDevice` wrapper."""
    return unwrap(model.get_layer(name))


def conv1_kernel(model: keras.Model) -> np.ndarray:
    """The conv1 kernel [11, 11, 3, filters] of any variant; towers concatenated, a first."""
    names = [layer.name for layer in model.layers]
    if "conv1" in names:
        return keras.ops.convert_to_numpy(inner_layer(model, "conv1").kernel)
    kernels = [inner_layer(model, f"conv1{s}").kernel for s in TOWER_SUFFIXES]
    return np.concatenate([keras.ops.convert_to_numpy(k) for k in kernels], axis=-1)


def _scaled(count: int, width: float) -> int:
    return max(1, int(round(count * width)))


def _initializers(base: str, init: str, seed: int | None, input_scale: float) -> dict[str, Any]:
    if init == "he":
        # He-normal assumes unit-variance inputs; conv1 reads pixels on the 0-255 scale times
        # input_scale, so its variance is divided by theirs (ImageNet's RGB stddev is about 58).
        scale = 2.0 / (PIXEL_STDDEV * input_scale) ** 2 if base == "conv1" else 2.0
        kernel = keras.initializers.VarianceScaling(scale, "fan_in", "truncated_normal", seed)
        return {"kernel_initializer": kernel, "bias_initializer": "zeros"}
    bias = 1.0 if base in BIAS_ONE_LAYERS else 0.0
    return {
        "kernel_initializer": keras.initializers.RandomNormal(0.0, INIT_STDDEV, seed),
        "bias_initializer": keras.initializers.Constant(bias),
    }
