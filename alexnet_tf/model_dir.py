"""MODEL_DIR: what a training run keeps there, read and written only through `tf.io.gfile`.

Users put MODEL_DIR on `gs://` (or any file system TensorFlow reaches: `ram://` in the tests), so nothing here
touches `os.path`, `open` or `glob`. The layout:

    checkpoints/epoch_NNN.keras   the model after epoch NNN (1-based), the newest --keep_checkpoints kept
    backup/                       Keras' BackupAndRestore state and plateau.json, the schedule's
    logs/{train,validation,conv1} TensorBoard runs
    export/                       the SavedModel
    conv1.png, figures/           the first layer's filters; Figure 4's predictions and neighbours
    results.json                  the final numbers
    run.json                      the run's recorded configuration (architecture and what shapes its state)

A checkpoint is written under a temporary name and renamed when whole, so a process killed during the write
never leaves a cut-off file that looks like a checkpoint.
"""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any

import keras
import tensorflow as tf

CHECKPOINTS = "checkpoints"
BACKUP = "backup"
LOGS = "logs"
EXPORT = "export"
FIGURES = "figures"
CONV1_PNG = "conv1.png"
RESULTS = "results.json"
CHECKPOINT_PATTERN = "epoch_{epoch:03d}.keras"
_CHECKPOINT_NAME = re.compile(r"epoch_(\d{3,})\.keras$")
# Temporary names are prefixes, not suffixes: Keras insists on a checkpoint's .keras suffix, and TensorFlow's
# ram:// file system says a file "a.json" exists while only "a.json.tmp" does (it matches names by prefix).
_PARTIAL_PREFIX = ".partial-"


def join(*parts: str) -> str:
    """Joins path parts with "/", which every TensorFlow file system (and Windows' Python) accepts."""
    return posixpath.join(*parts)


def checkpoints(directory: str) -> list[str]:
    """Whole epoch checkpoints in `directory`, oldest first (temporary files of an unfinished write excluded)."""
    if not tf.io.gfile.isdir(directory):
        return []
    names = [name for name in tf.io.gfile.listdir(directory) if _CHECKPOINT_NAME.fullmatch(name)]
    return [join(directory, name) for name in sorted(names, key=lambda n: int(_CHECKPOINT_NAME.match(n).group(1)))]


def partial_path(path: str) -> str:
    """The temporary name under which `path` is written before it is renamed to `path`: the same folder."""
    directory, name = posixpath.split(path)
    return join(directory, _PARTIAL_PREFIX + name)


def save_atomically(model: keras.Model, path: str) -> None:
    """`model.save(path)` through a temporary name in the same directory, renamed over `path` when whole."""
    tf.io.gfile.makedirs(posixpath.dirname(path))
    partial = partial_path(path)
    model.save(partial)
    tf.io.gfile.rename(partial, path, overwrite=True)


def write_json(path: str, value: Any) -> None:
    """Writes `value` as JSON through a temporary file renamed over `path` (readers never see half a file)."""
    tf.io.gfile.makedirs(posixpath.dirname(path) or ".")
    partial = partial_path(path)
    with tf.io.gfile.GFile(partial, "w") as f:
        f.write(json.dumps(value, indent=2, sort_keys=True))
    tf.io.gfile.rename(partial, path, overwrite=True)


def read_json(path: str) -> Any | None:
    """The JSON at `path`, or None if there is none or it cannot be parsed."""
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.loads(f.read())
    except (ValueError, UnicodeDecodeError):
        return None


class EpochCheckpoints(keras.callbacks.Callback):
    """After each epoch: the model to `directory/epoch_NNN.keras` (atomically), then all but the newest `keep`
    checkpoints deleted. Only the chief's callback list holds it."""

    def __init__(self, directory: str, keep: int):
        super().__init__()
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory, self.keep = directory, keep

    def on_epoch_end(self, epoch, logs=None):
        save_atomically(self.model, join(self.directory, CHECKPOINT_PATTERN.format(epoch=epoch + 1)))
        for path in checkpoints(self.directory)[: -self.keep]:
            tf.io.gfile.remove(path)
