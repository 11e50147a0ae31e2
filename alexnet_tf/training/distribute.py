"""Picks the tf.distribute strategy and the tower devices for a training run.

- one_device: TensorFlow's default strategy; the first GPU if there is one, else the CPU.
- mirrored: data parallelism, `tf.distribute.MirroredStrategy` over the local GPUs (over the
  logical CPU devices where there is no GPU, so that tests can split the CPU in two).
- towers: the paper's model parallelism (section 3.2): the default strategy, with each tower of
  the two-tower network placed on its device of `tower_devices` (see `alexnet_tf.model.layers.OnDevice`).
- multi_worker: `tf.distribute.MultiWorkerMirroredStrategy`, configured by TF_CONFIG.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf
from absl import logging

from alexnet_tf.errors import ConfigError
from alexnet_tf.training import multi_worker

# The values of --strategy (module docstring).
STRATEGIES = ("one_device", "mirrored", "towers", "multi_worker")


def make_strategy(name: str, cluster_timeout: float = multi_worker.DEFAULT_TIMEOUT_SECONDS) -> tf.distribute.Strategy:
    """The strategy called `name` (one of STRATEGIES).

    `cluster_timeout`: for multi_worker, the seconds to wait for the workers of TF_CONFIG to join and for any
    collective operation to complete (see `multi_worker.strategy`).
    """
    if name == "multi_worker":  # First: listing devices would start TensorFlow's runtime without the cluster.
        return multi_worker.strategy(cluster_timeout)
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        logging.info("No GPU found: everything runs on the CPU.")
    if name in ("one_device", "towers"):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        # Without GPUs, over the logical CPU devices. Reduce on one device rather than with
        # collective ops: a second MirroredStrategy in one process otherwise fails in
        # CollectiveReduceV2 (seen when two tests each build one).
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
    raise ConfigError(f"unknown strategy {name!r}: one of {', '.join(STRATEGIES)}")


def tower_devices(requested: Sequence[str]) -> tuple[str, str]:
    """The requested tower devices, or the CPU for each that this machine does not have.

    Devices are compared by type and index alone: TensorFlow names local logical devices "/device:CPU:1",
    without the job, replica and task that a spec such as "/job:localhost/CPU:1" may carry.
    """
    def key(name: str) -> tuple[str, int]:
        spec = tf.DeviceSpec.from_string(name)
        return (spec.device_type or "").upper(), spec.device_index or 0

    available = {key(d.name) for d in tf.config.list_logical_devices()}
    placed = [device if key(device) in available else "/CPU:0" for device in requested]
    if placed != list(requested):
        logging.info("Tower devices %s not all present: towers placed on %s.", list(requested), placed)
    return placed[0], placed[1]


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints and logs: the chief, or worker 0 without one."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief and task_type == "worker" and task_id == 0
