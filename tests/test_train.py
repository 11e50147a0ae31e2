"""The training binary, in-process and as a subprocess, on a tiny prepared dataset."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.util import tensor_util

from alexnet_tf import errors, train
from tests import tiny_data
from tests.flag_parsing import flag_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [*tiny_data.TINY_FLAGS, "--keep_checkpoints=2"]


@pytest.fixture(scope="module")
def two_epoch_run(data_dir, tmp_path_factory):
    """two_epoch_run(strategy) -> (MODEL_DIR, results) of a two-epoch run, trained once per strategy for every
    test that reads it."""
    finished = {}

    def run(strategy):
        if strategy not in finished:
            model_dir = str(tmp_path_factory.mktemp(strategy) / "model")
            flag_values = flag_parser(train)(*TINY, f"--data_dir={data_dir}", f"--model_dir={model_dir}",
                                             "--epochs=2", f"--strategy={strategy}", "--tower_devices=/CPU:0,/CPU:1",
                                             "--profile_steps=2,3")
            finished[strategy] = model_dir, train.run(flag_values)
        return finished[strategy]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["one_device", "mirrored", "towers"])
def test_run_trains_and_writes_results(two_epoch_run, strategy):
    model_dir, results = two_epoch_run(strategy)
    with open(os.path.join(model_dir, "results.json")) as f:
        assert json.load(f) == results
    assert results["epochs"] == 2
    for key in ("val_top1_error", "val_top5_error", "train_images_per_sec"):
        assert results[key] is not None and np.isfinite(results[key]), key
    assert 0.0 <= results["val_top1_error"] <= 1.0
    assert results["checkpoint"].endswith("epoch_002.keras") and os.path.exists(results["checkpoint"])
    logs = os.path.join(model_dir, "logs")
    assert sorted(name for name in os.listdir(logs) if os.path.isdir(os.path.join(logs, name))) == [
        "conv1", "figures", "schedule", "train", "validation", "weights"]
    assert results["conv1_png"] == os.path.join(model_dir, "conv1.png") and os.path.exists(results["conv1_png"])
    for key in ("conv1_gabor_fraction", "conv1_oriented_fraction", "fc7_neighbour_agreement"):
        assert 0.0 <= results[key] <= 1.0, key
    assert sorted(results["conv1_colour_specificity"]) == ["a", "b"]
    assert sorted(os.listdir(os.path.join(model_dir, "figures"))) == ["neighbours.png", "predictions.png"]
    assert results["export_dir"] == os.path.join(model_dir, "export")
    assert tf.saved_model.load(results["export_dir"]).signatures.keys() >= {"serving_default", "predict_images"}


@pytest.mark.slow
def test_tensorboard_scalars_of_a_run(two_epoch_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model_dir = pathlib.Path(two_epoch_run("one_device")[0])
    runs = {}
    for run_name in ("train", "validation", "conv1", "schedule", "figures"):
        events = EventAccumulator(str(model_dir / "logs" / run_name))
        events.Reload()
        runs[run_name] = events.Tags()
    assert {"errors/loss", "errors/top1", "errors/top5", "schedule/learning_rate",
            "throughput/images_per_sec"} <= set(runs["train"]["tensors"])
    assert set(runs["validation"]["tensors"]) == {"errors/loss", "errors/top1", "errors/top5"}
    assert {"filters/conv1_gabor_fraction", "filters/conv1_oriented_fraction", "filters/conv1_colour_specificity_a",
            "filters/conv1_colour_specificity_b", "filters/conv1"} <= set(runs["conv1"]["tensors"])
    assert "schedule/learning_rate_by_batch" in runs["schedule"]["tensors"]
    assert {"figures/predictions", "figures/neighbours"} <= set(runs["figures"]["tensors"])


@pytest.mark.slow
def test_every_tensorboard_plugin_has_the_run(two_epoch_run):
    """What each of TensorBoard's tabs reads from a --strategy=towers run, through TensorBoard's own readers."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator, HISTOGRAMS, TENSORS
    from tensorboard.plugins.hparams import metadata as hparams_metadata
    from tensorboard.plugins.projector import ProjectorConfig
    from google.protobuf import text_format

    model_dir, results = two_epoch_run("towers")
    logs = pathlib.Path(model_dir) / "logs"

    def events(run):
        accumulator = EventAccumulator(str(logs / run), size_guidance={TENSORS: 0, HISTOGRAMS: 0})
        accumulator.Reload()
        return accumulator

    # Graphs: the train step's ops on both tower devices, and the conceptual graph.
    train_run = events("train")
    devices = {node.device for node in train_run.Graph().node if node.op == "Conv2D"}
    assert devices == {"/device:CPU:0", "/device:CPU:1"}
    assert "keras" in train_run.Tags()["tensors"]
    # HParams: the session of MODEL_DIR with its settings, in the log folder above the runs holding its metrics.
    root = events(".")
    session = hparams_metadata.parse_session_start_info_plugin_data(
        root.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content)
    assert session.group_name == model_dir and session.hparams["strategy"].string_value == "towers"
    assert session.hparams["architecture.width"].number_value == 0.0625
    # The results table (Text) and the metrics: the fc7 agreement before training (step 0) and after (step 2).
    assert [e.step for e in root.Tensors("results")] == [2]
    agreement = events("figures").Tensors("figures/fc7_neighbour_agreement")
    assert [e.step for e in agreement] == [0, 2]
    assert float(tensor_util.make_ndarray(agreement[-1].tensor_proto)) == pytest.approx(
        results["fc7_neighbour_agreement"])
    # Histograms: every layer's kernel and bias at steps 0, 1, 2; the sparsity of the 12 ReLU layers.
    weights = events("weights").Tags()["tensors"]
    layers = [f"conv{i}{t}" for i in range(1, 6) for t in "ab"] + ["fc6", "fc7"]
    assert {f"weights/{layer}/{w}" for layer in layers + ["fc8"] for w in ("kernel", "bias")} <= set(weights)
    assert {f"sparsity/{layer}" for layer in layers} == {tag for tag in weights if tag.startswith("sparsity/")}
    assert [e.step for e in events("weights").Tensors("weights/fc6/kernel")] == [0, 1, 2]
    # Projector: the fc7 features of the 16 validation images, their labels and their sprite.
    config = text_format.Parse((logs / "figures" / "projector_config.pbtxt").read_text(), ProjectorConfig())
    [embedding] = config.embeddings
    assert (embedding.metadata_path, embedding.sprite.image_path) == ("fc7_metadata.tsv", "fc7_sprite.png")
    reader = tf.train.load_checkpoint(str(logs / "figures"))
    assert reader.get_variable_to_shape_map()[embedding.tensor_name] == [16, 256]
    assert len((logs / "figures" / "fc7_metadata.tsv").read_text().splitlines()) == 17
    # Profile: the trace of batches 2 and 3.
    assert len(list((logs / "train").glob("plugins/profile/*/*.xplane.pb"))) == 1


