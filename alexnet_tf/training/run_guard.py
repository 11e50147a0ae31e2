"""What keeps MODEL_DIR to one run and one configuration: the run lock and the run record.

- `RunLock`: one run at a time in a MODEL_DIR (MODEL_DIR/lock.json);
- `RunRecord`: the run's configuration, recorded before anything can be resumed (MODEL_DIR/run.json), and
  compared on resume.
Each raises an `errors.TrainingError`; the binary prints its message and exits non-zero.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
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

    The lock names its holder (host, process id, start time); one held by a live process, or naming another host,
    is refused with one line naming it (delete the file if that run is known to be gone). A local MODEL_DIR is
    locked with `flock` on lock.json, which the kernel releases when the holder dies however it dies (kill -9, a
    crash): two runs started at the same moment cannot both hold it. On other file systems (gs://) tf.io.gfile has
    no lock: there the file itself is the lock, one left by a dead process of this host is taken over, and two runs
    started within the same moment could both pass.
    """

    def __init__(self, model_dir: str):
        self.path = files.join(model_dir, model_dir_lib.LOCK)
        self.model_dir = model_dir
        self._held = False
        self._local = "://" not in self.path

    def acquire(self) -> None:
        tf.io.gfile.makedirs(self.model_dir)
        holder = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        if self._local:
            self._acquire_local(holder)
        else:
            self._acquire_remote(holder)
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if not self._local:
            if tf.io.gfile.exists(self.path):
                tf.io.gfile.remove(self.path)
            return
        descriptor = _HELD.pop(self.path, None)
        if descriptor is not None:
            # Unlinked while still locked: a run that opened this file meanwhile sees it is no longer the lock.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(descriptor)

    def _acquire_local(self, holder: dict[str, Any]) -> None:
        if self.path in _HELD:
            return  # This process already holds it (a second run() in one process).
        while True:
            descriptor = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = _read_holder(descriptor)
                os.close(descriptor)
                raise self._in_use(other) from None
            try:  # Released (unlinked) by its holder between our open and our lock: not the lock any more.
                current = os.stat(self.path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(descriptor)
        other = _read_holder(descriptor)
        # Unlocked but naming a live process of this host (a version of this project that did not flock), or a
        # process of another host (whose lock, on a network file system, this host may not see): refused.
        if other and (other.get("host") != holder["host"] or (other.get("pid") != holder["pid"] and _is_alive(other))):
            os.close(descriptor)
            raise self._in_use(other)
        if other:
            logging.warning("Taking over %s from process %s, which is no longer running.", self.path, other.get("pid"))
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)
        _HELD[self.path] = descriptor

    def _acquire_remote(self, holder: dict[str, Any]) -> None:
        for _ in range(2):
            if not tf.io.gfile.exists(self.path):
                with tf.io.gfile.GFile(self.path, "w") as f:
                    f.write(json.dumps(holder))
                return
            other = files.read_json(self.path) or {}
            if other.get("host") == holder["host"] and other.get("pid") == holder["pid"]:
                return  # This process already holds it (a second run() in one process).
            if other and (other.get("host") != holder["host"] or _is_alive(other)):
                raise self._in_use(other)
            logging.warning("Taking over %s from process %s, which is no longer running.", self.path,
                            other.get("pid"))
            tf.io.gfile.remove(self.path)
        raise TrainingError(f"cannot take the lock {self.path}: another run took it at the same moment")

    def _in_use(self, other: Mapping[str, Any]) -> TrainingError:
        return TrainingError(
            f"{self.model_dir} is in use by another run (process {other.get('pid')} on {other.get('host')}, since "
            f"{other.get('started')}): wait for it, stop it, or give another --model_dir (delete {self.path} if that "
            "run is gone)")


# The file descriptors of the local locks this process holds, by path: closing one releases its flock.
_HELD: dict[str, int] = {}


def _read_holder(descriptor: int) -> dict[str, Any]:
    """The holder a lock file names, or {} for an empty or unreadable one."""
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _is_alive(holder: Mapping[str, Any]) -> bool:
    """Whether the holder's process still runs on this host (its pid names a live process)."""
    if not isinstance(holder.get("pid"), int) or holder["pid"] <= 0:
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunRecord:
    """Keeps a run of one configuration from resuming another's MODEL_DIR, and says what a resume changes.

    `variant` holds, by flag name, what a resumed run must keep: what shapes the model's and the optimizer's
    variables (the architecture, the dtype policy, --freeze_conv) and what gives the model's inputs their meaning
    (channel order, mean). `settings` holds what a resume may change (the data's folder, the optimizer's
    coefficients, the batch size, ...): each change is said in one line, naming the old and the new value.
    `check()`, before training, writes MODEL_DIR/run.json while MODEL_DIR holds nothing to resume (no backup, no
    checkpoint), so that a record exists before anything can be resumed; once it does, it refuses a variant that
    differs, naming every difference, and records the settings of the resuming command. Fields a record of an
    older version lacks are not compared (initialization, for instance, is no longer part of the variant).
    """

    def __init__(self, model_dir: str, variant: Mapping[str, Any], is_chief: bool = True,
                 settings: Mapping[str, Any] | None = None):
        self.path = files.join(model_dir, model_dir_lib.RUN_RECORD)
        self.model_dir, self.is_chief = model_dir, is_chief
        self.record = {"variant": _plain(variant), "settings": _plain(settings or {})}

    def check(self) -> dict[str, tuple[Any, Any]]:
        """Records the run, or compares it with the recorded one; raises TrainingError for another variant.

        Returns:
            The settings this command changes, {name: (recorded value, this command's value)}; {} for a new run.
        """
        resumable = any(tf.io.gfile.exists(files.join(self.model_dir, d))
                        for d in (model_dir_lib.BACKUP, model_dir_lib.CHECKPOINTS))
        recorded = files.read_json(self.path)
        if not resumable or recorded is None:
            if resumable:
                raise TrainingError(f"{self.model_dir} holds a run without a readable {model_dir_lib.RUN_RECORD} "
                                    "(written by an older alexnet_tf, or damaged): give a new --model_dir")
            if self.is_chief:
                files.write_json(self.path, self.record)
            return {}
        ours, theirs = self.record["variant"], recorded.get("variant", {})
        differences = [f"--{name}={_text(ours[name])} (it has {_text(theirs[name])})"
                       for name in sorted(set(ours) & set(theirs)) if ours[name] != theirs[name]]
        if differences:
            raise TrainingError(f"{self.model_dir} holds a run of another model variant: {'; '.join(differences)}. "
                                "Resume it with its own flags, or give a new --model_dir")
        previous = recorded.get("settings", {})
        changed = {name: (previous[name], value) for name, value in self.record["settings"].items()
                   if name in previous and previous[name] != value}
        for name, (old, new) in changed.items():
            logging.warning("--%s=%s: the resumed run uses it; the run's previous command had %s.", name, _text(new),
                            _text(old))
        if self.is_chief and changed:
            files.write_json(self.path, {"variant": {**theirs, **ours}, "settings": self.record["settings"]})
        return changed


def _plain(value: Any) -> Any:
    """`value` as JSON would give it back (tuples as lists), so a record compares equal to its reading."""
    return json.loads(json.dumps(value))


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "(unset)" if value is None else str(value)
