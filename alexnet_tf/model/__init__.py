"""The network: AlexNet's architecture as values (`architecture`, `presets`), the Keras model (`alexnet`), its
custom layers (`layers`), the bvlc_alexnet.npy weights format (`npy_weights`) and model files (`loading`).

`from alexnet_tf.model import AlexNet, build_alexnet` works as it did when this was one module.
"""

from alexnet_tf.model.alexnet import (
    AlexNet,
    architecture_of,
    build_alexnet,
    conv1_kernel,
    conv_layers,
    inner_layer,
    without_placement,
)
from alexnet_tf.model.architecture import AlexNetConfig

__all__ = [
    "AlexNet",
    "AlexNetConfig",
    "architecture_of",
    "build_alexnet",
    "conv1_kernel",
    "conv_layers",
    "inner_layer",
    "without_placement",
]
