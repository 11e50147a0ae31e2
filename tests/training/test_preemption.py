"""SIGTERM and Ctrl-C during training: the step ends, the backup is written, the run stops with one line and the
status a shell gives a process the signal ended; the same command resumes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest

from alexnet_tf import errors
from alexnet_tf.training import preemption
from tests import tiny_data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Backup:
    def __init__(self):
        self.saved_at = []

    def save_now(self, epoch):
        self.saved_at.append(epoch)


class _SignalAt(keras.callbacks.Callback):
    """Sends `signum` to this process at the end of batch `batch` of epoch `epoch`."""

    def __init__(self, signum, epoch, batch):
        super().__init__()
        self.signum, self.epoch, self.batch, self._epoch = signum, epoch, batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self._epoch, batch) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.signum)


def _fit(callbacks, epochs=3):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((40, 2), np.float32), np.zeros((40, 1), np.float32)
    model.fit(x, y, batch_size=4, epochs=epochs, verbose=0, callbacks=callbacks)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_fit_ends_the_step_writes_the_backup_and_stops_with_one_line(signum, status):
    assert threading.current_thread() is threading.main_thread()  # Only the main thread receives signals.
    before = signal.getsignal(signum)
    backup, steps = _Backup(), []
    guard = preemption.PreemptionGuard(backup)
    counter = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(batch))
    with pytest.raises(preemption.Preempted) as stopped, guard:
        _fit([_SignalAt(signum, epoch=1, batch=3), counter, guard])
    # The signal came before step 4 of epoch 2: that step ran whole, then the backup was written, within epoch 2.
    assert len(steps) == 10 + 4 and backup.saved_at == [1]
    assert str(stopped.value) == (f"stopped by {signal.Signals(signum).name} at epoch 2, step 4: the backup holds "
                                  "its every step, and the same command resumes epoch 2")
    assert isinstance(stopped.value, errors.TrainingError) and stopped.value.exit_code == status
    assert signal.getsignal(signum) is before  # The process's own handler again, after the run.


def test_outside_fit_a_signal_stops_at_once_and_a_second_ctrl_c_is_an_interrupt():
    guard = preemption.PreemptionGuard(_Backup())
    with pytest.raises(preemption.Preempted, match="^stopped by SIGTERM outside training"), guard:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # The handler raises here.
    guard = preemption.PreemptionGuard(_Backup())
    with pytest.raises(KeyboardInterrupt), guard:
        guard.on_train_begin()
        os.kill(os.getpid(), signal.SIGINT)  # Held until the step ends...
        os.kill(os.getpid(), signal.SIGINT)  # ...but a second Ctrl-C is not.
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_trainer_stopped_by_a_signal_resumes_with_the_same_command(data_dir, tmp_path, signum):
    model_dir = tmp_path / "model"
    command = [sys.executable, "-m", "alexnet_tf.train", *tiny_data.TINY_FLAGS, f"--data_dir={data_dir}",
               f"--model_dir={model_dir}", "--batch_size=4"]
    process = subprocess.Popen(command + ["--epochs=50"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    history = model_dir / "backup" / "history.json"
    deadline = time.time() + 300
    while not (history.exists() and json.loads(history.read_text() or "{}").get("epochs")):
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.2)
    time.sleep(1.0)  # Into the second epoch.
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"train: error: stopped by {signal.Signals(signum).name} ") and "Traceback" not in stderr
    assert "the same command resumes epoch" in last
    assert not (model_dir / "lock.json").exists()
    metadata = json.loads((model_dir / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] >= 1  # Within the epoch the signal came in: its steps are in the backup.
    resumed = subprocess.run(command + [f"--epochs={metadata['epoch'] + 1}"], cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    results = json.loads((model_dir / "results.json").read_text())
    assert results["epochs"] == metadata["epoch"] + 1 and results["val_top1_error"] is not None


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
