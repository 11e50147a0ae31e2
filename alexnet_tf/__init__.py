"""AlexNet (Krizhevsky, Sutskever & Hinton, NeurIPS 2012) in Keras 3 on TensorFlow.

    import alexnet_tf
    model = alexnet_tf.build_alexnet()            # the paper's two-tower network, an AlexNet
    model.config                                  # its AlexNetConfig, saved with it in a .keras file
    alexnet_tf.load_npy_weights(model, "bvlc_alexnet.npy")

Importing the package registers every class a checkpoint of ours names (the model and its layers, the optimizer,
the metrics), so `keras.models.load_model` reads a checkpoint that `alexnet_tf.train` wrote, compiled state and
all. The package by job: `model/`, `data/`, `training/`, `analysis/`, and the binaries `train`, `evaluate`,
`export` (docs/design.md).
"""

import sys as _sys

from alexnet_tf import onednn, quiet

onednn.set_default()  # Before TensorFlow starts, which reads it once: onednn.py.
quiet.import_quietly("tensorflow")  # Its import-time notices held back, nothing else changed: quiet.py.

# Each import registers the Keras classes its module defines (keras.saving.register_keras_serializable).
from alexnet_tf import metrics as _metrics  # noqa: E402  TopKError
from alexnet_tf.model.alexnet import AlexNet, build_alexnet, conv1_kernel  # noqa: E402
from alexnet_tf.model.architecture import AlexNetConfig  # noqa: E402
from alexnet_tf.model.layers import LocalResponseNormalization, OnDevice  # noqa: E402
from alexnet_tf.model.npy_weights import load_npy_weights, save_npy_weights  # noqa: E402
from alexnet_tf.training import optimizer as _optimizer  # noqa: E402  PaperSGD

# Modules that lay flat in the package before it was grouped by job, under their old names, so that a user's
# `import alexnet_tf.layers` or `from alexnet_tf.weights import read_npy` keeps working.
_MOVED_MODULES = {
    "architecture": "alexnet_tf.model.architecture",
    "layers": "alexnet_tf.model.layers",
    "weights": "alexnet_tf.model.npy_weights",
    "loading": "alexnet_tf.model.loading",
    "optimizer": "alexnet_tf.training.optimizer",
    "schedule": "alexnet_tf.training.schedule",
}
for _old, _new in _MOVED_MODULES.items():
    __import__(_new)
    _sys.modules[f"{__name__}.{_old}"] = globals()[_old] = _sys.modules[_new]
del _metrics, _optimizer, _old, _new

__all__ = [
    "AlexNet",
    "AlexNetConfig",
    "LocalResponseNormalization",
    "OnDevice",
    "build_alexnet",
    "conv1_kernel",
    "load_npy_weights",
    "save_npy_weights",
]
