"""AlexNet's architecture as values: the paper's constants and `AlexNetConfig`, which names a variant.

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

The network itself, built from an `AlexNetConfig`, is `alexnet_tf.model.alexnet.AlexNet`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from alexnet_tf import errors
from alexnet_tf.model.layers import LRN_ALPHA, LRN_BETA, LRN_DEPTH, LRN_K

# Section 3.5 / Figure 2: the five convolutional and three fully connected layers.
CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FC_LAYERS = ("fc6", "fc7", "fc8")
# Figure 2 / section 3.5: kernels per tower (half of each layer's total).
TOWER_CHANNELS = dict(zip(CONV_LAYERS, (48, 128, 192, 192, 128)))
FC_UNITS = 4096  # Section 3.5: "The fully-connected layers have 4096 neurons each."
NUM_CLASSES = 1000  # Section 2: ILSVRC's 1000 categories.
IMAGE_SIZE = 224  # Section 4.1: "random 224 x 224 patches".
# Section 5: "We initialized the weights in each layer from a zero-mean Gaussian distribution
# with standard deviation 0.01. We initialized the neuron biases in the second, fourth, and fifth
# convolutional layers, as well as in the fully-connected hidden layers, with the constant 1."
INIT_STDDEV = 0.01
BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")
DROPOUT_RATE = 0.5  # Section 4.2.
# Section 3.4: overlapping pooling, z=3 and s=2; the ablation uses z=s=2.
POOLING = {"overlapping": (3, 2), "non_overlapping": (2, 2)}
ACTIVATIONS = ("relu", "tanh")  # Section 3.1, Figure 1.
INITS = ("paper", "he")
TOWER_SUFFIXES = ("a", "b")
PIXEL_STDDEV = 58.0  # ImageNet's per-channel RGB standard deviation on the 0-255 scale, roughly.
CONV1_KERNEL, CONV1_STRIDE = 11, 4  # Section 3.5: "96 kernels of size 11x11x3 with a stride of 4".


def conv1_padding_pixels(image_size: int) -> int:
    """Zero padding per side that conv1 gets with `conv1_padding="auto"` (module docstring)."""
    return 0 if (image_size - CONV1_KERNEL) % CONV1_STRIDE == 0 else 2


def pool5_size(config: AlexNetConfig) -> int:
    """The side of pool5's output, in pixels (6 for the paper's 224 and Caffe's 227)."""
    side = (config.image_size + 2 * config.conv1_padding_pixels - CONV1_KERNEL) // CONV1_STRIDE + 1
    size, stride = POOLING[config.pooling]
    for _ in range(3):  # pool1, pool2, pool5; every other layer keeps the side ("same" padding).
        side = (side - size) // stride + 1 if side >= size else 0
    return side


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class AlexNetConfig:
    """The architecture of an AlexNet: every argument that builds one, with the paper's defaults.

    Units and conventions:
        num_classes: units of fc8.
        towers: 2 for the paper's two-tower network (Figure 2), 1 for a single stream.
        groups: for `towers=1`, 2 for grouped conv2/conv4/conv5 (Caffe) or 1 for dense. A
            two-tower network is grouped by construction and takes only `groups=2`.
        image_size: S, the side of the square input, in pixels.
        width: scales every channel and unit count (fc8 excepted), for narrow networks of the
            same topology; 1.0 is the paper's network.
        lrn: local response normalization after conv1 and conv2 (section 3.3 ablation).
        lrn_depth: n, the LRN window in channels (odd). lrn_k, lrn_beta: as in section 3.3.
        lrn_alpha: in the paper's and TensorFlow's convention, multiplying the plain sum of squares
            over the window. Caffe's and PyTorch's alpha multiplies the mean, so it is this alpha
            times lrn_depth (bvlc_alexnet's alpha=1e-4 with n=5 is lrn_alpha=2e-5 here).
        pooling: "overlapping" (3x3, stride 2) or "non_overlapping" (2x2, stride 2), section 3.4.
        activation: "relu" or "tanh" (section 3.1, Figure 1).
        dropout: rate on fc6 and fc7 (0 disables), Keras' inverted dropout (module docstring).
        init: "paper" (N(0, 0.01) weights, biases 1 in conv2, conv4, conv5, fc6 and fc7, else
            0), or "he" (He-normal weights, conv1's scaled for 0-255 pixels, fc8's the paper's
            N(0, 0.01), zero biases: trains from scratch without the loss sticking at
            ln(num_classes) that the paper's init can cause in reproductions).
        conv1_padding: "auto" (module docstring), or pixels of zero padding on each side.
        input_scale: multiplies the input first (a weightless Rescaling layer). 1.0 is the
            paper's raw mean-subtracted 0-255 values; 1/64 brings them to about unit variance,
            which lets narrow networks with He initialization train at the paper's learning rate.
        conv1_init_gain: multiplies the standard deviation of conv1's initial kernel (under either
            init); 1.0 is the init's own. Below 1, conv1 starts closer to zero, so that less of
            its random start is left in the learned filters (flags/demo.cfg says why it needs 0.25).
        seed: seeds the initializers (layer i gets seed + i); None uses Keras' global seed.

    Raises:
        errors.ConfigError: a value, or a combination of values, that builds no network.
    """

    num_classes: int = NUM_CLASSES
    towers: int = 2
    groups: int = 2
    image_size: int = IMAGE_SIZE
    width: float = 1.0
    lrn: bool = True
    lrn_depth: int = LRN_DEPTH
    lrn_k: float = LRN_K
    lrn_alpha: float = LRN_ALPHA
    lrn_beta: float = LRN_BETA
    pooling: str = "overlapping"
    activation: str = "relu"
    dropout: float = DROPOUT_RATE
    init: str = "paper"
    conv1_padding: str | int = "auto"
    input_scale: float = 1.0
    conv1_init_gain: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise errors.ConfigError(f"AlexNetConfig: {problem}")

    def _problem(self) -> str | None:
        """What makes this config build no network, in a few words, or None."""
        if not _is_int(self.num_classes) or self.num_classes < 1:
            return f"num_classes must be a positive integer, got {self.num_classes!r}"
        if self.towers not in (1, 2):
            return f"towers must be 1 or 2, got {self.towers!r}"
        if self.groups not in (1, 2):
            return f"groups must be 1 or 2, got {self.groups!r}"
        if self.towers == 2 and self.groups != 2:
            return "a two-tower network is grouped by construction: use groups=2"
        if not self.width > 0:
            return f"width must be positive, got {self.width!r}"
        if not _is_int(self.lrn_depth) or self.lrn_depth < 1 or self.lrn_depth % 2 == 0:
            return f"lrn_depth must be a positive odd number, got {self.lrn_depth!r}"
        if not (self.lrn_k > 0 and self.lrn_alpha >= 0 and self.lrn_beta >= 0):
            return (f"LRN needs lrn_k > 0, lrn_alpha >= 0 and lrn_beta >= 0, got {self.lrn_k}, {self.lrn_alpha}, "
                    f"{self.lrn_beta}")
        if self.pooling not in POOLING:
            return f"pooling must be one of {sorted(POOLING)}, got {self.pooling!r}"
        if self.activation not in ACTIVATIONS:
            return f"activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}"
        if not 0 <= self.dropout < 1:
            return f"dropout must be in [0, 1), got {self.dropout!r}"
        if self.init not in INITS:
            return f"init must be one of {list(INITS)}, got {self.init!r}"
        if self.conv1_padding != "auto" and not (_is_int(self.conv1_padding) and self.conv1_padding >= 0):
            return f"conv1_padding must be 'auto' or a number of pixels >= 0, got {self.conv1_padding!r}"
        if not self.input_scale > 0:
            return f"input_scale must be positive, got {self.input_scale!r}"
        if not self.conv1_init_gain > 0:
            return f"conv1_init_gain must be positive, got {self.conv1_init_gain!r}"
        if self.seed is not None and not _is_int(self.seed):
            return f"seed must be an integer or None, got {self.seed!r}"
        if not _is_int(self.image_size) or pool5_size(self) < 1:
            return f"image_size={self.image_size!r} leaves no pixel after pool5"
        return None

    @property
    def conv1_padding_pixels(self) -> int:
        """Zero padding per side of conv1's input, in pixels."""
        if self.conv1_padding == "auto":
            return conv1_padding_pixels(self.image_size)
        return int(self.conv1_padding)


def scaled_count(count: int, width: float) -> int:
    """A channel or unit count of the paper's network scaled by `width` (`AlexNetConfig.width`), at least 1."""
    return max(1, int(round(count * width)))


def tower_layer_names(config: AlexNetConfig, base: str) -> tuple[str, ...]:
    """Names of a layer every stream has (conv*, lrn*, pool*): base + "a" and "b" in a two-tower
    network (tower a first), else base itself."""
    return tuple(base + s for s in TOWER_SUFFIXES) if config.towers == 2 else (base,)
