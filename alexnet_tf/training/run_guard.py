"""What keeps MODEL_DIR to one run and one configuration: the run lock and the run record.

- `RunLock`: one run at a time in a MODEL_DIR (MODEL_DIR/lock.json);
- `RunRecord`: the run's configuration, recorded before anything can be resumed (MODEL_DIR/run.json), and
  compared on resume.
Each raises an `errors.TrainingError`; the binary prints its message and exits non-zero.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from typing import Any, Mapping

import tensorflow as tf
from absl import logging

from alexnet_tf import files, model_dir as model_dir_lib
from alexnet_tf.errors import TrainingError


class RunLock:
    """MODEL_DIR/lock.json, held by one run at a time: a second run on the same MODEL_DIR refuses to start.

    The lock names its holder (host, process id, start time). A lock left by a process that died (kill -9, a
    crash) on this same host is taken over; one held by a live process, or by another host, is refused with
    one line naming it (delete the file if that run is known to be gone). Local MODEL_DIRs are locked with an
    exclusive create; on other file systems (gs://) tf.io.gfile has none, so two runs started within the same
    moment could both pass.
    """

    def __init__(self, model_dir: str):
        self.path = files.join(model_dir, model_dir_lib.LOCK)
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
            other = files.read_json(self.path) or {}
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
        self.path = files.join(model_dir, model_dir_lib.RUN_RECORD)
        self.model_dir, self.is_chief = model_dir, is_chief
        self.record = {"variant": _plain(variant), "settings": _plain(settings or {})}

    def check(self) -> None:
        """Records the run, or compares it with the recorded one; raises TrainingError for another variant."""
        resumable = any(tf.io.gfile.exists(files.join(self.model_dir, d))
                        for d in (model_dir_lib.BACKUP, model_dir_lib.CHECKPOINTS))
        recorded = files.read_json(self.path)
        if not resumable or recorded is None:
            if resumable:
                raise TrainingError(f"{self.model_dir} holds a run without a readable {model_dir_lib.RUN_RECORD} "
                                    "(written by an older alexnet_tf, or damaged): give a new --model_dir")
            if self.is_chief:
                files.write_json(self.path, self.record)
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


def _plain(value: Any) -> Any:
    """`value` as JSON would give it back (tuples as lists), so a record compares equal to its reading."""
    return json.loads(json.dumps(value))


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "(unset)" if value is None else str(value)
