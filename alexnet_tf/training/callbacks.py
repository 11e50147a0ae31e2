"""The callbacks of a training run's `model.fit`, and the order that keeps MODEL_DIR whole (`make_callbacks`).

- `StopOnNaN`: a diverged loss, or an epoch that trained on nothing, stops the run before anything saves it;
- `Throughput`: training images per second of each epoch;
- `EpochCheckpoints`: a `.keras` checkpoint per epoch, the newest few kept;
- `FallbackBackupAndRestore`: Keras' backup, resumed from the previous one (or the newest checkpoint) when the
  latest cannot be read;
- `EpochHistory`: every finished epoch's logs, which results.json reads;
and, from their own modules, the plateau schedule (`schedule.py`), the preemption guard (`preemption.py`) and the
TensorBoard callbacks (`tensorboard.py`, `run_summaries.py`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf import files, model_dir as model_dir_lib
from alexnet_tf.data import sources
from alexnet_tf.errors import ConfigError, TrainingError
from alexnet_tf.training import run_summaries, tensorboard
from alexnet_tf.training.config import TrainConfig
from alexnet_tf.training.preemption import PreemptionGuard
from alexnet_tf.training.schedule import PlateauSchedule

PLATEAU_STATE = "plateau.json"  # The schedule's state, in MODEL_DIR/backup beside Keras' own.
HISTORY = "history.json"  # Every finished epoch's logs, in MODEL_DIR/backup.


@dataclasses.dataclass
class RunCallbacks:
    """The callbacks of a run's `model.fit` (`all`, in order), and those the trainer reads or enters itself."""

    all: list[keras.callbacks.Callback]
    history: EpochHistory
    schedule: PlateauSchedule
    preemption: PreemptionGuard


def make_callbacks(config: TrainConfig, chief: bool, learning_rate_override: float | None = None, *,
                   element_spec: Any = None, validation: tf.data.Dataset | None = None,
                   source: sources.Source | None = None) -> RunCallbacks:
    """The callbacks of `model.fit`, in the order that keeps MODEL_DIR consistent after a kill at any point.

    `learning_rate_override`: see `PlateauSchedule`. For TensorBoard: `element_spec`, the training batches' spec
    (the train step's graph is traced with it; None: no graph); `validation`, the validation batches (the ReLU
    sparsity is measured on their first images); `source`, the data set of `config.data` (with `validation`: the
    fc7 neighbour agreement of the initial weights)."""
    backup_dir = files.join(config.model_dir, model_dir_lib.BACKUP)
    checkpoint_dir = files.join(config.model_dir, model_dir_lib.CHECKPOINTS)
    log_dir = files.join(config.model_dir, model_dir_lib.LOGS)
    schedule = config.schedule.build(state_path=files.join(backup_dir, PLATEAU_STATE), is_chief=chief,
                                     learning_rate_override=learning_rate_override)
    history = EpochHistory(files.join(backup_dir, HISTORY), is_chief=chief)
    # double_checkpoint: Keras writes the backup in place, so a kill during the write leaves a damaged file; the
    # previous epoch's backup is restored instead. Other workers restore the chief's backup and never write it:
    # a save frequency of sys.maxsize batches is never reached.
    backup = FallbackBackupAndRestore(backup_dir, checkpoint_dir, save_freq="epoch" if chief else sys.maxsize,
                                      double_checkpoint=True, delete_checkpoint=False)
    preemption = PreemptionGuard(backup if chief else None)
    # First: a diverged epoch raises before any other callback saves it, then a preemption before the next step.
    # The schedule's state, the history and the epoch's checkpoint go before the backup: a kill between them
    # resumes at that epoch and writes them again. The history comes after the throughput meter and the schedule,
    # which add to the epoch's logs.
    callbacks: list[keras.callbacks.Callback] = [StopOnNaN(), preemption, Throughput(config.batch_size), schedule,
                                                 history]
    if chief:
        callbacks.append(EpochCheckpoints(checkpoint_dir, config.keep_checkpoints))
    callbacks.append(backup)
    if chief:
        # Not on a cluster: tracing the step once more on the chief alone would give its collective operations
        # other keys than the workers'.
        graph_spec = element_spec if config.strategy != "multi_worker" else None
        callbacks += [tensorboard.EpochTensorBoard(log_dir, graph_spec, update_freq="epoch"),
                      tensorboard.LearningRateSteps(log_dir),
                      tensorboard.Conv1Summaries(log_dir, towers=config.architecture.towers),
                      run_summaries.HParamsSummary(log_dir, config)]
        if config.histogram_freq:
            callbacks.append(tensorboard.WeightHistograms(log_dir, config.histogram_freq, validation))
        if config.profile_steps:
            callbacks.append(tensorboard.ProfileSteps(files.join(log_dir, run_summaries.TRAIN_RUN),
                                                      *config.profile_steps))
        if validation is not None and source is not None and config.data.data_dir:
            callbacks.append(run_summaries.Fc7AgreementAtStart(log_dir, config.data, source,
                                                               config.architecture.image_size))
    return RunCallbacks(callbacks, history, schedule, preemption)


