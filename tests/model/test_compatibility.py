"""What this project wrote before keeps working: a checkpoint written by an earlier version (before the package was
grouped by job) loads and computes what it computed then, and the old import paths a user may have still import."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from alexnet_tf.model import AlexNet
from alexnet_tf.training.optimizer import PaperSGD

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Written by `alexnet_tf.train.run` at commit c9387a2, when every module lay flat in alexnet_tf/ (alexnet_tf.model,
# alexnet_tf.optimizer, alexnet_tf.metrics): one epoch of the tiny data set, --width=0.03125 --image_size=64
# --init=he --seed=1 --batch_size=8, 6 optimizer steps.
LEGACY_CHECKPOINT = os.path.join(REPO, "tests", "fixtures", "checkpoint_c9387a2.keras")
# Its logits on `_images()`, printed by that commit's code.
LEGACY_LOGITS = np.array([[1.7504148e-03, 1.1525516e-02, 7.2832569e-04, -1.4054168e-02],
                          [-4.6744698e-01, 3.1025455e+00, -9.5625505e+00, 6.8820872e+00]], np.float32)


def _images() -> np.ndarray:
    return np.linspace(-100, 100, 2 * 64 * 64 * 3, dtype=np.float32).reshape(2, 64, 64, 3)


def test_a_checkpoint_of_the_flat_package_loads_whole_and_computes_what_it_did():
    model = keras.models.load_model(LEGACY_CHECKPOINT)
    assert isinstance(model, AlexNet)
    assert (model.config.towers, model.config.width, model.config.image_size, model.config.num_classes) == \
        (2, 0.03125, 64, 4)
    np.testing.assert_allclose(model(_images(), training=False), LEGACY_LOGITS, rtol=1e-5, atol=1e-6)
    assert isinstance(model.optimizer, PaperSGD) and model.optimizer.weight_decay_l2 == 5e-4
    assert int(model.optimizer.iterations.numpy()) == 6
    labels = np.array([1, 2])
    measured = model.evaluate(_images(), labels, verbose=0, return_dict=True)
    assert measured["top1_error"] == 0.5 and measured["top5_error"] == 0.0  # fc8 has 4 classes: all in the top 5.
    assert sorted(type(m).__name__ for m in model.metrics[1].metrics) == ["TopKError", "TopKError"]


@pytest.mark.slow
def test_import_alexnet_tf_alone_registers_every_class_a_checkpoint_names():
    """The README's promise, in a fresh interpreter that imports nothing of ours but the package."""
    script = ("import sys, alexnet_tf, keras, numpy\n"
              "model = keras.models.load_model(sys.argv[1])\n"
              "measured = model.evaluate(numpy.zeros([2, 64, 64, 3]), numpy.array([0, 1]), verbose=0,"
              " return_dict=True)\n"
              "print(type(model).__name__, type(model.optimizer).__name__, sorted(measured),"
              " sorted(type(m).__name__ for m in model.metrics[1].metrics), model.get_config()['width'])\n")
    process = subprocess.run([sys.executable, "-c", script, LEGACY_CHECKPOINT], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    assert process.stdout.split("\n")[-2] == ("AlexNet PaperSGD ['loss', 'top1_error', 'top5_error'] "
                                              "['TopKError', 'TopKError'] 0.03125")


def test_the_old_import_paths_still_import():
    from alexnet_tf.model import AlexNet as model_alexnet, build_alexnet
    from alexnet_tf.weights import read_npy
    from alexnet_tf.layers import LocalResponseNormalization
    from alexnet_tf.optimizer import PaperSGD as old_paper_sgd
    from alexnet_tf.schedule import PlateauSchedule  # noqa: F401
    from alexnet_tf.architecture import AlexNetConfig
    from alexnet_tf.loading import load_model  # noqa: F401
    import alexnet_tf.layers

    assert model_alexnet is AlexNet and build_alexnet is alexnet_tf.build_alexnet
    assert old_paper_sgd is PaperSGD and AlexNetConfig is alexnet_tf.AlexNetConfig
    assert LocalResponseNormalization is alexnet_tf.layers.LocalResponseNormalization is \
        alexnet_tf.LocalResponseNormalization
    assert read_npy.__module__ == "alexnet_tf.model.npy_weights"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
