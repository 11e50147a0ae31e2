"""Keeps TensorFlow's C++ start-up and INFO noise out of the binaries' terminal; everything else passes through.

TensorFlow 2.21 writes lines from C++ that TF_CPP_MIN_LOG_LEVEL would hide only if it were set before TensorFlow
is imported (the level is read once, at the first C++ log line: the import's own oneDNN notice), and some it
writes before Abseil's logging is initialized, when no level applies at all (abseil/abseil-cpp pull request 1957,
open; tensorflow pull request 102212): the oneDNN and CPU-feature notices at import, the CUDA probe's "failed
call to cuInit" on a machine without a GPU, the XLA service's start-up lines.

`import_quietly` changes no process state: it only holds back those lines while TensorFlow is imported (file
descriptor 2 is restored afterwards), without setting environment variables or log levels. (Importing
`alexnet_tf` sets one default before that import, TF_ENABLE_ONEDNN_OPTS: onednn.py.) The
binaries and tools, which own their process, call `quiet_binary()` in `main`: it filters their stderr stream for
the rest of the run, line by line (`StderrFilter`), and sets TensorFlow's Python logger to WARNING.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import re
import sys
import tempfile
import threading
from typing import Iterator

NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
    "failed call to cuInit",
)
# A C++ INFO line of TensorFlow or XLA: "I0000 00:00:1796163756.806447   24605 service.cc:153] ...". absl's Python
# INFO lines have the same form but name a .py file: they are the project's own messages, and pass.
_CPP_INFO = re.compile(rb"^I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w./-]+\.(cc|h|cpp):\d+\]")
_CPP_PREFIX = re.compile(rb"^[IWEF]\d{0,4}( |$)")


def _is_noise(line: bytes) -> bool:
    return bool(_CPP_INFO.match(line)) or any(noise.encode() in line for noise in NOISE)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Drops the lines of NOISE written to stderr (by C++ or Python) inside the block."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().splitlines(keepends=True):
                if not any(noise.encode() in line for noise in NOISE):
                    sys.stderr.buffer.write(line)
            sys.stderr.flush()


def import_quietly(module: str = "tensorflow"):
    """`importlib.import_module(module)` with the import-time notices of NOISE held back; no other effect."""
    if module in sys.modules:
        return sys.modules[module]
    with filtered_stderr():
        return importlib.import_module(module)


class StderrFilter:
    """Passes file descriptor 2 through a pipe whose reader drops noise lines (`_is_noise`) as they come.

    Text without a newline yet (a progress bar redrawn with carriage returns) is passed on at once, unless it
    could be the start of a C++ log line, which is held until its end decides.
    """

    def __init__(self):
        self._saved = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._read = read
        self._thread = threading.Thread(target=self._pump, name="stderr-filter", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        pending = b""
        while True:
            chunk = os.read(self._read, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not _is_noise(line))
            if pending and not _CPP_PREFIX.match(pending):
                out, pending = out + pending, b""
            if out:
                os.write(self._saved, out)
        if pending and not _is_noise(pending):
            os.write(self._saved, pending)

    def close(self) -> None:
        """Restores file descriptor 2 and passes on what is still in the pipe."""
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # Closes the pipe's last write end: the reader sees the end.
        self._thread.join(timeout=5)
        os.close(self._read)


_active: StderrFilter | None = None


def quiet_binary() -> None:
    """For a binary's `main`: filters its stderr for the rest of the process and sets TensorFlow's Python logger
    to WARNING, unless TF_CPP_MIN_LOG_LEVEL=0 says the user wants TensorFlow's INFO lines."""
    global _active
    import tensorflow as tf

    if _active is not None or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    tf.get_logger().setLevel("WARNING")
    _active = StderrFilter()
    atexit.register(release)


def release() -> None:
    """Stops the filter of `quiet_binary`, passing on everything written so far (before an `os._exit`)."""
    global _active
    if _active is not None:
        _active.close()
        _active = None
