"""Multi-worker training: TF_CONFIG checks in-process, and clusters of two local worker processes."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from alexnet_tf.training import multi_worker
from tests import tiny_data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A narrow network that learns the tiny data set within two epochs (unit-variance inputs, He init).
TINY = [*tiny_data.TINY_FLAGS, "--input_scale=0.015625", "--init=he"]
WORKER_TIMEOUT = 300  # Seconds; a worker normally finishes in well under a minute.


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(cluster, index):
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def start_worker(cluster, index, log_path, *args):
    """`python -m alexnet_tf.train ARGS --strategy=multi_worker` as worker `index`, its output in `log_path`."""
    env = dict(os.environ, TF_CONFIG=tf_config(cluster, index))
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "alexnet_tf.train", *TINY, "--strategy=multi_worker", *args],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def start_cluster(tmp_path, name, *args):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    logs = [tmp_path / f"{name}_worker{i}.log" for i in range(2)]
    return cluster, [start_worker(cluster, i, logs[i], *args) for i in range(2)], logs


def finish(processes, logs):
    codes = [p.wait(timeout=WORKER_TIMEOUT) for p in processes]
    return codes, [log.read_text() for log in logs]


def epoch_losses(output):
    """The training loss of each epoch, from Keras' verbose=2 lines."""
    return [float(loss) for loss in re.findall(r"step - loss: ([0-9.]+)", output)]


def load_weights(path):
    return keras.models.load_model(path, compile=False).get_weights()


def assert_same_weights(chief_checkpoint, worker_model):
    chief, worker = load_weights(chief_checkpoint), load_weights(worker_model)
    assert len(chief) == len(worker) == 26
    for a, b in zip(chief, worker):
        np.testing.assert_array_equal(a, b)


# TF_CONFIG checks, in-process.

CLUSTER = {"worker": ["host0:2222", "host1:2222"]}


