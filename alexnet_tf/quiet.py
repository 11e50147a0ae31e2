"""Keeps TensorFlow's start-up noise out of the terminal; everything else passes through.

TensorFlow 2.21 writes several lines from C++ before Abseil's logging is initialized, when
Abseil ignores the severity threshold and so TF_CPP_MIN_LOG_LEVEL (abseil/abseil-cpp pull
request 1957, open; tensorflow pull request 102212): the oneDNN and CPU-feature notices at
import and, on a machine without a GPU, the CUDA probe's "failed call to cuInit" when the
devices are first listed. `filtered_stderr` captures file descriptor 2 while TensorFlow does
those two things, then writes back every line that is not one of these known notices.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator

NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "To enable the following instructions:",
    "failed call to cuInit",
)


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
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not any(noise in line for noise in NOISE):
                    sys.stderr.write(line)
            sys.stderr.flush()


def import_tensorflow() -> None:
    """Imports TensorFlow and lists its devices (the CUDA probe) with the noise filtered.

    Also hides TensorFlow's own INFO lines (C++ and Python: dataset buffer sizes, XLA service
    start-up, SavedModel asset writes) unless TF_CPP_MIN_LOG_LEVEL is set; warnings and errors
    still show.
    """
    if "tensorflow" in sys.modules:
        return
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
        quiet_python_logs = True
    else:
        quiet_python_logs = False
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()
    if quiet_python_logs:
        tf.get_logger().setLevel("WARNING")
