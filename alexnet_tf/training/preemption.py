"""SIGTERM (what schedulers and preemptible machines send) and Ctrl-C end a training run cleanly, as a preemption.

While `model.fit` runs, the signal is held until the step that is running ends (a training step, or a validation
step); then the chief writes the backup (`callbacks.FallbackBackupAndRestore.save_now`: the weights and the
optimizer's state after that step), the run stops with `Preempted`, MODEL_DIR's lock is released, and the binary
exits with one line and the status a shell gives a process a signal ended, 128 + its number (143 for SIGTERM, 130
for Ctrl-C). Nothing is ever interrupted halfway through a write. Outside `fit` (building the run, the figures,
the export) the signal stops the run at once, through the same exception. A second Ctrl-C stops at once.

The same command resumes: Keras' BackupAndRestore restores the weights and the optimizer, and starts the
interrupted epoch from its first batch, so the steps it had made are kept, not lost, and that epoch's images are
seen once more than the others'.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import keras
from absl import logging

from alexnet_tf.errors import TrainingError

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(TrainingError):
    """A run stopped by a signal; its exit status is the shell's for that signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class PreemptionGuard(keras.callbacks.Callback):
    """A callback and a context manager: within `with guard:`, SIGTERM and SIGINT stop the run as the module
    docstring says. Only the main thread can receive signals: elsewhere (a test's thread) the guard does nothing.

    Args:
        backup: the run's backup callback (`callbacks.FallbackBackupAndRestore`: its `save_now(epoch)` writes it),
            written at a preemption; None (on a worker that is not the chief) writes nothing.
    """

    def __init__(self, backup: Any = None):
        super().__init__()
        self.backup = backup
        self._signal: int | None = None
        self._in_fit = False
        self._epoch = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self._signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # A second Ctrl-C: at once.
        self._signal = signum
        if not self._in_fit:
            raise self._preempted("outside training (building the run, or after its last epoch)", saved=False)
        logging.warning("%s: stopping after this step, with a backup to resume from.", signal.Signals(signum).name)

    def on_train_begin(self, logs=None):
        self._in_fit = True

    def on_train_end(self, logs=None):
        self._in_fit = False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._stop_if_signalled(f"at epoch {self._epoch + 1}, step {batch + 1}")

    def on_test_batch_end(self, batch, logs=None):
        self._stop_if_signalled(f"while validating epoch {self._epoch + 1}")

    def _stop_if_signalled(self, where: str) -> None:
        if self._signal is None:
            return
        self._in_fit = False  # A further signal, while the backup is written, stops at once.
        if self.backup is not None:
            self.backup.save_now(self._epoch)
        raise self._preempted(where, saved=self.backup is not None)

    def _preempted(self, where: str, saved: bool) -> Preempted:
        resume = (f"the backup holds its every step, and the same command resumes epoch {self._epoch + 1}" if saved
                  else "the same command resumes after the last finished epoch")
        return Preempted(f"stopped by {signal.Signals(self._signal).name} {where}: {resume}", self._signal)
