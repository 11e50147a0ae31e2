"""What every test shares: two logical CPU devices (a stand-in for two GPUs), and the tiny data set and flags.

Logical devices must be configured before TensorFlow initializes its runtime, so this runs when pytest imports the
conftest, before any test module.
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


def pytest_sessionfinish(session, exitstatus):
    # Bazel runs each test file alone on the fast tier (.bazelrc: -m 'not slow'): a file whose every test is slow
    # (data/test_tfds.py) then runs none, which is a pass there, not pytest's "no tests collected" (exit 5).
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and session.config.getoption("markexpr"):
        session.exitstatus = pytest.ExitCode.OK


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """The tiny prepared data set (`tests.tiny_data`), made once per test process. Read-only: a test that damages
    a data set copies this one first."""
    from tests import tiny_data

    return tiny_data.prepared_dataset(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture
def parse():
    """parse(*args): the training binary's flags parsed from `args` (`flag_parser`)."""
    from alexnet_tf import train
    from tests.flag_parsing import flag_parser

    return flag_parser(train)
