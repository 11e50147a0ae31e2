"""The callbacks of a training run's `model.fit`, and the order that keeps MODEL_DIR whole (`make_callbacks`).

- `StopOnNaN`: a diverged loss, or an epoch that trained on nothing, stops the run before anything saves it;
- `Throughput`: training images per second of each epoch;
- `EpochCheckpoints`: a `.keras` checkpoint per epoch, the newest few kept;
- `FallbackBackupAndRestore`: Keras' backup, resumed from the previous one when the latest cannot be read;
and, from their own modules, the plateau schedule (`schedule.py`) and the TensorBoard callbacks (`tensorboard.py`,
`run_summaries.py`).
"""

from __future__ import annotations

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
from alexnet_tf.training.schedule import PlateauSchedule

PLATEAU_STATE = "plateau.json"  # The schedule's state, in MODEL_DIR/backup beside Keras' own.


def make_callbacks(config: TrainConfig, chief: bool, *, element_spec: Any = None,
                   validation: tf.data.Dataset | None = None, source: sources.Source | None = None
                   ) -> tuple[list[keras.callbacks.Callback], Throughput, PlateauSchedule]:
    """The callbacks of `model.fit`, in the order that keeps MODEL_DIR consistent after a kill at any point, with the
    throughput meter and the schedule among them (the run's results read both).

    For TensorBoard: `element_spec`, the training batches' spec (the train step's graph is traced with it; None: no
    graph); `validation`, the validation batches (the ReLU sparsity is measured on their first images); `source`,
    the data set of `config.data` (with `validation`: the fc7 neighbour agreement of the initial weights)."""
    backup_dir = files.join(config.model_dir, model_dir_lib.BACKUP)
    log_dir = files.join(config.model_dir, model_dir_lib.LOGS)
    throughput = Throughput(config.batch_size)
    schedule = config.schedule.build(state_path=files.join(backup_dir, PLATEAU_STATE), is_chief=chief)
    # First: a diverged epoch raises before any other callback saves it. The schedule's state and the epoch's
    # checkpoint go before the backup: a kill between them resumes at that epoch and writes both again.
    callbacks: list[keras.callbacks.Callback] = [StopOnNaN(), throughput, schedule]
    if chief:
        callbacks.append(EpochCheckpoints(files.join(config.model_dir, model_dir_lib.CHECKPOINTS),
                                          config.keep_checkpoints))
    # double_checkpoint: Keras writes the backup in place, so a kill during the write leaves a damaged file; the
    # previous epoch's backup is restored instead. Other workers restore the chief's backup and never write it:
    # a save frequency of sys.maxsize batches is never reached.
    callbacks.append(FallbackBackupAndRestore(backup_dir, save_freq="epoch" if chief else sys.maxsize,
                                              double_checkpoint=True, delete_checkpoint=False))
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
    return callbacks, throughput, schedule


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
                "after the previous epoch; resume with a lower --learning_rate")

    def on_epoch_end(self, epoch, logs=None):
        if self._batches == 0:
            raise TrainingError(f"epoch {epoch + 1} trained on no batch: no training image could be read "
                                "(see the warnings above)")
        bad = [v.path for v in self.model.trainable_variables if not np.isfinite(v.numpy()).all()]
        if bad:
            raise TrainingError(f"the weights are not finite after epoch {epoch + 1} ({', '.join(bad[:3])}): "
                                "training diverged, and they were not saved; resume with a lower --learning_rate")


class Throughput(keras.callbacks.Callback):
    """Logs training images per second of each epoch as `images_per_sec`."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.rates: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        rate = self._steps * self.batch_size / max(time.perf_counter() - self._start, 1e-9)
        self.rates.append(rate)
        if logs is not None:
            logs["images_per_sec"] = rate


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
    """Keras' BackupAndRestore that resumes from the previous backup whenever the latest cannot be read.

    Keras (3.15) falls back only when the latest weights raise OSError, and not at all for a damaged metadata
    file or when both weight files are damaged: those end in tracebacks. Here each (weights, metadata) pair,
    the latest then the previous (`.bkp`, kept by `double_checkpoint=True`), is tried whole; if none can be
    read, the run stops with one line naming the backup folder.
    """

    def on_train_begin(self, logs=None):
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
                    if self.model.optimizer is not None and not self.model.optimizer.built:
                        self.model.optimizer.build(self.model.trainable_variables)
                    self.model.load_weights(self._weights_path)
            except (OSError, tf.errors.OpError, ValueError, KeyError, TypeError) as error:
                logging.warning("The backup %s cannot be read (%s).", weights,
                                str(error).splitlines()[0] if str(error) else type(error).__name__)
                continue
            self.model._initial_epoch = epoch
            return
        if tried:
            raise TrainingError(f"no backup in {self.backup_dir} can be read (the latest and the previous are "
                                "damaged): delete that folder to start over, or give a new --model_dir")

    @staticmethod
    def _read_epoch(path: str) -> int:
        with tf.io.gfile.GFile(path) as f:
            epoch = json.loads(f.read())["epoch"]
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch {epoch!r} is not an epoch count")
        return epoch