class StopOnNaN(keras.callbacks.Callback):
    """Raises TrainingError at the first batch whose loss is not finite, before anything saves the model.

    Keras' TerminateOnNaN only sets `model.stop_training`, after which Keras still ends the epoch: every
    `on_epoch_end` callback (BackupAndRestore, ModelCheckpoint, the learning-rate schedule) would then save
    the diverged state over the last good one. Raising leaves them all as they were. Place this callback
    first in the list: at an epoch's end it also refuses weights that are not finite (a last step whose
    update overflowed still has a finite loss) and an epoch in which no batch was trained (a training set
    whose every image failed to decode).

    Steps are named as the user sees them: the 1-based epoch and batch of Keras' progress output, and the
    optimizer's step count (`optimizer.iterations`, which continues across a resumed run).
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._batches = epoch, 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingError(
                f"the training loss is {float(loss)} at epoch {self._epoch + 1}, step {batch + 1} (optimizer "
                f"step {int(self.model.optimizer.iterations.numpy())}): training diverged, and nothing was saved "
                f"after the previous epoch; {_restart(self._epoch)}")

    def on_epoch_end(self, epoch, logs=None):
        if self._batches == 0:
            raise TrainingError(f"epoch {epoch + 1} trained on no batch: no training image could be read "
                                "(see the warnings above)")
        bad = [v.path for v in self.model.trainable_variables if not np.isfinite(v.numpy()).all()]
        if bad:
            raise TrainingError(f"the weights are not finite after epoch {epoch + 1} ({', '.join(bad[:3])}): "
                                f"training diverged, and they were not saved; {_restart(epoch)}")
        # A validation loss that overflowed says the same of weights whose every value is still finite.
        diverged = {k: float(v) for k, v in (logs or {}).items() if k.startswith("val_") and not math.isfinite(v)}
        if diverged:
            raise TrainingError(f"the validation {', '.join(f'{k[4:]} is {v}' for k, v in diverged.items())} after "
                                f"epoch {epoch + 1}: training diverged, and it was not saved; {_restart(epoch)}")


def _restart(epoch: int) -> str:
    """How to go on after epoch `epoch` (0-based) diverged: the same command with a lower rate resumes before it."""
    if epoch == 0:
        return "run the command again with a lower --learning_rate"
    return (f"run the same command with a lower --learning_rate: it resumes after epoch {epoch} at that rate (or give "
            "a new --model_dir to start over)")


class EpochHistory(keras.callbacks.Callback):
    """Every finished epoch's logs (losses, errors, learning rate, images per second), kept in a JSON file.

    Keras' History holds the epochs of one `fit()` only: a run resumed after its last epoch (a failure in the
    figures or the export) trains none, and its results would be empty. This file holds them all: `records`
    maps each finished epoch (1-based) to its logs. Written by the chief, whole or not at all, before the backup:
    entries after the epoch a run resumes from are dropped (a resume from the previous backup trains them again).
    """

    def __init__(self, path: str, is_chief: bool = True):
        super().__init__()
        self.path, self.is_chief = path, is_chief
        self.records: dict[int, dict[str, float]] = {}

    def on_train_begin(self, logs=None):
        saved = files.read_json(self.path) or {}
        self.records = {int(epoch): values for epoch, values in saved.get("epochs", {}).items()}

    def on_epoch_begin(self, epoch, logs=None):
        # The epoch a fit() starts at is known here (BackupAndRestore sets it in its own on_train_begin).
        self.records = {e: values for e, values in self.records.items() if e <= epoch}

    def on_epoch_end(self, epoch, logs=None):
        self.records[epoch + 1] = {k: float(v) for k, v in (logs or {}).items() if _is_number(v)}
        if self.is_chief:
            files.write_json(self.path, {"epochs": {str(e): v for e, v in sorted(self.records.items())}})


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


class Throughput(keras.callbacks.Callback):
    """Logs training images per second of each epoch as `images_per_sec`."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["images_per_sec"] = self._steps * self.batch_size / max(time.perf_counter() - self._start, 1e-9)