@pytest.mark.slow
def test_the_demo_generates_prepares_and_trains_its_first_epoch(parse, tmp_path):
    flag_values = parse(f"--flagfile={os.path.join(REPO, 'flags', 'demo.cfg')}", "--epochs=1",
                        f"--data_dir={tmp_path / 'data'}", f"--model_dir={tmp_path / 'model'}")
    results = train.run(flag_values)
    info = json.loads((tmp_path / "data" / "dataset_info.json").read_text())
    assert info["num_classes"] == 10 and info["splits"]["train"]["num_examples"] == 3000
    assert results["epochs"] == 1 and 0.0 <= results["val_top1_error"] <= 1.0
    assert results["checkpoint"].endswith("epoch_001.keras")
    assert flag_values.towers == 2 and flag_values.width == 0.25 and flag_values.image_size == 64
    assert flag_values.lr_min_delta == 0.005  # 2.5 of the 500 validation images (flags/demo.cfg)


@pytest.mark.parametrize("policy, loss_scaling", [("mixed_float16", True), ("mixed_bfloat16", False)])
def test_a_mixed_dtype_policy_reaches_the_model_and_the_optimizer(parse, data_dir, tmp_path, policy, loss_scaling):
    flag_values = parse(*TINY, f"--data_dir={data_dir}", f"--model_dir={tmp_path}", f"--dtype_policy={policy}")
    try:
        trainer = train.build(train.config_from_flags(flag_values))
        model = trainer.model
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == loss_scaling
        assert model.get_layer("fc6").compute_dtype == policy.split("_")[1]
        assert model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mirrored_strategy_uses_both_logical_devices(parse, data_dir, tmp_path):
    from alexnet_tf.training import distribute

    assert distribute.make_strategy("mirrored").num_replicas_in_sync == 2


def test_xla_is_refused_with_placed_towers(parse, data_dir, tmp_path):
    flag_values = parse(*TINY, f"--data_dir={data_dir}", f"--model_dir={tmp_path}", "--strategy=towers", "--xla")
    with pytest.raises(errors.ConfigError, match="XLA ignores tf.device"):
        train.run(flag_values)


