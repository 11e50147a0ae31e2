"""Test-session set-up: two logical CPU devices, as a stand-in for two GPUs.

Logical devices must be configured before TensorFlow initializes its runtime, so this runs when
pytest imports the conftest, before any test module.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


def pytest_configure(config):
    # Keras 3.15 converts variables with np.array(x, copy=False), which numpy 2 deprecates.
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword"
    )


@pytest.fixture
def parse():
    """parse(*args): the training binary's flags parsed from `args` (`flag_parser`)."""
    from alexnet_tf import train
    from tests.flag_parsing import flag_parser

    return flag_parser(train)