class EpochCheckpoints(keras.callbacks.Callback):
    """After each epoch: the model to `directory/epoch_NNN.keras` (atomically), then all but the newest `keep`
    checkpoints deleted. Only the chief's callback list holds it."""

    def __init__(self, directory: str, keep: int):
        super().__init__()
        if keep < 1:
            raise ConfigError(f"keep must be >= 1, got {keep}")
        self.directory, self.keep = directory, keep

    def on_epoch_end(self, epoch, logs=None):
        model_dir_lib.save_atomically(
            self.model, files.join(self.directory, model_dir_lib.CHECKPOINT_PATTERN.format(epoch=epoch + 1)))
        for path in model_dir_lib.checkpoints(self.directory)[: -self.keep]:
            tf.io.gfile.remove(path)


class FallbackBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore that resumes from the previous backup, then from the newest epoch checkpoint,
    whenever the latest backup cannot be read.

    Keras (3.15) falls back only when the latest weights raise OSError, and not at all for a damaged metadata
    file or when both weight files are damaged: those end in tracebacks. Here each (weights, metadata) pair,
    the latest then the previous (`.bkp`, kept by `double_checkpoint=True`), is tried whole; then the newest
    readable `epoch_NNN.keras` of `checkpoint_dir` (it holds the optimizer's state too, and is written before the
    backup: a process killed while writing the first backup leaves a whole epoch_001.keras). If none can be read,
    the run stops with one line naming the backup folder. `save_now(epoch)` writes the backup in the middle of an
    epoch (`preemption.PreemptionGuard`).
    """

    def __init__(self, backup_dir: str, checkpoint_dir: str | None = None, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.checkpoint_dir = checkpoint_dir

    def on_train_begin(self, logs=None):
        tried = self._restore_backup()
        if tried is None:
            return
        for checkpoint in reversed(model_dir_lib.checkpoints(self.checkpoint_dir) if self.checkpoint_dir else []):
            try:
                self._build_optimizer()
                self.model.load_weights(checkpoint)  # A .keras file: the optimizer's state as well.
            except (OSError, tf.errors.OpError, ValueError, KeyError, TypeError) as error:
                logging.warning("The checkpoint %s cannot be read (%s).", checkpoint, _first_line(error))
                continue
            epoch = model_dir_lib.checkpoint_epoch(checkpoint)
            logging.warning("Resuming after epoch %d from %s: %s.", epoch, checkpoint,
                            f"no backup in {self.backup_dir} can be read" if tried else "there is no backup")
            self.model._initial_epoch = epoch
            return
        if tried:
            raise TrainingError(f"no backup in {self.backup_dir} can be read (the latest and the previous are "
                                "damaged), nor any epoch checkpoint: delete that folder to start over, or give a new "
                                "--model_dir")

    def save_now(self, epoch: int) -> None:
        """Writes the backup now, within epoch `epoch` (0-based): a resume runs that epoch from its start."""
        self._current_epoch = epoch
        self._save_model()

    def _restore_backup(self) -> list[str] | None:
        """Restores the latest readable backup; None if one was, else the backups tried ([] when there is none)."""
        latest = (self._weights_path, self._training_metadata_path)
        previous = (self._prev_weights_path, self._prev_training_metadata_path)
        tried = []
        for weights, metadata in (latest, previous):
            if not any(tf.io.gfile.exists(p) for p in (weights, metadata)):
                continue
            tried.append(weights)
            if (weights, metadata) == previous:
                # Keras loads weights only from a name ending in .weights.h5: the previous pair replaces the
                # damaged latest one (which the next save would otherwise copy over it).
                for source, target in zip(previous, latest):
                    if tf.io.gfile.exists(source):
                        tf.io.gfile.copy(source, target, overwrite=True)
                    elif tf.io.gfile.exists(target):
                        tf.io.gfile.remove(target)
            try:
                epoch = self._read_epoch(self._training_metadata_path)
                if tf.io.gfile.exists(self._weights_path):
                    self._build_optimizer()
                    self.model.load_weights(self._weights_path)
            except (OSError, tf.errors.OpError, ValueError, KeyError, TypeError) as error:
                logging.warning("The backup %s cannot be read (%s).", weights, _first_line(error))
                continue
            self.model._initial_epoch = epoch
            return None
        return tried

    def _build_optimizer(self) -> None:
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)

    @staticmethod
    def _read_epoch(path: str) -> int:
        with tf.io.gfile.GFile(path) as f:
            epoch = json.loads(f.read())["epoch"]
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch {epoch!r} is not an epoch count")
        return epoch


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
