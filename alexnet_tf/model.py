"""AlexNet as a Keras 3 functional model that describes itself: `AlexNet`, `AlexNetConfig`, `build_alexnet`.

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

The model describes itself, as keras-hub's backbones do: `AlexNet` is a functional model built in
its own `__init__` from the fields of an `AlexNetConfig`, and its `get_config()` is exactly those
fields (and the name), so a saved `.keras` file carries the variant (towers, groups, width, image
size, classes, LRN constants, ...) and loads back as an `AlexNet` (`keras.models.load_model`, safe
mode on: the network holds no lambdas). Everything that needs the variant reads `model_config(model)`,
never the layer names. Device placement (`tower_devices`) is not part of the config: it belongs to
the machine that runs the model, so a checkpoint trained on two GPUs loads on a CPU, unplaced.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Sequence

import keras
import numpy as np

from alexnet_tf import errors
from alexnet_tf.layers import (
    LRN_ALPHA,
    LRN_BETA,
    LRN_DEPTH,
    LRN_K,
    LocalResponseNormalization,
    OnDevice,
    SplitGroupsConv2D,
    unwrap,
)

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
            0), or "he" (He-normal weights, conv1's scaled for 0-255 pixels, zero biases: trains
            from scratch without the loss sticking at ln(num_classes) that the paper's init can
            cause in reproductions).
        conv1_padding: "auto" (module docstring), or pixels of zero padding on each side.
        input_scale: multiplies the input first (a weightless Rescaling layer). 1.0 is the
            paper's raw mean-subtracted 0-255 values; 1/64 brings them to about unit variance,
            which lets narrow networks with He initialization train at the paper's learning rate.
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
            return f"LRN needs lrn_k > 0, lrn_alpha >= 0 and lrn_beta >= 0, got {self.lrn_k}, {self.lrn_alpha}, {self.lrn_beta}"
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


_D = AlexNetConfig()  # The defaults, named once (in AlexNetConfig), for the signatures below.


def _config_fields(arguments: dict[str, Any]) -> dict[str, Any]:
    """The AlexNetConfig fields among a function's `locals()`."""
    return {field.name: arguments[field.name] for field in dataclasses.fields(AlexNetConfig)}


@keras.saving.register_keras_serializable(package="alexnet_tf")
class AlexNet(keras.Model):
    """AlexNet (module docstring): a functional model whose config is its `AlexNetConfig`.

    The arguments are the `AlexNetConfig` fields (see there for units and conventions), and:
        tower_devices: for `towers=2`, the two devices (e.g. ("/GPU:0", "/GPU:1")) that hold
            each tower's variables and run its forward and backward passes. The layers that
            read both towers (each tower concatenates conv3's inputs on its own device) and
            the classifier run on the first device. Such a model is never XLA-compiled (see
            `alexnet_tf.layers.OnDevice`). None: no placement. Not saved (module docstring).
        name: the model's name.

    `get_config()` returns the config's fields and the name; `from_config` builds the same
    network, unplaced. Input float32 [batch, S, S, 3]; output float32 logits [batch, num_classes].
    """

    def __init__(
        self,
        num_classes: int = _D.num_classes,
        towers: int = _D.towers,
        groups: int = _D.groups,
        image_size: int = _D.image_size,
        width: float = _D.width,
        lrn: bool = _D.lrn,
        lrn_depth: int = _D.lrn_depth,
        lrn_k: float = _D.lrn_k,
        lrn_alpha: float = _D.lrn_alpha,
        lrn_beta: float = _D.lrn_beta,
        pooling: str = _D.pooling,
        activation: str = _D.activation,
        dropout: float = _D.dropout,
        init: str = _D.init,
        conv1_padding: str | int = _D.conv1_padding,
        input_scale: float = _D.input_scale,
        seed: int | None = _D.seed,
        tower_devices: Sequence[str] | None = None,
        name: str = "alexnet",
        **kwargs: Any,
    ):
        config = AlexNetConfig(**_config_fields(locals()))
        if tower_devices is not None:
            tower_devices = tuple(tower_devices)
            if towers != 2 or len(tower_devices) != 2:
                raise errors.ConfigError(
                    f"tower_devices takes two devices and needs towers=2, got {tower_devices} with towers={towers}"
                )
        inputs, logits = _network(config, tower_devices)
        super().__init__(inputs, logits, name=name, **kwargs)
        # Set after Keras' __init__, which a Layer needs before any attribute.
        self._alexnet_config = config
        self._tower_devices = tower_devices

    @property
    def config(self) -> AlexNetConfig:
        """The architecture this model was built from."""
        return self._alexnet_config

    @property
    def tower_devices(self) -> tuple[str, str] | None:
        """The two devices the towers run on, or None for an unplaced model."""
        return self._tower_devices

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.config)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AlexNet":
        # Keras' default would rebuild a plain functional model from the layer graph.
        return cls(**config)


