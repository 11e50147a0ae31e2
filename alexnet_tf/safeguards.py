"""What keeps a training run from losing or mixing up what MODEL_DIR holds, each failure said in one line.

- `RunLock`: one run at a time in a MODEL_DIR;
- `RunRecord`: the run's configuration, recorded before anything can be resumed, and compared on resume;
- `FallbackBackupAndRestore`: resumes from the previous backup when the latest cannot be read;
- `StopOnNaN`: a diverged loss, or an epoch that trained on nothing;
- `corrupt_data_error`, `disk_error`: a corrupt data file, a full disk, named.
Each raises (or returns) an `errors.TrainingError`; the binary prints its message and exits non-zero.
"""

from __future__ import annotations

import datetime
import errno
import json
import math
import os
import re
import socket
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf import model_dir as model_dir_lib
from alexnet_tf.errors import TrainingError

RUN_RECORD = "run.json"
LOCK = "lock.json"
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


class RunLock:
    """MODEL_DIR/lock.json, held by one run at a time: a second run on the same MODEL_DIR refuses to start.

    The lock names its holder (host, process id, start time). A lock left by a process that died (kill -9, a
    crash) on this same host is taken over; one held by a live process, or by another host, is refused with
    one line naming it (delete the file if that run is known to be gone). Local MODEL_DIRs are locked with an
    exclusive create; on other file systems (gs://) tf.io.gfile has none, so two runs started within the same
    moment could both pass.
    """

    def __init__(self, model_dir: str):
        self.path = model_dir_lib.join(model_dir, LOCK)
        self.model_dir = model_dir
        self._held = False

    def acquire(self) -> None:
        tf.io.gfile.makedirs(self.model_dir)
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(2):
            if self._create(json.dumps(holder)):
                self._held = True
                return
            other = model_dir_lib.read_json(self.path) or {}
            if other.get("host") == holder["host"] and other.get("pid") == holder["pid"]:
                self._held = True  # This process already holds it (a second run() in one process).
                return
            if not self._is_stale(other):
                raise TrainingError(
                    f"{self.model_dir} is in use by another run (process {other.get('pid')} on "
                    f"{other.get('host')}, since {other.get('started')}): wait for it, stop it, or give another "
                    f"--model_dir (delete {self.path} if that run is gone)")
            logging.warning("Taking over %s from process %s, which is no longer running.", self.path,
                            other.get("pid"))
            tf.io.gfile.remove(self.path)
        raise TrainingError(f"cannot take the lock {self.path}: another run took it at the same moment")

    def release(self) -> None:
        if self._held and tf.io.gfile.exists(self.path):
            tf.io.gfile.remove(self.path)
        self._held = False

    def _create(self, text: str) -> bool:
        """Writes the lock file unless it exists; False if it did."""
        if "://" not in self.path:
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "w") as f:
                f.write(text)
            return True
        if tf.io.gfile.exists(self.path):
            return False
        with tf.io.gfile.GFile(self.path, "w") as f:
            f.write(text)
        return True

    @staticmethod
    def _is_stale(holder: Mapping[str, Any]) -> bool:
        """Whether the holder was a process of this host that no longer runs (an unreadable lock is stale)."""
        if not holder:
            return True
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class RunRecord:
    """Keeps a run of one configuration from resuming another's MODEL_DIR, and says what a resume ignores.

    `variant` holds what shapes the model's and the optimizer's variables, by flag name: the architecture (the
    model's own Keras config) and the settings that change its state; `settings` what a resume keeps from the first run
    although the command may say otherwise (the initial learning rate: the schedule's saved state wins).
    `check()`, before training, writes MODEL_DIR/run.json while MODEL_DIR holds nothing to resume (no backup, no
    checkpoint), so that a record exists before anything can be resumed; once it does, it refuses a variant that
    differs, naming every difference, and logs one line for each ignored setting.
    """

    def __init__(self, model_dir: str, variant: Mapping[str, Any], is_chief: bool = True,
                 settings: Mapping[str, Any] | None = None):
        self.path = model_dir_lib.join(model_dir, RUN_RECORD)
        self.model_dir, self.is_chief = model_dir, is_chief
        self.record = {"variant": _plain(variant), "settings": _plain(settings or {})}

    def check(self) -> None:
        """Records the run, or compares it with the recorded one; raises TrainingError for another variant."""
        resumable = any(tf.io.gfile.exists(model_dir_lib.join(self.model_dir, d))
                        for d in (model_dir_lib.BACKUP, model_dir_lib.CHECKPOINTS))
        recorded = model_dir_lib.read_json(self.path)
        if not resumable or recorded is None:
            if resumable:
                raise TrainingError(f"{self.model_dir} holds a run without a readable {RUN_RECORD} (written by an "
                                    "older alexnet_tf, or damaged): give a new --model_dir")
            if self.is_chief:
                model_dir_lib.write_json(self.path, self.record)
            return
        ours, theirs = self.record["variant"], recorded.get("variant", {})
        differences = [f"--{name}={_text(ours.get(name))} (it has {_text(theirs.get(name))})"
                       for name in sorted(set(ours) | set(theirs)) if ours.get(name) != theirs.get(name)]
        if differences:
            raise TrainingError(f"{self.model_dir} holds a run of another model variant: {'; '.join(differences)}. "
                                "Resume it with its own flags, or give a new --model_dir")
        for name, value in self.record["settings"].items():
            first = recorded.get("settings", {}).get(name)
            if first is not None and first != value:
                logging.warning("--%s=%s is ignored: this run resumes with its saved schedule, begun with %s=%s.",
                                name, _text(value), name, _text(first))


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


def disk_error(model_dir: str, error: Exception) -> TrainingError | None:
    """A TrainingError for a full disk (or quota) met while writing MODEL_DIR; None for any other error."""
    text = str(error)
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text:
        return TrainingError(f"no space left while writing {model_dir}: free some and run the same command again; "
                             "everything up to the last finished epoch is kept")
    return None


def _plain(value: Any) -> Any:
    """`value` as JSON would give it back (tuples as lists), so a record compares equal to its reading."""
    return json.loads(json.dumps(value))


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "(unset)" if value is None else str(value)

def corrupt_data_error(data_dir: str | None, error: tf.errors.OpError) -> TrainingError:
    """A TrainingError for a DataLossError while reading `data_dir`, naming its corrupt TFRecord files.

    TensorFlow's message gives only the offset of the bad record, so the files are read once more to find it
    (TFRecordDataset checks every record's CRC); this costs a pass over the data, but only after a failure.
    """
    shards = sorted(tf.io.gfile.glob(model_dir_lib.join(data_dir, "*.tfrecord"))) if data_dir else []
    corrupt = [path for path in shards if _is_corrupt(path)]
    return TrainingError(f"unreadable data ({tf_error_line(error)}) in {', '.join(corrupt) or data_dir}: prepare "
                         "the data set again (python tools/prepare_imagenet.py)")


def _is_corrupt(path: str) -> bool:
    try:
        for _ in tf.data.TFRecordDataset(path):
            pass
    except tf.errors.DataLossError:
        return True
    return False


def tf_error_line(error: tf.errors.OpError) -> str:
    """The line of a TensorFlow error saying what went wrong; the rest of its message is a Python stack."""
    for line in str(error.message).splitlines():
        if line.strip() and not line[0].isspace() and not line.startswith(
                ("Graph execution error", "Detected at node", "<stack traces")):
            return re.sub(r"\{\{[^}]*\}\}\s*", "", line).strip()  # Without {{function_node ...}} tags.
    return type(error).__name__
