"""--deterministic: two runs of the same command end with identical weights."""

import sys

import keras
import numpy as np
import pytest
from tensorflow.python.framework import config as tf_config

from alexnet_tf import train
from tests import fit_only
from tests.flag_parsing import flag_parser
TINY = ["--width=0.0625", "--image_size=64", "--batch_size=8", "--epochs=1"]


@pytest.fixture
def run(data_dir, tmp_path):
    """Trains in-process as the command line `args` says (`training.fit`: the epochs, not the figures and the
    export); returns the weights of the last checkpoint. Op determinism, which TensorFlow keeps for the rest of
    the process, is switched off again afterwards."""
    runs = []

    def train_with(*args):
        model_dir = tmp_path / str(len(runs))
        fit_only.fit(flag_parser(train)(*TINY, f"--data_dir={data_dir}", f"--model_dir={model_dir}", *args))
        runs.append(model_dir)
        return keras.models.load_model(model_dir / "checkpoints" / "epoch_001.keras", compile=False).get_weights()

    yield train_with
    tf_config.disable_op_determinism()


@pytest.mark.slow
def test_two_deterministic_runs_end_with_identical_weights(run):
    first = run("--deterministic", "--seed=3")
    assert tf_config.is_op_determinism_enabled()
    second = run("--deterministic", "--seed=3")
    other_seed = run("--deterministic", "--seed=4")
    assert len(first) == 26
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # The comparison is sharp enough to tell runs apart: another seed gives other weights.
    assert not all(np.array_equal(a, c) for a, c in zip(first, other_seed))


def test_deterministic_makes_the_input_pipeline_keep_its_order(data_dir):
    flag_values = flag_parser(train)(*TINY, f"--data_dir={data_dir}", "--model_dir=unused", "--deterministic",
                                     "--seed=3")
    datasets = train.create_datasets(train.config_from_flags(flag_values))
    assert datasets.train.options().deterministic is True


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
