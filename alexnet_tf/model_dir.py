"""MODEL_DIR: what a training run keeps there, read and written through `tf.io.gfile` (`alexnet_tf.files`).

Users put MODEL_DIR on `gs://` (or any file system TensorFlow reaches: `ram://` in the tests). The layout:

    checkpoints/epoch_NNN.keras   the model after epoch NNN (1-based), the newest --keep_checkpoints kept
    backup/                       Keras' BackupAndRestore state and plateau.json, the schedule's
    logs/{train,validation,...}   TensorBoard runs (alexnet_tf.training.tensorboard)
    export/                       the SavedModel
    conv1.png, figures/           the first layer's filters; Figure 4's predictions and neighbours
    results.json                  the final numbers
    config.json                   the whole resolved TrainConfig of the latest command
    run.json                      what a resume checks: the architecture and what shapes the run's state
    lock.json                     held while a run writes MODEL_DIR

A checkpoint is written under a temporary name and renamed when whole, so a process killed during the write
never leaves a cut-off file that looks like a checkpoint.
"""

from __future__ import annotations

import posixpath
import re

import keras
import tensorflow as tf

from alexnet_tf import files

CHECKPOINTS = "checkpoints"
BACKUP = "backup"
LOGS = "logs"
EXPORT = "export"
FIGURES = "figures"
CONV1_PNG = "conv1.png"
RESULTS = "results.json"
CONFIG = "config.json"
RUN_RECORD = "run.json"
LOCK = "lock.json"
CHECKPOINT_PATTERN = "epoch_{epoch:03d}.keras"
_CHECKPOINT_NAME = re.compile(r"epoch_(\d{3,})\.keras$")


def checkpoints(directory: str) -> list[str]:
    """Whole epoch checkpoints in `directory`, oldest first (temporary files of an unfinished write excluded)."""
    if not tf.io.gfile.isdir(directory):
        return []
    names = [name for name in tf.io.gfile.listdir(directory) if _CHECKPOINT_NAME.fullmatch(name)]
    return [files.join(directory, name)
            for name in sorted(names, key=lambda n: int(_CHECKPOINT_NAME.match(n).group(1)))]


def checkpoint_epoch(path: str) -> int:
    """The epoch (1-based) whose end an `epoch_NNN.keras` checkpoint holds."""
    return int(_CHECKPOINT_NAME.search(path).group(1))


def save_atomically(model: keras.Model, path: str) -> None:
    """`model.save(path)` through a temporary name in the same directory, renamed over `path` when whole."""
    tf.io.gfile.makedirs(posixpath.dirname(path))
    partial = files.partial_path(path)
    model.save(partial)
    tf.io.gfile.rename(partial, path, overwrite=True)
