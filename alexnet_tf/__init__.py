"""AlexNet (Krizhevsky, Sutskever & Hinton, NeurIPS 2012) in Keras 3 on TensorFlow.

    import alexnet_tf
    model = alexnet_tf.build_alexnet()            # the paper's two-tower network, an AlexNet
    model.config                                  # its AlexNetConfig, saved with it in a .keras file
    alexnet_tf.load_npy_weights(model, "bvlc_alexnet.npy")
"""

from alexnet_tf import onednn, quiet

onednn.set_default()  # Before TensorFlow starts, which reads it once: onednn.py.
quiet.import_quietly("tensorflow")  # Its import-time notices held back, nothing else changed: quiet.py.

from alexnet_tf.layers import LocalResponseNormalization, OnDevice  # noqa: E402
from alexnet_tf.architecture import AlexNetConfig  # noqa: E402
from alexnet_tf.model import AlexNet, build_alexnet, conv1_kernel  # noqa: E402
from alexnet_tf.weights import load_npy_weights, save_npy_weights  # noqa: E402

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
