"""Training on several machines: `tf.distribute.MultiWorkerMirroredStrategy` under Keras 3's `model.fit`.

Every worker runs the same command with its own TF_CONFIG (TensorFlow's convention): the cluster, a list of
"host:port" addresses per job, and this worker's place in it, e.g.
    {"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 1}}
Worker 0 (or the "chief" task, if the cluster has one) is the chief: it alone writes MODEL_DIR. Saving needs
no other worker (Keras saves layer and optimizer variables, which every worker holds in full), so the others
write only their final model, to `worker_dir`, as a check that every worker ends with the same weights.

What makes the strategy work as `model.fit` needs it:
- `strategy()` checks TF_CONFIG (`read_tf_config`) and bounds the waits that TensorFlow would otherwise make
  forever: for every worker to join, and for every collective operation, so that a worker which stops
  answering makes the others fail (`WorkerLost`, exit status 75) rather than hang;
- the strategy it returns reduces values the way Keras 3.15 asks it to (keras issue 20585);
- `lockstep_datasets` keeps the workers stepping through the same number of batches.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

import tensorflow as tf
from absl import logging
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.eager import context

from alexnet_tf import files
from alexnet_tf.errors import TrainingError, tf_error_line

TF_CONFIG = "TF_CONFIG"
# Jobs that train; TF_CONFIG's other task types ("ps", "evaluator") belong to other strategies.
TRAINING_JOBS = ("chief", "worker")
WORKERS_DIR = "workers"
# Long enough for workers started minutes apart by a scheduler, and for the slowest step of the slowest worker.
DEFAULT_TIMEOUT_SECONDS = 600.0


class ClusterError(TrainingError):
    """The cluster is misconfigured or a worker is unreachable; the message says which and how to fix it."""


class WorkerLost(ClusterError):
    """A worker stopped answering during training. Every worker must be started again with its command."""

    exit_code = os.EX_TEMPFAIL  # 75: a supervisor may restart the worker; training resumes from the backup.


# What a collective operation raises when a peer is gone: its connection closed, the coordination service
# saw its heartbeats stop, or the operation's timeout passed.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
               tf.errors.CancelledError)


def read_tf_config(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """TF_CONFIG as a dict, after checking everything MultiWorkerMirroredStrategy relies on.

    Raises ClusterError, naming the problem, if TF_CONFIG is unset, not JSON, or does not describe a cluster
    of "chief"/"worker" jobs of "host:port" addresses with this task among them.
    """
    text = environ.get(TF_CONFIG)
    if not text:
        raise ClusterError(f"--strategy=multi_worker reads the cluster from {TF_CONFIG}, which is not set "
                           '(e.g. {"cluster": {"worker": ["host0:port", "host1:port"]}, '
                           '"task": {"type": "worker", "index": 0}})')
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ClusterError(f"{TF_CONFIG} is not valid JSON: {error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) \
            or not isinstance(config.get("task"), dict):
        raise ClusterError(f'{TF_CONFIG} needs a "cluster" object and a "task" object')
    cluster, task = config["cluster"], config["task"]
    unknown = sorted(set(cluster) - set(TRAINING_JOBS))
    if unknown or not cluster:
        raise ClusterError(f'{TF_CONFIG}\'s cluster must list "chief" and/or "worker" tasks, not {unknown or "none"}')
    addresses = []
    for job, tasks in cluster.items():
        if not isinstance(tasks, list) or not tasks or not all(_is_address(a) for a in tasks):
            raise ClusterError(f'{TF_CONFIG}: cluster["{job}"] must be a list of "host:port" addresses, got {tasks!r}')
        addresses += tasks
    if len(cluster.get("chief", [])) > 1:
        raise ClusterError(f'{TF_CONFIG}: a cluster has at most one "chief", got {cluster["chief"]}')
    if len(set(addresses)) != len(addresses):
        raise ClusterError(f"{TF_CONFIG}: two tasks share an address: {addresses}")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster:
        raise ClusterError(f'{TF_CONFIG}: task type {task_type!r} is not a job of the cluster ({sorted(cluster)})')
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task_type]):
        raise ClusterError(f'{TF_CONFIG}: task index {index!r} is not in [0, {len(cluster[task_type])}) for '
                           f'"{task_type}"')
    return config


def _is_address(text: Any) -> bool:
    host, _, port = text.rpartition(":") if isinstance(text, str) else ("", "", "")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def strategy(timeout_seconds: float) -> tf.distribute.MultiWorkerMirroredStrategy:
    """The strategy TF_CONFIG describes, waiting at most `timeout_seconds` for peers, at start and at each step.

    Raises ClusterError for a bad TF_CONFIG, or when not every worker joined within the timeout.
    """
    config = read_tf_config()
    cluster = config["cluster"]
    leader = "chief" if "chief" in cluster else "worker"
    # TensorFlow's coordination service is how the workers find each other. MultiWorkerMirroredStrategy
    # configures it without a registration deadline, so a worker whose peer never starts waits forever;
    # configured here first, the same way as TensorFlow's ParameterServerStrategyV2 does (there is no public
    # API), it fails after timeout_seconds. Registration through a barrier is what makes the leader time out too.
    milliseconds = int(timeout_seconds * 1000)
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=f"/job:{leader}/replica:0/task:0",
        cluster_register_timeout_in_ms=milliseconds,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(tasks))
                          for job, tasks in cluster.items()])
    context.context().coordination_service.cluster_register_with_barrier = True
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_seconds)
    task = config["task"]
    logging.info("Joining the cluster %s as %s %d (waiting up to %g s for every worker).", cluster,
                 task["type"], task.get("index", 0), timeout_seconds)
    try:
        return _KerasMultiWorkerMirroredStrategy(communication_options=options)
    except (tf.errors.DeadlineExceededError, tf.errors.UnavailableError) as error:
        raise ClusterError(
            f"not every worker of {TF_CONFIG} joined within {timeout_seconds:g} s (--cluster_timeout): start "
            f"the same command on each of {sorted(a for tasks in cluster.values() for a in tasks)} with its own "
            f"TF_CONFIG, and check that they can reach each other ({tf_error_line(error).split('. ')[0]})") from None


class _KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose `reduce` accepts what Keras 3.15's TensorFlow trainer passes it.

    keras issue 20585 (open): `model.fit` under MultiWorkerMirroredStrategy fails with "ValueError: Attempt to
    convert a value (PerReplica:{...})", and once past that with "Invalid reduction dimension 0 for input with 0
    dimensions". keras/src/backend/tensorflow/trainer.py calls `strategy.reduce` in two ways that only
    MirroredStrategy supports:
    - `_maybe_symbolic_build` reduces a whole (images, labels) batch at once: MirroredStrategy's reduce maps
      over nested structures, the multi-worker one (CollectiveAllReduceExtended._reduce_to) does not;
    - `reduce_per_replica` reduces each scalar loss and metric with `axis=0`, which a rank-0 value does not
      have; what it means, the mean over replicas as on one machine, is `axis=None`.
    This override does both. It changes nothing else: any other value reaches the strategy's own reduce.
    """

    def reduce(self, reduce_op, value, axis):
        def reduce_one(one):
            scalar = self.experimental_local_results(one)[0].shape.rank == 0
            return super(_KerasMultiWorkerMirroredStrategy, self).reduce(reduce_op, one, None if scalar else axis)

        return tf.nest.map_structure(reduce_one, value)


