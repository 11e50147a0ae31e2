"""Bad input and divergence: each stops training with one line and loses nothing already on disk."""

import dataclasses
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

from alexnet_tf import cli, errors, train
from alexnet_tf.model import build_alexnet, loading
from alexnet_tf.training import callbacks, distribute
from tests import tiny_data
from tests.flag_parsing import flag_parser
from tests.fit_only import fit
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = list(tiny_data.TINY_FLAGS)


@pytest.fixture
def parse(parse):
    """conftest's flag parser, with the tiny network's flags."""
    return lambda *args: parse(*TINY, *args)


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """MODEL_DIR of a one-epoch run, which the tests copy and try to spoil."""
    model_dir = tmp_path_factory.mktemp("finished") / "model"
    train.run(flag_parser(train)(*TINY, f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=1"))
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
    (lambda data: (data / "dataset_info.json").write_text("{not json"), "dataset_info.json: not valid JSON ("),
])
@pytest.mark.slow
def test_an_empty_or_unreadable_data_dir_is_one_line_and_exit_status_1(data_dir, tmp_path, capsys, parse, spoil,
                                                                        message):
    data = shutil.copytree(data_dir, tmp_path / "data")
    spoil(data)
    flag_values = parse(f"--data_dir={data}", f"--model_dir={tmp_path / 'model'}")
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main("train", lambda: train.run(flag_values), ["train"])
    assert exit_info.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"train: error: {data}") and message in last, last
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
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
    with pytest.raises(errors.TrainingError) as error:
        train.run(flag_values, datasets_override=datasets)
    assert str(error.value) == ("the training loss is nan at epoch 2, step 3 (optimizer step 7): training diverged, "
                                "and nothing was saved after the previous epoch; run the same command with a lower "
                                "--learning_rate: it resumes after epoch 1 at that rate (or give a new --model_dir to "
                                "start over)")
    assert os.listdir(model_dir / "checkpoints") == ["epoch_001.keras"]
    assert json.loads((model_dir / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    assert list(json.loads((model_dir / "backup" / "plateau.json").read_text())["states"]) == ["0"]
    with h5py.File(model_dir / "backup" / "latest.weights.h5") as backup:
        arrays = []
        backup.visititems(lambda name, item: arrays.append(item[()]) if isinstance(item, h5py.Dataset) else None)
    assert len(arrays) > 20 and all(np.isfinite(a).all() for a in arrays)
    assert not (model_dir / "results.json").exists()


@pytest.mark.slow
def test_a_learning_rate_blowup_stops_before_saving(data_dir, parse, tmp_path):
    flag_values = parse(f"--data_dir={data_dir}", f"--model_dir={tmp_path}", "--learning_rate=1e6")
    with pytest.raises(errors.TrainingError, match=r"at epoch 1.*training diverged"):
        train.run(flag_values)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "backup").exists()


def test_weights_that_overflowed_in_the_last_step_are_not_saved():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
    model.compile(optimizer="sgd", loss="mse")
    guard = callbacks.StopOnNaN()
    guard.set_model(model)
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(0, {"loss": 1.5})  # A finite loss: the update after it overflowed.
    model.layers[0].kernel.assign([[np.inf], [0.0]])
    with pytest.raises(errors.TrainingError, match=r"not finite after epoch 1 \(sequential(_\d+)?/dense/kernel\)"):
        guard.on_epoch_end(0, {"loss": 1.5})


def test_an_epoch_whose_validation_diverged_is_not_saved_and_the_message_says_how_to_go_on():
    """At lr 10 with 3 steps an epoch, epoch 1's training losses were finite and its validation loss NaN: it became
    the backup, and the advised lower rate was ignored on resume."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    guard = callbacks.StopOnNaN()
    guard.set_model(model)
    for epoch, restart in ((0, "run the command again with a lower --learning_rate"),
                           (3, "run the same command with a lower --learning_rate: it resumes after epoch 3 at that "
                               "rate")):
        guard.on_epoch_begin(epoch)
        guard.on_train_batch_end(0, {"loss": 2.0})
        with pytest.raises(errors.TrainingError, match=re.escape(
                f"the validation loss is nan, top1_error is inf after epoch {epoch + 1}: training diverged, and it "
                f"was not saved; {restart}")):
            guard.on_epoch_end(epoch, {"loss": 2.0, "val_loss": float("nan"), "val_top1_error": float("inf"),
                                       "val_top5_error": 1.0})


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
def test_an_epoch_without_a_readable_image_stops_the_run(parse, tmp_path):
    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            folder = tmp_path / "data" / split / wnid
            folder.mkdir(parents=True)
            for i in range(8):
                (folder / f"{wnid}_{i}.JPEG").write_bytes(b"not an image")
    flag_values = parse(f"--data_dir={tmp_path / 'data'}", f"--model_dir={tmp_path / 'model'}", "--stats_path=imagenet")
    with pytest.raises(errors.TrainingError, match="epoch 1 trained on no batch: no training image could be read"):
        train.run(flag_values)
    assert not (tmp_path / "model" / "checkpoints").exists() or not os.listdir(tmp_path / "model" / "checkpoints")


@pytest.mark.slow
def test_a_corrupt_shard_is_named_and_the_run_so_far_kept(data_dir, model_dir, parse, tmp_path):
    data = shutil.copytree(data_dir, tmp_path / "data")
    shard = data / "train-00001-of-00003.tfrecord"
    content = bytearray(shard.read_bytes())
    content[2000:2100] = bytes(b ^ 0xFF for b in content[2000:2100])
    shard.write_bytes(bytes(content))
    before = contents(model_dir)
    flag_values = parse(f"--data_dir={data}", f"--model_dir={model_dir}", "--epochs=2")
    with pytest.raises(errors.DataError) as error:
        train.run(flag_values)
    assert re.fullmatch(rf"unreadable data \(corrupted record at \d+\) in {re.escape(str(shard))}: prepare the data "
                        r"set again: python tools/prepare_imagenet.py --input_dir=.* --output_dir=.*", str(error.value)
                        ), str(error.value)
    # config.json and run.json record the latest command's settings (another --data_dir here).
    assert_kept({k: v for k, v in before.items() if k not in ("config.json", "run.json")}, model_dir)


@pytest.mark.parametrize("flag, message", [
    ("--width=0.125", "--width=0.125 (it has 0.0625)"),
    ("--towers=1", "--towers=1 (it has 2)"),
    ("--num_classes=5", "--num_classes=5 (it has 4)"),
])
@pytest.mark.slow
def test_a_model_dir_of_another_variant_is_refused(data_dir, model_dir, parse, flag, message):
    before = contents(model_dir)
    flag_values = parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=2", flag)
    with pytest.raises(errors.TrainingError) as error:
        train.run(flag_values)
    assert str(error.value).startswith(f"{model_dir} holds a run of another model variant: {message}.")
    assert contents(model_dir) == before


@pytest.mark.slow
def test_the_model_variant_message_names_every_difference(data_dir, model_dir, parse):
    flag_values = parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--towers=1", "--groups=1", "--lrn=false")
    with pytest.raises(errors.TrainingError) as error:
        train.run(flag_values)
    assert str(error.value) == (f"{model_dir} holds a run of another model variant: --groups=1 (it has 2); "
                                "--lrn=false (it has true); --towers=1 (it has 2). Resume it with its own flags, or "
                                "give a new --model_dir")


def test_a_pretrained_checkpoint_is_its_own_architecture_and_a_contradicting_flag_names_both(parse, tmp_path):
    checkpoint = tmp_path / "epoch_030.keras"
    build_alexnet(num_classes=10, width=0.0625, image_size=67, init="he", input_scale=0.25, conv1_init_gain=0.5,
                  lrn_k=1.0, seed=3).save(checkpoint)
    # Read from the checkpoint, not the flags' defaults: fine-tuning keeps its input scale and initialization.
    config = train.config_from_flags(parse(f"--model_dir={tmp_path / 'model'}", f"--pretrained={checkpoint}",
                                           "--image_size=67", "--num_classes=5", "--seed=9"))
    assert dataclasses.asdict(config.architecture) == {
        **dataclasses.asdict(loading.checkpoint_architecture(str(checkpoint))), "num_classes": 5, "seed": 9}
    assert (config.architecture.width, config.architecture.input_scale, config.architecture.lrn_k) == \
        (0.0625, 0.25, 1.0)
    with pytest.raises(errors.ConfigError, match=re.escape(
            f"{checkpoint} is another architecture than the flags say: --width=0.125 (it has 0.0625)")):
        train.config_from_flags(parse(f"--model_dir={tmp_path / 'model'}", f"--pretrained={checkpoint}",
                                      "--width=0.125", "--image_size=67"))


@pytest.mark.slow
def test_a_finished_run_run_again_keeps_its_results(model_dir, data_dir, parse):
    before = contents(model_dir)
    results = train.run(parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=1"))
    assert results == json.loads((model_dir / "results.json").read_text())
    assert results["val_top1_error"] is not None and results["checkpoint"].endswith("epoch_001.keras")
    assert contents(model_dir) == before


@pytest.fixture(scope="module")
def two_epoch_run(data_dir, tmp_path_factory):
    """MODEL_DIR of a two-epoch run: its backup has a previous version (.bkp) beside the latest."""
    model_dir = tmp_path_factory.mktemp("two") / "model"
    train.run(flag_parser(train)(*TINY, f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=2"))
    return model_dir


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


@pytest.mark.parametrize("spoil", [
    lambda backup: truncate(backup / "latest.weights.h5"),
    lambda backup: (backup / "latest.weights.h5").write_bytes(
        b"garbage" + (backup / "latest.weights.h5").read_bytes()[7:]),
    lambda backup: (backup / "training_metadata.json").write_text(""),
    lambda backup: truncate(backup / "plateau.json"),
])
@pytest.mark.slow
def test_a_damaged_latest_backup_resumes_from_the_previous_one(two_epoch_run, data_dir, parse, tmp_path, capfd,
                                                               spoil):
    model_dir = shutil.copytree(two_epoch_run, tmp_path / "model")
    spoil(model_dir / "backup")
    (model_dir / "results.json").unlink()
    fit(parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=3"))
    output = capfd.readouterr().out
    assert "epoch_003.keras" in os.listdir(model_dir / "checkpoints")
    # The previous backup holds epoch 1 (or the latest its epoch 2): never a fresh start.
    assert "Epoch 1/3" not in output and "Epoch 3/3" in output


@pytest.mark.slow
def test_no_readable_backup_resumes_from_the_newest_checkpoint_and_none_at_all_is_one_line(two_epoch_run, data_dir,
                                                                                           parse, tmp_path):
    model_dir = shutil.copytree(two_epoch_run, tmp_path / "model")
    for name in ("latest.weights.h5", "latest.weights.h5.bkp"):
        truncate(model_dir / "backup" / name)
    (model_dir / "results.json").unlink()
    checkpoint = keras.models.load_model(model_dir / "checkpoints" / "epoch_002.keras")
    trainer = train.build(train.config_from_flags(parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                                                        "--epochs=3")))
    try:
        backup = [c for c in trainer.callbacks.all if isinstance(c, callbacks.FallbackBackupAndRestore)][0]
        backup.set_model(trainer.model)
        backup.on_train_begin()
        # epoch_002.keras holds the weights and the optimizer's state after epoch 2: the run goes on from there.
        assert trainer.model._initial_epoch == 2
        assert int(trainer.model.optimizer.iterations.numpy()) == int(checkpoint.optimizer.iterations.numpy()) > 0
        for ours, saved in zip(trainer.model.weights, checkpoint.weights):
            np.testing.assert_array_equal(ours.numpy(), saved.numpy())
    finally:
        trainer.lock.release()
    shutil.rmtree(model_dir / "checkpoints")
    with pytest.raises(errors.TrainingError, match=rf"^no backup in {re.escape(str(model_dir))}/backup can be read "
                                                   r"\(the latest and the previous are damaged\), nor any epoch "
                                                   "checkpoint"):
        train.run(parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=3"))


def test_the_run_is_recorded_before_anything_can_be_resumed(data_dir, parse, tmp_path, monkeypatch):
    """A kill after the first backup but before anything else is written must not let another variant resume."""
    model_dir = tmp_path / "model"
    config = train.config_from_flags(parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}"))
    train.build(config)
    record = json.loads((model_dir / "run.json").read_text())
    assert record["variant"]["dropout"] == 0.5 and record["variant"]["lrn_k"] == 2.0
    # Beside it, the whole resolved config: fc8's classes are the data set's (4), the seed and folders the command's.
    written = json.loads((model_dir / "config.json").read_text())
    assert written == json.loads(json.dumps(dataclasses.replace(config, architecture=dataclasses.replace(
        config.architecture, num_classes=4)).to_json()))
    assert (written["architecture"]["num_classes"], written["architecture"]["seed"], written["data"]["data_dir"],
            written["optimizer"]["weight_decay"], written["schedule"]["patience_epochs"]) == (4, 1, data_dir, 5e-4, 5)
    (model_dir / "backup").mkdir()  # What the first epoch's end leaves, before anything else.
    with pytest.raises(errors.TrainingError) as error:
        train.build(train.config_from_flags(parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                                                  "--dropout=0.1", "--lrn_k=1")))
    assert "--dropout=0.1 (it has 0.5); --lrn_k=1.0 (it has 2.0)" in str(error.value)


@pytest.mark.slow
def test_a_resume_says_what_it_changes_and_refuses_another_input(model_dir, data_dir, parse, caplog):
    (model_dir / "results.json").unlink()
    with caplog.at_level("WARNING"):
        trainer = train.build(train.config_from_flags(parse(
            f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=2", "--learning_rate=0.05",
            "--batch_size=4", "--nopca_noise")))
        trainer.lock.release()
    for name, new, old in (("learning_rate", "0.05", "0.01"), ("batch_size", "4", "8"), ("pca_noise", "false", "true")):
        assert f"--{name}={new}: the resumed run uses it; the run's previous command had {old}." in caplog.text
    # The resumed schedule continues at the command's rate (after a divergence, a lower one).
    assert trainer.callbacks.schedule.learning_rate_override == 0.05
    # What the model's inputs mean may not change: the export would serve another preprocessing.
    for flag, message in (("--channel_order=BGR", "--channel_order=BGR (it has RGB)"),
                          ("--mean=none", "--mean=none (it has image)")):
        with pytest.raises(errors.TrainingError, match=re.escape(message)):
            train.build(train.config_from_flags(parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                                                      "--epochs=2", flag)))


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_the_earlier_epochs(model_dir, data_dir, parse, monkeypatch):
    from alexnet_tf import model_dir as model_dir_lib

    before = contents(model_dir)
    (model_dir / "results.json").unlink()
    del before["results.json"]

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_dir_lib, "save_atomically", full)
    with pytest.raises(errors.TrainingError, match=r"^no space left while writing .*everything up to the last "
                                                   r"finished epoch is kept$"):
        train.run(parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=2"))
    # config.json holds the latest command's settings (--epochs=2 now), the backup and logs its progress.
    assert_kept({k: v for k, v in before.items() if not k.startswith(("backup", "logs", "config.json"))}, model_dir)


@pytest.mark.parametrize("args, message", [
    (["--cluster_timeout=0"], "--cluster_timeout=0: 0.0 is not number >= 0.001"),
    (["--strategy=bogus"], "value should be one of <one_device|mirrored|towers|multi_worker>"),
    (["--learning_rate=-1"], "--learning_rate=-1: -1.0 is not number >= 1e-12"),
    (["--mixed_precision"], "--mixed_precision was replaced by --dtype_policy=mixed_float16"),
])
def test_bad_flag_values_are_named(args, message):
    with pytest.raises(flags.IllegalFlagValueError, match=re.escape(message)):
        flag_parser(train)(*args)


@pytest.mark.parametrize("args", [["--ten_crop"], ["--checkpoint=x.keras"], ["--ensemble=a.keras"]])
def test_the_trainer_refuses_the_evaluators_flags(args):
    with pytest.raises(flags.UnrecognizedFlagError):
        flag_parser(train)(*args)


def test_an_unknown_strategy_name_is_refused():
    with pytest.raises(errors.ConfigError, match="unknown strategy 'bogus': one of one_device, mirrored"):
        distribute.make_strategy("bogus")


def test_deterministic_without_a_seed_is_refused(tmp_path):
    with pytest.raises(errors.ConfigError, match="^--deterministic needs --seed$"):
        train.config_from_flags(flag_parser(train)(f"--model_dir={tmp_path}", "--deterministic"))


@pytest.mark.slow
def test_deterministic_without_a_seed_is_one_line_from_the_command_line(tmp_path):
    process = subprocess.run([sys.executable, "-m", "alexnet_tf.train", f"--model_dir={tmp_path}", "--deterministic"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines()[-1] == "train: error: --deterministic needs --seed"


def test_a_model_dir_recorded_before_conv1_init_gain_existed_resumes(data_dir, parse, tmp_path):
    """run.json of an older alexnet_tf has no conv1_init_gain: initialization is not part of the variant."""
    model_dir = tmp_path / "model"
    flags = (f"--data_dir={data_dir}", f"--model_dir={model_dir}")
    train.build(train.config_from_flags(parse(*flags)))
    record = json.loads((model_dir / "run.json").read_text())
    record["variant"].pop("conv1_init_gain", None)
    (model_dir / "run.json").write_text(json.dumps(record))
    (model_dir / "backup").mkdir()
    train.build(train.config_from_flags(parse(*flags, "--conv1_init_gain=0.5")))
    assert json.loads((model_dir / "run.json").read_text()) == record


@pytest.mark.slow
def test_a_run_that_failed_after_its_last_epoch_keeps_its_numbers_when_run_again(model_dir, data_dir, parse,
                                                                                monkeypatch):
    """It used to train nothing when run again, and write null errors and loss over the real ones."""
    (model_dir / "results.json").unlink()
    epochs = json.loads((model_dir / "backup" / "history.json").read_text())["epochs"]
    assert list(epochs) == ["1"]

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train.serving, "export_model", full)
    with pytest.raises(errors.TrainingError, match="^no space left while writing"):
        train.run(parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=1"))
    monkeypatch.undo()
    results = train.run(parse(f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=1"))
    assert (results["val_top1_error"], results["train_loss"], results["learning_rate"]) == (
        epochs["1"]["val_top1_error"], epochs["1"]["loss"], epochs["1"]["learning_rate"])
    assert results["val_top1_error"] is not None and results["train_images_per_sec"] > 0


def test_fewer_classes_than_the_data_and_a_model_dir_that_is_a_file_are_one_line(data_dir, parse, tmp_path):
    with pytest.raises(errors.ConfigError, match=rf"^--num_classes=3 is fewer than the 4 classes of {data_dir}"):
        train.build(train.config_from_flags(parse(f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'm'}",
                                                  "--num_classes=3")))
    (tmp_path / "file").write_text("")
    with pytest.raises(errors.ConfigError, match=rf"^--model_dir={tmp_path / 'file'} is a file, not a folder$"):
        train.run(parse(f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'file'}"))


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), OSError(30, "Read-only file system"),
                                   tf.errors.PermissionDeniedError(None, None, "open: Permission denied")])
def test_a_model_dir_that_cannot_be_written_is_one_line(data_dir, parse, tmp_path, monkeypatch, error):
    """Root writes anywhere, so the file system's refusal is made here as a read-only MODEL_DIR would."""
    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(tf.io.gfile, "makedirs", refuse)
    with pytest.raises(errors.TrainingError, match=rf"^{re.escape(str(tmp_path / 'm'))} cannot be written \(.*"
                                                   r"\): give a folder you may write, or change its permissions$"):
        train.run(parse(f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'm'}"))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
