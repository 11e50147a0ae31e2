"""Bad input and divergence: each stops training with one line and loses nothing already on disk."""

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from alexnet_tf import distribute, safeguards, train
from alexnet_tf import flags as flags_lib
from tests import tiny_data

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--width=0.0625", "--image_size=64", "--batch_size=8", "--seed=1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tiny_data.prepared_dataset(str(tmp_path_factory.mktemp("data")))


@pytest.fixture
def parse(parse):
    """conftest's flag parser, with the tiny network's flags."""
    return lambda *args: parse(*TINY, *args)


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """MODEL_DIR of a one-epoch run, which the tests copy and try to spoil."""
    model_dir = tmp_path_factory.mktemp("finished") / "model"
    flags_lib.define_flags()
    with flagsaver.flagsaver():
        FLAGS.unparse_flags()
        FLAGS(["train", *TINY, f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=1"])
        train.run(FLAGS)
    return model_dir


@pytest.fixture
def model_dir(finished_run, tmp_path):
    """A copy of the finished run's MODEL_DIR."""
    return shutil.copytree(finished_run, tmp_path / "model")


def contents(directory):
    """{relative path: SHA-256} of every file under `directory`."""
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in pathlib.Path(directory).rglob("*") if path.is_file()}


def assert_kept(before, directory):
    """Every file of `before` (a `contents` result) is still in `directory`, unchanged."""
    after = contents(directory)
    assert {path: after.get(path) for path in before} == before


@pytest.mark.parametrize("spoil, message", [
    (lambda data: shutil.rmtree(data) or data.mkdir(), "neither a prepared data set"),
    (lambda data: (data / "dataset_info.json").write_text("{not json"), "dataset_info.json is not valid JSON ("),
])
def test_an_empty_or_unreadable_data_dir_is_one_line_and_exit_status_1(data_dir, tmp_path, capsys, parse, spoil,
                                                                        message):
    data = shutil.copytree(data_dir, tmp_path / "data")
    spoil(data)
    parse(f"--data_dir={data}", f"--model_dir={tmp_path / 'model'}")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["train"])
    assert exit_info.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"train: error: {data}") and message in last, last
    assert not (tmp_path / "model").exists()


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_epoch(parse, tmp_path):
    """A NaN sample weight in the 7th batch makes that step's loss NaN: epoch 2, step 3 of 4-step epochs."""
    images = np.random.default_rng(0).uniform(-1, 1, (12, 8, 64, 64, 3)).astype(np.float32)
    labels = np.random.default_rng(1).integers(0, 4, (12, 8)).astype(np.int32)
    weights = np.ones((12, 8), np.float32)
    weights[6, 0] = np.nan
    datasets = train.Datasets(tf.data.Dataset.from_tensor_slices((images, labels, weights)),
                              tf.data.Dataset.from_tensor_slices((images[:2], labels[:2])), num_classes=4)
    model_dir = tmp_path / "model"
    flag_values = parse(f"--model_dir={model_dir}", "--epochs=3", "--steps_per_epoch=4")
    with pytest.raises(safeguards.TrainingError) as error:
        train.run(flag_values, datasets_override=datasets)
    assert str(error.value) == ("the training loss is nan at epoch 2, step 3 (optimizer step 7): training diverged, "
                                "and nothing was saved after the previous epoch; resume with a lower --learning_rate")
    assert os.listdir(model_dir / "checkpoints") == ["epoch_001.keras"]
    assert json.loads((model_dir / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    assert list(json.loads((model_dir / "backup" / "plateau.json").read_text())["states"]) == ["0"]
    with h5py.File(model_dir / "backup" / "latest.weights.h5") as backup:
        arrays = []
        backup.visititems(lambda name, item: arrays.append(item[()]) if isinstance(item, h5py.Dataset) else None)
    assert len(arrays) > 20 and all(np.isfinite(a).all() for a in arrays)
    assert not (model_dir / "results.json").exists()


def test_a_learning_rate_blowup_stops_before_saving(data_dir, parse, tmp_path):
    flag_values = parse(f"--data_dir={data_dir}", f"--model_dir={tmp_path}", "--learning_rate=1e6")
    with pytest.raises(safeguards.TrainingError, match=r"at epoch 1.*training diverged"):
        train.run(flag_values)
    assert os.listdir(tmp_path / "checkpoints") == [] and not (tmp_path / "backup").exists()


def test_weights_that_overflowed_in_the_last_step_are_not_saved():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
    model.compile(optimizer="sgd", loss="mse")
    guard = safeguards.StopOnNaN()
    guard.set_model(model)
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(0, {"loss": 1.5})  # A finite loss: the update after it overflowed.
    model.layers[0].kernel.assign([[np.inf], [0.0]])
    with pytest.raises(safeguards.TrainingError, match=r"not finite after epoch 1 \(sequential/dense/kernel\)"):
        guard.on_epoch_end(0, {"loss": 1.5})


@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_an_epoch_without_a_readable_image_stops_the_run(parse, tmp_path):
    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            folder = tmp_path / "data" / split / wnid
            folder.mkdir(parents=True)
            for i in range(8):
                (folder / f"{wnid}_{i}.JPEG").write_bytes(b"not an image")
    flag_values = parse(f"--data_dir={tmp_path / 'data'}", f"--model_dir={tmp_path / 'model'}")
    with pytest.raises(safeguards.TrainingError, match="epoch 1 trained on no batch: no training image could be read"):
        train.run(flag_values)
    assert not (tmp_path / "model" / "checkpoints").exists() or not os.listdir(tmp_path / "model" / "checkpoints")


def test_a_corrupt_shard_is_named_and_the_run_so_far_kept(data_dir, model_dir, parse, tmp_path):
    data = shutil.copytree(data_dir, tmp_path / "data")
    shard = data / "train-00001-of-00003.tfrecord"
    content = bytearray(shard.read_bytes())
    content[2000:2100] = bytes(b ^ 0xFF for b in content[2000:2100])
    shard.write_bytes(bytes(content))
    before = contents(model_dir)
    flag_values = parse(f"--data_dir={data}", f"--model_dir={model_dir}", "--epochs=2")
    with pytest.raises(safeguards.TrainingError) as error:
        train.run(flag_values)
    assert re.fullmatch(rf"unreadable data \(corrupted record at \d+\) in {re.escape(str(shard))}: prepare the data "
                        r"set again \(python tools/prepare_imagenet.py\)", str(error.value)), str(error.value)
    assert_kept(before, model_dir)


@pytest.mark.parametrize("flag, message", [
    ("--width=0.125", "--width=0.125 (it has 0.0625)"),
    ("--towers=1", "--towers=1 (it has 2)"),
    ("--num_classes=5", "--num_classes=5 (it has 4)"),
])
def test_a_model_dir_of_another_variant_is_refused(data_dir, model_dir, parse, flag, message):
    before = contents(model_dir)
    flag_values = parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=2", flag)
    with pytest.raises(safeguards.TrainingError) as error:
        train.run(flag_values)
    assert str(error.value).startswith(f"{model_dir} holds a run of another model variant: {message}.")
    assert contents(model_dir) == before


def test_the_model_variant_message_names_every_difference(data_dir, model_dir, parse):
    flag_values = parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--towers=1", "--groups=1", "--lrn=false")
    with pytest.raises(safeguards.TrainingError) as error:
        train.run(flag_values)
    assert str(error.value) == (f"{model_dir} holds a run of another model variant: --groups=1 (it has 2); "
                                "--lrn=false (it has true); --towers=1 (it has 2). Resume it with its own flags, or "
                                "give a new --model_dir")


def test_a_pretrained_checkpoint_of_another_variant_is_named(finished_run, data_dir, parse, tmp_path):
    checkpoint = finished_run / "checkpoints" / "epoch_001.keras"
    flag_values = parse(f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'model'}", f"--pretrained={checkpoint}",
                        "--width=0.125")
    with pytest.raises(safeguards.TrainingError, match=rf"^--pretrained={checkpoint} is another model variant: layer "
                       r"conv1: the weights have shape \(11, 11, 3, 6\), the model expects \(11, 11, 3, 12\)$"):
        train.run(flag_values)


@pytest.mark.parametrize("args, message", [
    (["--deterministic"], "--deterministic needs --seed"),
    (["--cluster_timeout=0"], "--cluster_timeout must be > 0"),
    (["--strategy=bogus"], "value should be one of <one_device|mirrored|towers|multi_worker>"),
    (["--learning_rate=-1"], "--learning_rate must be > 0"),
    (["--data_dir=/no/such/dir"], "--data_dir must be an existing directory"),
])
def test_bad_flag_values_are_named(parse, args, message):
    FLAGS.unparse_flags()
    with pytest.raises(flags.IllegalFlagValueError, match=re.escape(message)):
        FLAGS(["train", *args])


def test_an_unknown_strategy_name_is_refused():
    with pytest.raises(ValueError, match="unknown strategy 'bogus'"):
        distribute.make_strategy("bogus")


def test_deterministic_without_a_seed_is_one_line_from_the_command_line(tmp_path):
    process = subprocess.run([sys.executable, "-m", "alexnet_tf.train", f"--model_dir={tmp_path}", "--deterministic"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert process.returncode != 0 and "Traceback" not in process.stderr
    assert "Flags parsing error: flags deterministic=True, seed=None: --deterministic needs --seed" in process.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
