"""AlexNet as a Keras 3 functional model that describes itself: `AlexNet`, `build_alexnet`, `architecture_of`.

The architecture, its variants and their conventions (units, padding, dropout) are documented in
`alexnet_tf.model.architecture`, with the `AlexNetConfig` that names one and the named presets.

The model describes itself, as keras-hub's backbones do: `AlexNet` is a functional model built in
its own `__init__` from the fields of an `AlexNetConfig`, and its `get_config()` is exactly those
fields (and the name), so a saved `.keras` file carries the variant (towers, groups, width, image
size, classes, LRN constants, ...) and loads back as an `AlexNet` (`keras.models.load_model`, safe
mode on: the network holds no lambdas). Everything that needs the variant reads `architecture_of(model)`,
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
from alexnet_tf.model.architecture import (
    CONV1_KERNEL,
    CONV1_STRIDE,
    CONV_LAYERS,
    FC_LAYERS,
    FC_UNITS,
    BIAS_ONE_LAYERS,
    INIT_STDDEV,
    PIXEL_STDDEV,
    POOLING,
    TOWER_CHANNELS,
    TOWER_SUFFIXES,
    AlexNetConfig,
    scaled_count,
    tower_layer_names,
)
from alexnet_tf.model.layers import LocalResponseNormalization, OnDevice, SplitGroupsConv2D, unwrap


@keras.saving.register_keras_serializable(package="alexnet_tf")
class AlexNet(keras.Model):
    """AlexNet (`alexnet_tf.model.architecture`): a functional model whose config is its `AlexNetConfig`.

    Args:
        config: the architecture; None builds it from `architecture`.
        tower_devices: for `towers=2`, the two devices (e.g. ("/GPU:0", "/GPU:1")) that hold
            each tower's variables and run its forward and backward passes. The layers that
            read both towers (each tower concatenates conv3's inputs on its own device) and
            the classifier run on the first device. Such a model is never XLA-compiled (see
            `alexnet_tf.model.layers.OnDevice`). None: no placement. Not saved (module docstring).
        name: the model's name.
        **architecture: `AlexNetConfig` fields (see there for units and conventions), without `config`.

    `get_config()` returns the config's fields and the name; `from_config` builds the same
    network, unplaced. Input float32 [batch, S, S, 3]; output float32 logits [batch, num_classes].

    Raises:
        errors.ConfigError: a value that builds no network, an unknown field, `config`
            together with fields, or tower devices for a single stream.
    """

    def __init__(
        self,
        config: AlexNetConfig | None = None,
        *,
        tower_devices: Sequence[str] | None = None,
        name: str = "alexnet",
        **architecture: Any,
    ):
        config = _config(config, architecture)
        if tower_devices is not None:
            tower_devices = tuple(tower_devices)
            if config.towers != 2 or len(tower_devices) != 2:
                raise errors.ConfigError(
                    f"tower_devices takes two devices and needs towers=2, got {tower_devices} with "
                    f"towers={config.towers}"
                )
        inputs, logits = _network(config, tower_devices)
        super().__init__(inputs, logits, name=name)
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
    config: AlexNetConfig | None = None,
    *,
    tower_devices: Sequence[str] | None = None,
    name: str = "alexnet",
    **architecture: Any,
) -> AlexNet:
    """An `AlexNet`: `build_alexnet(towers=1, groups=2)` or `build_alexnet(cfg, tower_devices=...)`.

    Arguments as `AlexNet`'s; `AlexNetConfig` documents every architecture field.
    """
    return AlexNet(config, tower_devices=tower_devices, name=name, **architecture)


def _config(config: AlexNetConfig | None, architecture: dict[str, Any]) -> AlexNetConfig:
    """`config`, or the AlexNetConfig of the `architecture` fields; a ConfigError for both or a wrong field."""
    fields = {field.name for field in dataclasses.fields(AlexNetConfig)}
    unknown = sorted(set(architecture) - fields)
    if unknown:
        raise errors.ConfigError(f"AlexNet: unknown architecture argument {', '.join(unknown)} "
                                 f"(AlexNetConfig has {', '.join(sorted(fields))})")
    if config is None:
        return AlexNetConfig(**architecture)
    if architecture:
        raise errors.ConfigError("AlexNet: give config or architecture arguments, not both "
                                 f"(got config and {', '.join(sorted(architecture))})")
    return config


def architecture_of(model: keras.Model) -> AlexNetConfig:
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
    architecture_of(model)  # An AlexNet, or a one-line error.
    if model.tower_devices is None:
        return model
    clone = AlexNet.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone


def inner_layer(model: keras.Model, name: str) -> keras.layers.Layer:
    """The layer `name` of `model` (e.g. "conv1a" or "fc6"), outside any `OnDevice` wrapper."""
    return unwrap(model.get_layer(name))


def conv_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The convolutional layers of any variant, conv1 to conv5, tower a before b in each.

    These are the inner layers (outside any `OnDevice` wrapper), which hold the kernels: setting
    `.trainable = False` on them freezes their variables in the model.
    """
    config = architecture_of(model)
    return [inner_layer(model, n) for base in CONV_LAYERS for n in tower_layer_names(config, base)]


def conv1_kernel(model: keras.Model) -> np.ndarray:
    """The conv1 kernel [11, 11, 3, filters] of any variant; towers concatenated, a first."""
    names = tower_layer_names(architecture_of(model), "conv1")
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
    channels = {k: scaled_count(c, config.width) * (2 // towers) for k, c in TOWER_CHANNELS.items()}
    stream_groups = config.groups if towers == 1 else 1
    pool_size, pool_stride = POOLING[config.pooling]
    seeds = itertools.count(config.seed) if config.seed is not None else itertools.repeat(None)
    activation, input_scale = config.activation, config.input_scale

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
                **_initializers(base, config, next(seeds)),
            )

        return make

    def norm(layer_name: str) -> keras.layers.Layer:
        return LocalResponseNormalization(
            config.lrn_depth, config.lrn_k, config.lrn_alpha, config.lrn_beta, name=layer_name
        )

    def pool(layer_name: str) -> keras.layers.Layer:
        return keras.layers.MaxPooling2D(pool_size, pool_stride, name=layer_name)

    def dense(base: str, units: int, **kwargs: Any) -> keras.layers.Layer:
        return keras.layers.Dense(units, name=base, **_initializers(base, config, next(seeds)), **kwargs)

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
    fc_units = scaled_count(FC_UNITS, config.width)
    for base in FC_LAYERS[:2]:
        x = place(dense(base, fc_units, activation=activation), head)(x)
        if config.dropout:
            x = place(keras.layers.Dropout(config.dropout, name=f"dropout{base[2:]}"), head)(x)
    # Logits in float32 under a mixed policy: the softmax cross-entropy needs the range.
    logits = place(dense(FC_LAYERS[2], config.num_classes, dtype="float32"), head)(x)
    return inputs, logits


def _initializers(base: str, config: AlexNetConfig, seed: int | None) -> dict[str, Any]:
    gain = config.conv1_init_gain if base == "conv1" else 1.0
    if config.init == "he" and base == FC_LAYERS[-1]:
        # The classifier keeps the paper's N(0, 0.01) (section 5). He-normal's factor 2 is for a layer whose
        # outputs pass a ReLU; fc8's go to the softmax, and He-normal logits start at a standard deviation of
        # 1.3-1.7 and a loss of 3.2-4.0 on the demo's 10 classes (ln 10 = 2.3). With them, the first steps'
        # large gradients sent one of six demo seeds to chance for good (flags/demo.cfg); small logits start
        # every seed at ln(num_classes), as zero-initialized heads do (big_vision's head_zeroinit).
        return {"kernel_initializer": keras.initializers.RandomNormal(0.0, INIT_STDDEV, seed),
                "bias_initializer": "zeros"}
    if config.init == "he":
        # He-normal assumes unit-variance inputs; conv1 reads pixels on the 0-255 scale times
        # input_scale, so its variance is divided by theirs (ImageNet's RGB stddev is about 58).
        scale = 2.0 / (PIXEL_STDDEV * config.input_scale) ** 2 if base == "conv1" else 2.0
        kernel = keras.initializers.VarianceScaling(scale * gain**2, "fan_in", "truncated_normal", seed)
        return {"kernel_initializer": kernel, "bias_initializer": "zeros"}
    bias = 1.0 if base in BIAS_ONE_LAYERS else 0.0
    return {
        "kernel_initializer": keras.initializers.RandomNormal(0.0, INIT_STDDEV * gain, seed),
        "bias_initializer": keras.initializers.Constant(bias),
    }