def test_pretrained_npy_gives_a_new_fc8_and_freezes_convolutions(parse, data_dir, tmp_path):
    from alexnet_tf.model import build_alexnet, inner_layer
    from alexnet_tf.model.npy_weights import npy_weights, save_npy_weights

    source = build_alexnet(num_classes=10, image_size=64, width=0.0625, seed=5)
    save_npy_weights(source, tmp_path / "source.npy")
    npy = f"--pretrained={tmp_path / 'source.npy'}"
    # Unnamed, a .npy file is Caffe's network and input: one grouped stream, LRN k=1, BGR minus the mean pixel.
    caffe = train.config_from_flags(parse(*TINY, f"--data_dir={data_dir}", f"--model_dir={tmp_path}", npy))
    assert (caffe.architecture.towers, caffe.architecture.lrn_k, caffe.architecture.image_size) == (1, 1.0, 64)
    assert (caffe.data.channel_order, caffe.data.mean, caffe.data.mean_rgb) == ("BGR", "channel", (123, 117, 104))
    flag_values = parse(*TINY, f"--data_dir={data_dir}", f"--model_dir={tmp_path}", npy, "--preset=paper",
                        "--freeze_conv")
    config = train.config_from_flags(flag_values)
    assert (config.architecture.towers, config.data.channel_order) == (2, "RGB")
    model = train.build(config).model
    loaded, expected = npy_weights(model), npy_weights(source)
    for name in ("conv1", "conv3", "fc7"):
        np.testing.assert_array_equal(loaded[name][0], expected[name][0])
    assert loaded["fc8"][0].shape == (256, 4)
    assert not inner_layer(model, "conv2a").trainable and inner_layer(model, "fc6").trainable


@pytest.mark.slow
def test_fine_tuning_from_a_checkpoint_of_this_project(parse, data_dir, tmp_path):
    from alexnet_tf.model import build_alexnet
    from alexnet_tf.model.npy_weights import npy_weights

    source = build_alexnet(num_classes=10, image_size=64, width=0.0625, seed=7)
    source.save(tmp_path / "source.keras")
    flag_values = parse(*TINY, f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'model'}", "--epochs=1",
                        f"--pretrained={tmp_path / 'source.keras'}", "--freeze_conv")
    results = train.run(flag_values)
    tuned = npy_weights(keras.models.load_model(results["checkpoint"], compile=False))
    # Frozen convolutions keep the checkpoint's weights; fc8 is new, for the dataset's 4 classes.
    np.testing.assert_array_equal(tuned["conv2"][0], npy_weights(source)["conv2"][0])
    assert tuned["fc8"][0].shape == (256, 4)


def command(data_dir, model_dir, *extra):
    return [sys.executable, "-m", "alexnet_tf.train", *TINY, f"--data_dir={data_dir}",
            f"--model_dir={model_dir}", *extra]


@pytest.mark.parametrize("args, message", [
    (["--batch_size=0"], "--batch_size=0: 0 is not a positive integer"),
    (["--strategy=bogus"], "flag --strategy=bogus"),
    (["--data_dir=/no/such/dir"], "python tools/prepare_imagenet.py"),
])
@pytest.mark.slow
def test_bad_flags_give_one_line_and_no_traceback(tmp_path, args, message):
    process = subprocess.run(
        [sys.executable, "-m", "alexnet_tf.train", f"--model_dir={tmp_path}", f"--data_dir={tmp_path}", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert process.returncode != 0
    assert message in process.stderr
    assert "Traceback" not in process.stderr


@pytest.mark.slow
def test_missing_dataset_says_how_to_prepare_it(tmp_path):
    process = subprocess.run(command(tmp_path, tmp_path / "model"), cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    assert process.returncode != 0 and "Traceback" not in process.stderr
    assert "prepare_imagenet.py" in process.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_killed_run_resumes_where_it_stopped(data_dir, tmp_path):
    """SIGKILL after the second epoch's checkpoint; the same command finishes epochs 3 and 4 only."""
    model_dir = tmp_path / "model"
    args = command(data_dir, model_dir, "--epochs=4", "--lr_patience_epochs=1", "--lr_min_delta=0.5")
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    plateau = model_dir / "backup" / "plateau.json"
    deadline = time.time() + 300
    while time.time() < deadline and first.poll() is None:
        if plateau.exists() and "1" in json.loads(plateau.read_text() or "{}").get("states", {}):
            break
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Epoch 1/4" not in second.stdout
    assert "Epoch 4/4" in second.stdout
    results = json.loads((model_dir / "results.json").read_text())
    assert results["epochs"] == 4 and results["checkpoint"].endswith("epoch_004.keras")
    states = json.loads(plateau.read_text())["states"]
    # With a patience of one epoch and an improvement threshold of 0.5, every epoch after the
    # first is a plateau: three reductions in all, whichever process ran which epoch.
    assert sorted(states, key=int) == ["0", "1", "2", "3"]
    assert [states[e]["reductions"] for e in "0123"] == [0, 1, 2, 3]
    assert states["3"]["learning_rate"] == pytest.approx(1e-5)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
