"""MODEL_DIR anywhere tf.io.gfile reaches (tested on TensorFlow's in-memory ram:// file system), whole
checkpoints only, and one run at a time."""

import json
import os
import subprocess
import sys
import time

import keras
import pytest
import tensorflow as tf

from alexnet_tf import errors, model_dir, train
from alexnet_tf.training import run_guard
from tests import tiny_data
from tests.flag_parsing import flag_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = list(tiny_data.TINY_FLAGS)


@pytest.mark.slow
def test_a_run_on_ram_keeps_everything_there_and_prunes_checkpoints(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Where a path mistaken for a local one would appear, as a folder "ram:".
    root = "ram://test_model_dir/run"
    results = train.run(flag_parser(train)(*TINY, f"--data_dir={data_dir}", f"--model_dir={root}", "--epochs=3",
                                           "--keep_checkpoints=1"))
    assert os.listdir(tmp_path) == []
    assert model_dir.checkpoints(f"{root}/checkpoints") == [f"{root}/checkpoints/epoch_003.keras"]
    assert tf.io.gfile.listdir(f"{root}/checkpoints") == ["epoch_003.keras"]
    assert results["checkpoint"] == f"{root}/checkpoints/epoch_003.keras"
    with tf.io.gfile.GFile(f"{root}/results.json") as f:
        assert json.load(f) == results
    for name in ("conv1.png", "run.json", "export/saved_model.pb", "backup/latest.weights.h5"):
        assert tf.io.gfile.exists(f"{root}/{name}"), name
    assert tf.io.gfile.exists(f"{root}/logs/train") and tf.io.gfile.exists(f"{root}/logs/conv1")
    assert not tf.io.gfile.exists(f"{root}/lock.json")  # Released at the end.


def test_a_checkpoint_cut_off_by_a_kill_is_never_listed(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    directory = str(tmp_path)
    model_dir.save_atomically(model, f"{directory}/epoch_001.keras")

    def killed(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")  # What a kill leaves mid-write.
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        model_dir.save_atomically(model, f"{directory}/epoch_002.keras")
    assert model_dir.checkpoints(directory) == [f"{directory}/epoch_001.keras"]
    assert sorted(os.listdir(directory)) == [".partial-epoch_002.keras", "epoch_001.keras"]


def test_checkpoints_sort_by_epoch_number_not_by_name(tmp_path):
    for epoch in (9, 10, 100, 1):
        (tmp_path / model_dir.CHECKPOINT_PATTERN.format(epoch=epoch)).write_bytes(b"")
    (tmp_path / "epoch_7.keras.tmp").write_bytes(b"")
    assert [os.path.basename(p) for p in model_dir.checkpoints(str(tmp_path))] == [
        "epoch_001.keras", "epoch_009.keras", "epoch_010.keras", "epoch_100.keras"]


@pytest.mark.slow
def test_a_second_run_on_a_busy_model_dir_refuses_naming_the_first(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "lock.json").write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid,
                                                        "started": "2026-12-01T10:00:00+00:00"}))
        with pytest.raises(errors.TrainingError) as error:
            run_guard.RunLock(str(tmp_path)).acquire()
        assert str(error.value).startswith(f"{tmp_path} is in use by another run (process {holder.pid} on "
                                           f"{os.uname().nodename}, since 2026-12-01T10:00:00+00:00)")
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone now: its lock is stale and taken over.
    lock = run_guard.RunLock(str(tmp_path))
    lock.acquire()
    assert json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "lock.json").exists()


def test_a_lock_of_another_host_is_not_taken_over(tmp_path):
    (tmp_path / "lock.json").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
    with pytest.raises(errors.TrainingError, match="process 1 on elsewhere"):
        run_guard.RunLock(str(tmp_path)).acquire()


_CONTENDER = """
import os, sys, time
from alexnet_tf import errors
from alexnet_tf.training import run_guard
model_dir, name = sys.argv[1:]
open(os.path.join(model_dir, "ready-" + name), "w").close()
while not os.path.exists(os.path.join(model_dir, "go")):  # Every contender tries at the same moment.
    time.sleep(0.001)
lock = run_guard.RunLock(model_dir)
try:
    lock.acquire()
except errors.TrainingError:
    print("refused")
    sys.exit(0)
print("held")
time.sleep(1.0)  # Holds it while the others try.
lock.release()
"""


@pytest.mark.slow
def test_contenders_for_a_stale_lock_at_the_same_moment_hold_it_one_at_a_time(tmp_path):
    """A lock left by a dead process, taken over by several runs started together: at most one holds it at a
    time, none fails with a traceback (the old takeover, remove then create, let two hold it 7 times in 30)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for trial in range(5):  # The old takeover let two or three hold it in 2 of 5 such trials.
        model_dir = tmp_path / f"trial{trial}"
        model_dir.mkdir()
        (model_dir / "lock.json").write_text(json.dumps({"host": os.uname().nodename, "pid": dead.pid}))
        contenders = [subprocess.Popen([sys.executable, "-c", _CONTENDER, str(model_dir), str(i)], cwd=REPO,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                      for i in range(4)]
        while len(list(model_dir.glob("ready-*"))) < len(contenders):
            time.sleep(0.01)
        (model_dir / "go").touch()
        outputs = [process.communicate(timeout=120) for process in contenders]
        assert all(process.returncode == 0 for process in contenders), [err[-500:] for _, err in outputs]
        answers = sorted(out.strip() for out, _ in outputs)
        # The first holds it for a second: those who tried meanwhile are refused.
        assert answers == ["held", "refused", "refused", "refused"], answers
        assert not (model_dir / "lock.json").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