def lockstep_datasets(train: tf.data.Dataset, validation: tf.data.Dataset | None, batch_size: int,
                      validation_examples: int | None = None) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
    """The datasets of global batches of `batch_size` as every worker must step through them, in lockstep.

    Each step gives every replica its share of a global batch, and the strategy gives a replica without
    data an empty batch: TensorFlow's CPU convolution returns an empty batch with the wrong number of
    channels, so the model fails on it. No replica may run dry, then:
    - the training set, sharded by file (tf.data's auto-sharding: each worker reads and decodes its own
      share), repeats; the caller tells `model.fit` how many steps an epoch has;
    - the validation set is sharded by batch (every worker evaluates the same number of batches, each
      example once) and its last, incomplete batch is left out: under multi_worker the validation error
      is over the complete batches (`alexnet_tf.evaluate` counts every example). With `validation_examples`
      the result has a known length, which spares Keras a warning when it runs out.
    """
    if validation is not None:
        by_batch = tf.data.Options()
        by_batch.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        if validation_examples is None:
            validation = validation.filter(lambda images, labels: tf.shape(images)[0] == batch_size)
        else:
            validation = validation.take(validation_examples // batch_size)
        validation = validation.with_options(by_batch)
    return train.repeat(), validation


def exit_if_joined(code: int) -> None:
    """Exits at once with `code` if this process joined a cluster; returns otherwise.

    After a failure, TensorFlow's coordination agent logs it again, at length, while the interpreter shuts
    it down, burying the one line that said what happened; exiting without that shutdown keeps it last.
    """
    if context.context().coordination_service is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def worker_lost(error: tf.errors.OpError, timeout_seconds: float) -> WorkerLost:
    """The WorkerLost for a PEER_ERRORS `error` raised by `model.fit`."""
    return WorkerLost(f"lost a worker of the cluster ({tf_error_line(error)}; --cluster_timeout={timeout_seconds:g} "
                      "s): start every worker again with its command; training resumes from the last epoch's backup")


def worker_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """Where a non-chief worker writes what the chief writes to `model_dir`: MODEL_DIR/workers/TYPE_INDEX."""
    resolver = strategy.cluster_resolver
    return files.join(model_dir, WORKERS_DIR, f"{resolver.task_type}_{resolver.task_id}")
