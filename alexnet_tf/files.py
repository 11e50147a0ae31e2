"""Paths and whole-or-nothing writes on every file system TensorFlow reaches, through `tf.io.gfile` only.

Users put MODEL_DIR and their data on `gs://` (the tests on `ram://`), so nothing here touches `os.path`, `open` or
`glob`. Every write goes to a temporary name in the same folder (`partial_path`) and is renamed over its target
when whole: a process killed during the write never leaves a cut-off file under the real name.
"""

from __future__ import annotations

import io
import json
import posixpath
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image

# The first bytes of a zip archive: a .keras checkpoint, an .npz file.
ZIP_MAGIC = b"PK\x03\x04"
# Temporary names are prefixes, not suffixes: Keras insists on a checkpoint's .keras suffix, and TensorFlow's
# ram:// file system says a file "a.json" exists while only "a.json.tmp" does (it matches names by prefix).
PARTIAL_PREFIX = ".partial-"


def join(*parts: str) -> str:
    """Joins path parts with "/", which every TensorFlow file system (local, gs://, ram://) accepts."""
    return posixpath.join(*parts)


def partial_path(path: str) -> str:
    """The temporary name under which `path` is written before it is renamed to `path`: the same folder."""
    directory, name = posixpath.split(path)
    return join(directory, PARTIAL_PREFIX + name)


def write_bytes(path: str, data: bytes) -> str:
    """Writes `data` to `path` whole or not at all (a temporary name, then a rename); returns `path`."""
    directory = posixpath.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    partial = partial_path(path)
    with tf.io.gfile.GFile(partial, "wb") as f:
        f.write(data)
    tf.io.gfile.rename(partial, path, overwrite=True)
    return path


def write_text(path: str, text: str) -> str:
    """`write_bytes` of `text` in UTF-8."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str, value: Any) -> str:
    """`value` as indented JSON with sorted keys, written whole or not at all; returns `path`."""
    return write_text(path, json.dumps(value, indent=2, sort_keys=True))


def read_json(path: str) -> Any | None:
    """The JSON at `path`, or None if there is none or it cannot be parsed."""
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return json.loads(f.read())
    except (ValueError, UnicodeDecodeError):
        return None


def check_writable(directory: str) -> None:
    """Makes `directory` and writes and removes a file in it, raising what writing there meets (OSError,
    tf.errors.OpError): for a program that computes for long before it writes, a failure before the work."""
    tf.io.gfile.makedirs(directory)
    probe = join(directory, PARTIAL_PREFIX + "probe")
    with tf.io.gfile.GFile(probe, "wb") as f:
        f.write(b"")
    tf.io.gfile.remove(probe)


def write_png(image: np.ndarray, path: str) -> str:
    """An RGB (or grey) uint8 image [H, W, 3] as a PNG at `path`, written whole or not at all; returns `path`."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
    return write_bytes(path, buffer.getvalue())
