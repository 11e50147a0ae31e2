"""What stops a training run early, with one line saying why, before it overwrites anything it should keep.

- `StopOnNaN`: a diverged loss, or an epoch that trained on nothing;
- `ModelVariantRecord`: a MODEL_DIR that holds a run of another model variant;
- `corrupt_data_error`: a data file that TensorFlow found corrupt, named.
Each raises (or returns) a `TrainingError`; the training binary prints its message and exits non-zero.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf

MODEL_CONFIG_FILENAME = "model_config.json"


class TrainingError(Exception):
    """A run stopped by bad input or divergence; the message is one line for the user."""

    exit_code = 1  # The binary's exit status.


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


class ModelVariantRecord(keras.callbacks.Callback):
    """Keeps a run of one model variant from resuming another's MODEL_DIR.

    `variant` holds the flags that shape the model and its optimizer state (flag name -> value). With the
    run's first saved epoch, the chief records it in MODEL_DIR/model_config.json; `check` then refuses,
    naming every flag that differs, to resume that MODEL_DIR (its backup and checkpoints) with other values.
    Recorded at an epoch's end rather than at the start: a run that fails before saving anything leaves no
    record to refuse a corrected command.
    """

    def __init__(self, model_dir: str, variant: Mapping[str, Any], is_chief: bool = True):
        super().__init__()
        self.path = os.path.join(model_dir, MODEL_CONFIG_FILENAME)
        self.model_dir, self.variant, self.is_chief = model_dir, dict(variant), is_chief

    def check(self) -> None:
        """Raises TrainingError if MODEL_DIR holds a record of another variant."""
        if not tf.io.gfile.exists(self.path):
            return
        with tf.io.gfile.GFile(self.path) as f:
            recorded = json.load(f)
        differences = [f"--{name}={_flag_text(self.variant.get(name))} (it has {_flag_text(recorded.get(name))})"
                       for name in sorted(set(self.variant) | set(recorded))
                       if self.variant.get(name) != recorded.get(name)]
        if differences:
            raise TrainingError(f"{self.model_dir} holds a run of another model variant: {'; '.join(differences)}. "
                                "Resume it with its own flags, or give a new --model_dir")

    def on_epoch_end(self, epoch, logs=None):
        if self.is_chief and not tf.io.gfile.exists(self.path):
            # Atomically (temporary file, then rename): other workers may be reading it.
            with tf.io.gfile.GFile(self.path + ".tmp", "w") as f:
                json.dump(self.variant, f, indent=1, sort_keys=True)
            tf.io.gfile.rename(self.path + ".tmp", self.path, overwrite=True)


def _flag_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "(unset)" if value is None else str(value)


def corrupt_data_error(data_dir: str | None, error: tf.errors.OpError) -> TrainingError:
    """A TrainingError for a DataLossError while reading `data_dir`, naming its corrupt TFRecord files.

    TensorFlow's message gives only the offset of the bad record, so the files are read once more to find it
    (TFRecordDataset checks every record's CRC); this costs a pass over the data, but only after a failure.
    """
    corrupt = [path for path in sorted(glob.glob(os.path.join(data_dir or "", "*.tfrecord"))) if _is_corrupt(path)]
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
