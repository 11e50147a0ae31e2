"""The project's errors: what a user can cause or meet, each said in one line.

Library code raises these (never absl's `app.UsageError`, never a bare traceback for a user's mistake); every
binary and tool turns them into one line on stderr and a non-zero exit (`alexnet_tf.cli.run_main`). The message
names the file, flag or value at fault and, where there is one, the fix.
"""

from __future__ import annotations

import errno
import re


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


def write_error(where: str, error: Exception) -> TrainingError | None:
    """A TrainingError for a full disk (or quota), or a folder this process may not write (permissions, a
    read-only file system), met while writing `where`; None for any other error (`OSError` or TensorFlow's)."""
    text, number = str(error), getattr(error, "errno", None)
    if number in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text:
        return TrainingError(f"no space left while writing {where}: free some and run the same command again; "
                             "everything up to the last finished epoch is kept")
    if number in (errno.EACCES, errno.EPERM, errno.EROFS) or any(
            words in text for words in ("Permission denied", "Read-only file system", "PermissionDenied")):
        return TrainingError(f"{where} cannot be written ({tf_error_line(error)}): give a folder you may write, or "
                             "change its permissions")
    return None


def tf_error_line(error: Exception) -> str:
    """The line of a TensorFlow error (`tf.errors.OpError`) saying what went wrong; the rest of its message is a
    Python stack."""
    for line in str(getattr(error, "message", error)).splitlines():
        if line.strip() and not line[0].isspace() and not line.startswith(
                ("Graph execution error", "Detected at node", "<stack traces")):
            return re.sub(r"\{\{[^}]*\}\}\s*", "", line).strip()  # Without {{function_node ...}} tags.
    return type(error).__name__
