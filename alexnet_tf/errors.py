"""The project's errors: what a user can cause or meet, each said in one line.

Library code raises these (never absl's `app.UsageError`, never a bare traceback for a user's mistake); every
binary and tool turns them into one line on stderr and a non-zero exit (`alexnet_tf.cli.run_main`). The message
names the file, flag or value at fault and, where there is one, the fix.
"""

from __future__ import annotations


class AlexNetError(Exception):
    """Base class. `exit_code` is the status the binaries exit with."""

    exit_code = 1


class ConfigError(AlexNetError):
    """Settings that cannot work, alone or together (a flag's value, a strategy without its devices, ...)."""


class DataError(AlexNetError):
    """A data set or data file that is missing, empty, unreadable, corrupt or not what it claims to be."""


class ModelFileError(AlexNetError):
    """A checkpoint or weights file that is missing, unreadable, unsafe, or not a model of this project."""


class TrainingError(AlexNetError):
    """A run stopped by divergence, a lost worker, a busy MODEL_DIR or a full disk."""