def build_alexnet(
    num_classes: int = _D.num_classes,
    towers: int = _D.towers,
    groups: int = _D.groups,
    tower_devices: Sequence[str] | None = None,
    image_size: int = _D.image_size,
    width: float = _D.width,
    *,
    lrn: bool = _D.lrn,
    lrn_depth: int = _D.lrn_depth,
    lrn_k: float = _D.lrn_k,
    lrn_alpha: float = _D.lrn_alpha,
    lrn_beta: float = _D.lrn_beta,
    pooling: str = _D.pooling,
    activation: str = _D.activation,
    dropout: float = _D.dropout,
    init: str = _D.init,
    conv1_padding: str | int = _D.conv1_padding,
    input_scale: float = _D.input_scale,
    seed: int | None = _D.seed,
    name: str = "alexnet",
    config: AlexNetConfig | None = None,
) -> AlexNet:
    """An `AlexNet` of the given architecture (`AlexNetConfig` documents every argument).

    Either the architecture's arguments, or `config=AlexNetConfig(...)` and only
    `tower_devices` and `name` besides: `build_alexnet(config=cfg, tower_devices=devices)`.

    Raises:
        errors.ConfigError: a value that builds no network, or `config` together with
            architecture arguments.
    """
    arguments = _config_fields(locals())
    if config is None:
        config = AlexNetConfig(**arguments)
    else:
        # An argument equal to its default cannot be told from an absent one: only others are refused.
        changed = [field for field, value in arguments.items() if value != getattr(_D, field)]
        if changed:
            raise errors.ConfigError(
                f"build_alexnet: give config or architecture arguments, not both (got config and {', '.join(changed)})"
            )
    return AlexNet(**dataclasses.asdict(config), tower_devices=tower_devices, name=name)


def model_config(model: keras.Model) -> AlexNetConfig:
    """The architecture of `model`.

    Raises:
        errors.ModelFileError: `model` is not an `AlexNet` (e.g. a checkpoint written before
            the model described itself).
    """
    if isinstance(model, AlexNet):
        return model.config
    raise errors.ModelFileError(
        f"model {model.name!r} is not an AlexNet: it was written by an older alexnet_tf (or is another network) "
        "and does not describe its variant; retrain it or export its weights with save_npy_weights and load "
        "them with --pretrained"
    )


def without_placement(model: AlexNet) -> AlexNet:
    """The same network with the same weights and no tower devices; `model` itself if unplaced.

    Placement only matters on GPUs; a SavedModel for serving must not name devices its server may lack.
    """
    model_config(model)  # An AlexNet, or a one-line error.
    if model.tower_devices is None:
        return model
    clone = AlexNet.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone


def tower_layer_names(config: AlexNetConfig, base: str) -> tuple[str, ...]:
    """Names of a layer every stream has (conv*, lrn*, pool*): base + "a" and "b" in a two-tower
    network (tower a first), else base itself."""
    return tuple(base + s for s in TOWER_SUFFIXES) if config.towers == 2 else (base,)


def inner_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """The layer `name` of `model` (e.g. "conv1a" or "fc6"), outside any `OnDevice` wrapper."""
    return unwrap(model.get_layer(name))


def conv_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The convolutional layers of any variant, conv1 to conv5, tower a before b in each.

    These are the inner layers (outside any `OnDevice` wrapper), which hold the kernels: setting
    `.trainable = False` on them freezes their variables in the model.
    """
    config = model_config(model)
    return [inner_layer(model, n) for base in CONV_LAYERS for n in tower_layer_names(config, base)]


def conv1_kernel(model: keras.Model) -> np.ndarray:
    """The conv1 kernel [11, 11, 3, filters] of any variant; towers concatenated, a first."""
    names = tower_layer_names(model_config(model), "conv1")
    kernels = [keras.ops.convert_to_numpy(inner_layer(model, n).kernel) for n in names]
    return np.concatenate(kernels, axis=-1)


def _network(
    config: AlexNetConfig, tower_devices: tuple[str, str] | None
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The functional graph of `config`: (images input, logits)."""
    towers = config.towers
    devices = list(tower_devices) if tower_devices is not None else [None] * towers
    suffixes = TOWER_SUFFIXES if towers == 2 else ("",)
    # Channels of one stream: a tower holds half of each layer; a single stream holds all.
    channels = {k: _scaled(c, config.width) * (2 // towers) for k, c in TOWER_CHANNELS.items()}
    stream_groups = config.groups if towers == 1 else 1
    pool_size, pool_stride = POOLING[config.pooling]
    seeds = itertools.count(config.seed) if config.seed is not None else itertools.repeat(None)
    activation, init, input_scale = config.activation, config.init, config.input_scale

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
        return LocalResponseNormalization(
            config.lrn_depth, config.lrn_k, config.lrn_alpha, config.lrn_beta, name=layer_name
        )

    def pool(layer_name: str) -> keras.layers.Layer:
        return keras.layers.MaxPooling2D(pool_size, pool_stride, name=layer_name)

    def dense(base: str, units: int, **kwargs: Any) -> keras.layers.Layer:
        return keras.layers.Dense(units, name=base, **_initializers(base, init, next(seeds), input_scale), **kwargs)

    inputs = keras.Input((config.image_size, config.image_size, 3), name="images")
    x = inputs
    if input_scale != 1.0:
        x = place(keras.layers.Rescaling(input_scale, name="input_scale"), devices[0])(x)
    padding = config.conv1_padding_pixels
    if padding:
        x = place(keras.layers.ZeroPadding2D(padding, name="conv1_pad"), devices[0])(x)
    xs = [x] * towers
    xs = per_stream(conv("conv1", CONV1_KERNEL, strides=CONV1_STRIDE, padding="valid"), "conv1", xs)
    if config.lrn:
        xs = per_stream(norm, "lrn1", xs)
    xs = per_stream(pool, "pool1", xs)
    xs = per_stream(conv("conv2", 5, groups=stream_groups), "conv2", xs)
    if config.lrn:
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
    fc_units = _scaled(FC_UNITS, config.width)
    for base in FC_LAYERS[:2]:
        x = place(dense(base, fc_units, activation=activation), head)(x)
        if config.dropout:
            x = place(keras.layers.Dropout(config.dropout, name=f"dropout{base[2:]}"), head)(x)
    # Logits in float32 under a mixed policy: the softmax cross-entropy needs the range.
    logits = place(dense(FC_LAYERS[2], config.num_classes, dtype="float32"), head)(x)
    return inputs, logits


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