@pytest.mark.parametrize("text, message", [
    (None, "TF_CONFIG, which is not set"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('["a list"]', 'needs a "cluster" object and a "task" object'),
    (json.dumps({"cluster": {"ps": ["h:1"]}, "task": {"type": "ps", "index": 0}}), "not ['ps']"),
    (json.dumps({"cluster": {"worker": ["host0"]}, "task": {"type": "worker", "index": 0}}), '"host:port" addresses'),
    (json.dumps({"cluster": {"worker": "host0:1"}, "task": {"type": "worker", "index": 0}}), '"host:port" addresses'),
    (json.dumps({"cluster": {"worker": ["h:1", "h:1"]}, "task": {"type": "worker", "index": 0}}), "share an address"),
    (json.dumps({"cluster": {"chief": ["h:1", "h:2"]}, "task": {"type": "chief", "index": 0}}), "at most one"),
    (json.dumps({"cluster": CLUSTER, "task": {"type": "chief", "index": 0}}), "task type 'chief' is not a job"),
    (json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": 2}}), "task index 2 is not in [0, 2)"),
    (json.dumps({"cluster": CLUSTER, "task": {"type": "worker", "index": "1"}}), "task index '1'"),
])
def test_a_bad_tf_config_is_named(text, message):
    with pytest.raises(multi_worker.ClusterError, match=re.escape(message)):
        multi_worker.read_tf_config({} if text is None else {"TF_CONFIG": text})


def test_a_good_tf_config_is_returned_as_is():
    config = {"cluster": {"chief": ["h:1"], "worker": ["h:2", "h:3"]}, "task": {"type": "worker", "index": 1}}
    assert multi_worker.read_tf_config({"TF_CONFIG": json.dumps(config)}) == config


@pytest.mark.slow
def test_malformed_tf_config_gives_one_line_and_exits_before_training(tmp_path):
    env = dict(os.environ, TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}')
    process = subprocess.run([sys.executable, "-m", "alexnet_tf.train", *TINY, "--strategy=multi_worker",
                              f"--data_dir={tmp_path}", f"--model_dir={tmp_path / 'model'}"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT)
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert process.stderr.strip().splitlines()[-1] == (
        'train: error: TF_CONFIG: task index 1 is not in [0, 1) for "worker"')
    assert not (tmp_path / "model").exists()


# Clusters of two worker processes on this machine.

@pytest.mark.slow
def test_two_workers_train_in_lockstep_to_identical_weights(data_dir, tmp_path):
    model_dir = tmp_path / "model"
    _, processes, logs = start_cluster(tmp_path, "run", f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                                       "--epochs=2", "--cluster_timeout=120")
    codes, outputs = finish(processes, logs)
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    # Both print the loss reduced over the whole cluster, and it goes down.
    losses = [epoch_losses(output) for output in outputs]
    assert losses[0] == losses[1] and len(losses[0]) == 2 and losses[0][1] < losses[0][0], losses
    # The chief wrote MODEL_DIR; the other worker only its final model, which is the chief's.
    results = json.loads((model_dir / "results.json").read_text())
    assert results["epochs"] == 2 and results["checkpoint"] == str(model_dir / "checkpoints" / "epoch_002.keras")
    assert sorted(os.listdir(model_dir / "workers")) == ["worker_1"]
    assert os.listdir(model_dir / "workers" / "worker_1") == ["model.keras"]
    assert_same_weights(results["checkpoint"], model_dir / "workers" / "worker_1" / "model.keras")


@pytest.mark.slow
def test_a_killed_worker_and_the_cluster_resume_from_the_last_backup(data_dir, tmp_path):
    """SIGKILL the chief during epoch 2 of 4: the other worker stops with exit status 75 (the chief is gone),
    both are started again with their commands and finish epochs 2 to 4 with the schedule they had."""
    model_dir = tmp_path / "model"
    args = [f"--data_dir={data_dir}", f"--model_dir={model_dir}", "--epochs=4", "--steps_per_epoch=20",
            "--lr_patience_epochs=1", "--lr_min_delta=0.5", "--cluster_timeout=120"]
    cluster, processes, logs = start_cluster(tmp_path, "first", *args)
    metadata = model_dir / "backup" / "training_metadata.json"
    deadline = time.time() + WORKER_TIMEOUT
    while time.time() < deadline and processes[0].poll() is None:
        if metadata.exists() and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= 1:
            break
        time.sleep(0.1)
    processes[0].send_signal(signal.SIGKILL)
    codes, outputs = finish(processes, logs)
    assert codes == [-signal.SIGKILL, multi_worker.WorkerLost.exit_code], outputs[1][-3000:]
    assert outputs[1].strip().splitlines()[-1].startswith("train: error: lost a worker of the cluster (")
    resumed_epoch = json.loads(metadata.read_text())["epoch"] + 1  # 1-based, as Keras prints it.
    assert resumed_epoch == 2  # Killed during the second of 20-step epochs.

    logs = [tmp_path / f"again_worker{i}.log" for i in range(2)]
    codes, outputs = finish([start_worker(cluster, i, logs[i], *args) for i in range(2)], logs)
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    for output in outputs:
        assert re.findall(r"Epoch (\d)/4", output) == ["2", "3", "4"]
    results = json.loads((model_dir / "results.json").read_text())
    assert results["epochs"] == 4 and results["checkpoint"].endswith("epoch_004.keras")
    states = json.loads((model_dir / "backup" / "plateau.json").read_text())["states"]
    # A patience of one epoch and an improvement threshold of 0.5: every epoch after the first is a
    # plateau, so three reductions in all, whichever run did which epoch.
    assert [states[e]["reductions"] for e in "0123"] == [0, 1, 2, 3]
    assert_same_weights(results["checkpoint"], model_dir / "workers" / "worker_1" / "model.keras")


@pytest.mark.slow
def test_an_unreachable_peer_is_a_timeout_with_one_line(data_dir, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}  # Worker 1 never starts.
    log = tmp_path / "worker0.log"
    process = start_worker(cluster, 0, log, f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'model'}",
                           "--cluster_timeout=2")
    assert process.wait(timeout=WORKER_TIMEOUT) == 1
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("train: error: not every worker of TF_CONFIG joined within 2 s (--cluster_timeout)")
    assert cluster["worker"][1] in last
    assert not (tmp_path / "model").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
