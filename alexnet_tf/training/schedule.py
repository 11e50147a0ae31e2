"""The paper's learning-rate schedule: divide by 10 when validation error plateaus.

Section 5 of the paper: "The learning rate was initialized at 0.01 and reduced three times prior to
termination. [...] divide the learning rate by 10 when the validation error rate stopped improving with
the current learning rate."

`keras.callbacks.ReduceLROnPlateau` does not fit: it cannot cap the number of reductions, it keeps its
state in memory only (a restart forgets how long the error has been flat and how many reductions were
done), and it cannot be told which worker may write. `PlateauSchedule` keeps its whole state in a small
JSON file, one entry per finished epoch, so that a run resumed by `keras.callbacks.BackupAndRestore`
continues with exactly the schedule it had.

Conventions: epochs are Keras' 0-based epoch indices; the monitored quantity is an error rate (a fraction
in [0, 1], lower is better); learning rates are the optimizer's own units.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf import errors, files

LR_REDUCTION_FACTOR = 0.1  # Section 5: "divide the learning rate by 10".
MAX_LR_REDUCTIONS = 3  # Section 5: "reduced three times prior to termination".
# Not given in the paper. Three reductions within its ~90 epochs leave room for a few flat epochs each.
DEFAULT_PATIENCE_EPOCHS = 5
# Not given in the paper: a tenth of a point of top-1 error, below which a change is noise.
DEFAULT_MIN_DELTA = 1e-3


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """The plateau schedule's settings (section 5: "divide the learning rate by 10 when the validation error
    rate stopped improving", "reduced three times"); `min_delta` is in units of the top-1 error, [0, 1]."""

    patience_epochs: int = DEFAULT_PATIENCE_EPOCHS
    min_delta: float = DEFAULT_MIN_DELTA
    max_reductions: int = MAX_LR_REDUCTIONS

    def __post_init__(self) -> None:
        if not (isinstance(self.patience_epochs, int) and self.patience_epochs >= 1):
            raise errors.ConfigError(f"the plateau patience must be a whole number of epochs >= 1, got "
                                     f"{self.patience_epochs!r}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise errors.ConfigError(f"the plateau min_delta must be >= 0, got {self.min_delta!r}")
        if not (isinstance(self.max_reductions, int) and self.max_reductions >= 0):
            raise errors.ConfigError(f"the number of learning-rate reductions must be >= 0, got "
                                     f"{self.max_reductions!r}")

    def build(self, state_path: str | None = None, is_chief: bool = True,
              learning_rate_override: float | None = None) -> "PlateauSchedule":
        """The schedule of these settings, keeping its state in `state_path` (written by the chief only)."""
        return PlateauSchedule(patience_epochs=self.patience_epochs, min_delta=self.min_delta,
                               max_reductions=self.max_reductions, state_path=state_path, is_chief=is_chief,
                               learning_rate_override=learning_rate_override)


_FRESH_EPOCH = -1  # The `epoch` of a state recorded before any epoch has finished.
_STATE_FORMAT_VERSION = 1
_PREVIOUS_SUFFIX = ".bkp"  # The second copy of the state file, named as Keras' BackupAndRestore names its own.


@dataclasses.dataclass
class PlateauState:
    """The schedule's whole state, as of the end of epoch `epoch`.

    Attributes:
      epoch: 0-based index of the last finished epoch this state includes; -1 before training.
      best: lowest monitored value seen so far, or None if none yet.
      wait: epochs since `best` last improved by more than `min_delta`.
      reductions: learning-rate reductions done so far.
      learning_rate: the learning rate to use from the next epoch on; None until read from the optimizer.
    """

    epoch: int = _FRESH_EPOCH
    best: float | None = None
    wait: int = 0
    reductions: int = 0
    learning_rate: float | None = None


class PlateauSchedule(keras.callbacks.Callback):
    """Multiplies the learning rate by `factor` when `monitor` stops improving, at most `max_reductions` times.

    At each epoch end the monitored value is read from `logs`: a value below `best - min_delta` is an
    improvement and resets the wait; otherwise the wait grows, and when it reaches `patience_epochs`
    (and fewer than `max_reductions` reductions were done) the learning rate is multiplied by `factor`
    and the wait starts again. `logs["learning_rate"]` is set to the rate used during the epoch, so
    TensorBoard and CSV loggers placed after this callback record it.

    Distribution: the decision depends only on the validation logs (which Keras has already aggregated
    across replicas and workers) and on the saved state, so every replica and worker takes the same one.
    Every worker can restore from `state_path`; only the chief (`is_chief=True`) writes it.

    Restarts: the state after each epoch is written atomically to `state_path` under that epoch's index,
    keeping earlier epochs' entries. On the first `on_epoch_begin(epoch)` of a `fit()`, the state of
    epoch `epoch - 1` is restored (and its learning rate assigned to the optimizer). Place this callback
    BEFORE `keras.callbacks.BackupAndRestore` in the callback list: then this file is always written
    before the backup, and a process killed between the two writes resumes (from the older backup) with
    the entry of exactly the epoch the backup holds.
    """

    def __init__(
        self,
        monitor: str = "val_top1_error",
        factor: float = LR_REDUCTION_FACTOR,
        patience_epochs: int = DEFAULT_PATIENCE_EPOCHS,
        min_delta: float = DEFAULT_MIN_DELTA,
        max_reductions: int = MAX_LR_REDUCTIONS,
        state_path: str | None = None,
        is_chief: bool = True,
        learning_rate_override: float | None = None,
    ):
        """Creates the callback.

        Args:
          monitor: key in the epoch-end `logs` of the error to watch (lower is better).
          factor: multiplier of the learning rate at each reduction, in (0, 1).
          patience_epochs: epochs without improvement before a reduction, >= 1.
          min_delta: an improvement must lower the best value by more than this (same units as `monitor`).
          max_reductions: reductions allowed in total, >= 0.
          state_path: JSON file holding the state of every finished epoch; None keeps it in memory only.
          is_chief: whether this worker writes `state_path`.
          learning_rate_override: for a resumed fit(), the learning rate to continue at instead of the restored
            state's (a resumed run given another --learning_rate, e.g. a lower one after it diverged).
        """
        super().__init__()
        ScheduleConfig(patience_epochs, min_delta, max_reductions)  # Validates them.
        if not 0.0 < factor < 1.0:
            raise errors.ConfigError(f"the learning-rate factor must be in (0, 1), got {factor}")
        self.monitor = monitor
        self.factor = factor
        self.patience_epochs = patience_epochs
        self.min_delta = min_delta
        self.max_reductions = max_reductions
        self.state_path = state_path
        self.is_chief = is_chief
        self.learning_rate_override = learning_rate_override
        self._state = PlateauState()
        self._history: dict[int, PlateauState] = {}
        self._needs_restore = True

    # State.

    def get_state(self) -> dict[str, Any]:
        """Returns the current state as a JSON-serialisable dict (the fields of `PlateauState`)."""
        return dataclasses.asdict(self._state)

    def set_state(self, state: dict[str, Any]) -> None:
        """Replaces the current state; its learning rate is assigned to the optimizer if there is a model.

        A `fit()` starting at epoch `state["epoch"] + 1` continues from this state instead of restoring one.
        """
        self._state = PlateauState(**state)
        if self._state.learning_rate is not None and self.model is not None:
            _lr_variable(self.model.optimizer).assign(self._state.learning_rate)

    # Keras hooks.

    def on_train_begin(self, logs=None):
        # The epoch a fit() starts at is only known at its first on_epoch_begin (BackupAndRestore sets it
        # in its own on_train_begin, which may run after this one).
        self._needs_restore = True

    def on_epoch_begin(self, epoch, logs=None):
        if not self._needs_restore:
            return
        self._needs_restore = False
        variable = _lr_variable(self.model.optimizer)
        if self._state.epoch != epoch - 1:
            self._state = self._restored_state(epoch)
        if self._state.learning_rate is None:
            self._state.learning_rate = _as_stored(float(variable.numpy()), variable.dtype)
        if self.learning_rate_override is not None and epoch > 0:
            logging.warning("The learning rate is %.3g from epoch %d on (the command's), where the resumed schedule "
                            "had %.3g.", self.learning_rate_override, epoch + 1, self._state.learning_rate)
            self._state.learning_rate = _as_stored(self.learning_rate_override, variable.dtype)
        variable.assign(self._state.learning_rate)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        state = self._state
        logs["learning_rate"] = state.learning_rate
        current = logs.get(self.monitor)
        if current is None:
            logging.warning(
                "PlateauSchedule: %r is not in the epoch logs (keys: %s); the learning rate is unchanged.",
                self.monitor,
                ", ".join(sorted(logs)),
            )
        else:
            self._update(epoch, float(current))
        state.epoch = epoch
        self._history = {e: s for e, s in self._history.items() if e < epoch}
        self._history[epoch] = dataclasses.replace(state)
        if self.is_chief and self.state_path:
            self._write()

    # Internals.

    def _update(self, epoch: int, current: float) -> None:
        state = self._state
        # NaN (a diverged evaluation) never counts as an improvement.
        if not math.isnan(current) and (state.best is None or current < state.best - self.min_delta):
            state.best = current
            state.wait = 0
            return
        state.wait += 1
        if state.wait < self.patience_epochs or state.reductions >= self.max_reductions:
            return
        variable = _lr_variable(self.model.optimizer)
        old_lr = state.learning_rate
        state.learning_rate = _as_stored(old_lr * self.factor, variable.dtype)
        state.reductions += 1
        state.wait = 0
        variable.assign(state.learning_rate)
        logging.info(
            "Epoch %d: %s has not improved on %.5g for %d epochs; learning rate %.3g -> %.3g "
            "(reduction %d of %d).",
            epoch + 1,
            self.monitor,
            state.best,
            self.patience_epochs,
            old_lr,
            state.learning_rate,
            state.reductions,
            self.max_reductions,
        )

    def _restored_state(self, epoch: int) -> PlateauState:
        """The state as of the end of epoch `epoch - 1`: fresh at epoch 0, else from `state_path`."""
        self._history = self._read() if epoch > 0 else {}
        if epoch == 0:
            return PlateauState()
        if epoch - 1 in self._history:
            logging.info("PlateauSchedule: restored the state as of epoch %d from %s.", epoch, self.state_path)
            return dataclasses.replace(self._history[epoch - 1])
        if self._history:
            raise errors.TrainingError(
                f"PlateauSchedule: {self.state_path} has no state for epoch {epoch} (it has epochs "
                f"{[e + 1 for e in sorted(self._history)]}, 1-based), so the run cannot resume with its "
                "learning-rate schedule. Was PlateauSchedule placed after BackupAndRestore in the callbacks?"
            )
        logging.warning(
            "PlateauSchedule: resuming at epoch %d without a saved state%s; the plateau schedule starts "
            "afresh from the optimizer's learning rate.",
            epoch + 1,
            f" ({self.state_path} does not exist)" if self.state_path else " (no state_path)",
        )
        return PlateauState()

    def _read(self) -> dict[int, PlateauState]:
        """Every epoch's state from `state_path`, or from its copy (`.bkp`) if that cannot be read."""
        paths = [p for p in (self.state_path, f"{self.state_path}{_PREVIOUS_SUFFIX}")
                 if p and tf.io.gfile.exists(p)]
        for path in paths:
            try:
                with tf.io.gfile.GFile(path, "r") as f:
                    content = json.loads(f.read())
                return {int(e): PlateauState(**s) for e, s in content["states"].items()}
            except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
                logging.warning("PlateauSchedule: %s cannot be read (%s: %s).", path, type(error).__name__, error)
        if paths:
            raise errors.TrainingError(f"the learning-rate schedule's state in {' and '.join(paths)} cannot be read: "
                                       "delete the backup folder to start over, or give a new --model_dir")
        return {}

    def _write(self) -> None:
        """Writes all epochs' states to `state_path` atomically (temporary file, then rename)."""
        content = {
            "version": _STATE_FORMAT_VERSION,
            "monitor": self.monitor,
            "states": {str(e): dataclasses.asdict(s) for e, s in sorted(self._history.items())},
        }
        # Two whole copies, each written atomically, the second after the first: whatever damages one file
        # (a truncation, a bad disk block), the other is as new as Keras' backup, which is written after both.
        for path in (self.state_path, f"{self.state_path}{_PREVIOUS_SUFFIX}"):
            files.write_json(path, content)


def _lr_variable(optimizer: keras.optimizers.Optimizer) -> keras.Variable:
    """The optimizer's learning-rate variable; refuses schedules and callables, which cannot be assigned."""
    learning_rate = optimizer.learning_rate
    if not isinstance(learning_rate, keras.Variable):
        raise errors.ConfigError(
            "PlateauSchedule needs an optimizer built with a float learning rate, whose variable it "
            f"can assign; this {type(optimizer).__name__} computes its learning rate (it was built with "
            "a LearningRateSchedule or a callable)."
        )
    return learning_rate


def _as_stored(value: float, dtype: str) -> float:
    """`value` rounded to the shortest decimal that the learning-rate variable's dtype stores identically.

    The variable is float32: without this, 0.01 read back would be 0.009999999776 and ten times smaller
    rates would drift (1.0000000000000001e-05); with it the state holds 0.01, 0.001, 0.0001, 1e-05.
    """
    stored = np.dtype(dtype).type(value)
    if not math.isfinite(stored):
        raise errors.TrainingError(f"the learning rate {value} is not finite")
    return float(np.format_float_scientific(stored, unique=True))
