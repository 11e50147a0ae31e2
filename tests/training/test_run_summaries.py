"""alexnet_tf.training.run_summaries: HParams, the projector and the results table, read back by TensorBoard's own
plugins (the HParams plugin's session groups, the projector plugin's tensor, metadata and sprite routes)."""

import io
import json
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import data_provider, event_accumulator, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import hparams_plugin
from tensorboard.plugins.projector import projector_plugin
from tensorboard.util import tensor_util
from werkzeug import test as werkzeug_test

from alexnet_tf import evaluate, train
from alexnet_tf.analysis import figure4
from alexnet_tf.analysis.figure4 import Embedding
from alexnet_tf.model import build_alexnet
from alexnet_tf.training import run_summaries
from tests.flag_parsing import flag_parser


def _tb_context(logdir):
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    return base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer,
                                 data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(logdir)))


def test_hparams_are_the_resolved_config_flattened(parse):
    config = train.config_from_flags(parse("--model_dir=m", "--data_dir=d", "--width=0.5", "--strategy=towers",
                                           "--tower_devices=/CPU:0,/CPU:1"))
    hparams = run_summaries.hparams_of(config)
    assert hparams["architecture.width"] == 0.5 and hparams["strategy"] == "towers"
    assert hparams["optimizer.learning_rate"] == 0.01 and hparams["schedule.max_reductions"] == 3
    assert hparams["tower_devices"] == "/CPU:0,/CPU:1" and hparams["data.data_dir"] == "d"
    assert "data.mean_rgb" not in hparams  # Unset.
    assert not set(run_summaries.NOT_HPARAMS) & set(hparams)
    assert all(isinstance(value, (bool, int, float, str)) for value in hparams.values())


def test_runs_of_a_parent_folder_compare_in_the_hparams_table(parse, tmp_path):
    """Two MODEL_DIRs under one folder: the HParams plugin lists a session group for each, with its settings and
    the last value of each metric of its runs."""
    for name, rate, error in (("fast", "0.05", 0.4), ("slow", "0.01", 0.6)):
        config = train.config_from_flags(parse(f"--model_dir={tmp_path / name}", "--data_dir=d",
                                               f"--learning_rate={rate}"))
        log_dir = str(tmp_path / name / "logs")
        run_summaries.HParamsSummary(log_dir, config).on_train_begin()
        with tf.summary.create_file_writer(f"{log_dir}/validation").as_default():
            tf.summary.scalar("errors/top1", 0.9, step=1)
            tf.summary.scalar("errors/top1", error, step=2)
    app = hparams_plugin.HParamsPlugin(_tb_context(tmp_path)).get_plugin_apps()["/session_groups"]
    request = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN"], "colParams": [], "startIndex": 0,
               "sliceSize": 10}
    response = werkzeug_test.Client(app).post("/", data=json.dumps(request), content_type="application/json")
    groups = {group["name"]: group for group in json.loads(response.data)["sessionGroups"]}
    assert sorted(groups) == [str(tmp_path / "fast"), str(tmp_path / "slow")]  # The trial id: MODEL_DIR.
    for name, rate, error in (("fast", 0.05, 0.4), ("slow", 0.01, 0.6)):
        group = groups[str(tmp_path / name)]
        assert group["hparams"]["optimizer.learning_rate"] == pytest.approx(rate)
        [metric] = group["metricValues"]
        assert metric["name"] == {"group": "validation", "tag": "errors/top1"}
        assert metric["value"] == pytest.approx(error) and metric["trainingStep"] == 2


def _embedding():
    rng = np.random.default_rng(0)
    thumbnails = rng.integers(0, 256, (5, figure4.SPRITE_TILE, figure4.SPRITE_TILE, 3)).astype(np.uint8)
    return Embedding(features=rng.normal(size=(5, 7)).astype(np.float32), labels=np.array([0, 1, 2, 1, 0]),
                     predicted=np.array([0, 2, 2, 1, 1]), thumbnails=thumbnails, indices=np.array([0, 3, 4, 7, 9]),
                     class_names=["red cat", "dog", "tab\tname"])


def test_projector_reads_the_features_their_labels_and_sprite(tmp_path):
    embedding = _embedding()
    written = run_summaries.write_projector(str(tmp_path), embedding)
    assert written == {"projector_config": str(tmp_path / "projector_config.pbtxt")}
    plugin = projector_plugin.ProjectorPlugin(_tb_context(tmp_path))
    client = werkzeug_test.Client(plugin.get_plugin_apps()["/tensor"])
    name = run_summaries.FC7_TENSOR
    tensor = np.frombuffer(client.get(f"/?run=.&name={name}").data, np.float32).reshape(5, 7)
    np.testing.assert_array_equal(tensor, embedding.features)
    metadata = werkzeug_test.Client(plugin.get_plugin_apps()["/metadata"]).get(f"/?run=.&name={name}").data
    assert metadata.decode().splitlines() == ["label\tpredicted\tcorrect\tvalidation_index",
                                              "red cat\tred cat\tyes\t0", "dog\ttab name\tno\t3",
                                              "tab name\ttab name\tyes\t4", "dog\tdog\tyes\t7",
                                              "red cat\tdog\tno\t9"]
    sprite = werkzeug_test.Client(plugin.get_plugin_apps()["/sprite_image"]).get(f"/?run=.&name={name}").data
    sprite = np.asarray(Image.open(io.BytesIO(sprite)))
    tile = figure4.SPRITE_TILE
    assert sprite.shape == (2 * tile, 3 * tile, 3)  # Five thumbnails in a grid of three columns.
    np.testing.assert_array_equal(sprite[tile:, :tile], embedding.thumbnails[3])
    assert (sprite[tile:, 2 * tile:] == 255).all()
    info = json.loads(werkzeug_test.Client(plugin.get_plugin_apps()["/info"]).get("/?run=.").data)
    assert info["embeddings"][0]["sprite"]["singleImageDim"] == [tile, tile]
    # Written again (a second evaluation): one checkpoint remains.
    run_summaries.write_projector(str(tmp_path), embedding)
    assert len(list(tmp_path.glob(f"{run_summaries.FC7_CHECKPOINT}-*.index"))) == 1


def test_results_table_in_the_text_tab(tmp_path):
    run_summaries.write_results_text(str(tmp_path), {"val_top1_error": 0.25, "epochs": 30, "checkpoint": "x"}, 30)
    events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    [event] = events.Tensors("results")
    assert event.step == 30
    text = tensor_util.make_ndarray(event.tensor_proto).item().decode()
    assert text.splitlines() == ["| result | value |", "|---|---|", "| validation top-1 error | 0.2500 |",
                                 "| epochs | 30 |"]


def test_evaluate_figures_writes_the_projector_beside_figure4(data_dir, tmp_path):
    """`evaluate --figures=DIR` on the tiny data set (4 classes, 16 validation images): every validation image in
    the projector, its fc7 features those of the model."""
    model = build_alexnet(num_classes=4, image_size=64, width=0.0625, seed=0)
    checkpoint = str(tmp_path / "model.keras")
    model.save(checkpoint)
    figures = tmp_path / "figures"
    results = flag_parser(evaluate)(f"--data_dir={data_dir}", f"--checkpoint={checkpoint}", f"--figures={figures}",
                                    "--batch_size=8")
    results = evaluate.run(results)
    assert results["projector_config"] == str(figures / "projector_config.pbtxt")
    plugin = projector_plugin.ProjectorPlugin(_tb_context(figures))
    info = json.loads(werkzeug_test.Client(plugin.get_plugin_apps()["/info"]).get("/?run=.").data)
    [embedding] = info["embeddings"]
    assert embedding["tensorShape"] == [16, 256]  # fc7 at 1/16 of 4,096 units.
    metadata = werkzeug_test.Client(plugin.get_plugin_apps()["/metadata"]).get(
        f"/?run=.&name={run_summaries.FC7_TENSOR}").data.decode().splitlines()
    assert len(metadata) == 17 and sorted({row.split("\t")[0] for row in metadata[1:]}) == [
        "n00000000", "n00000001", "n00000002", "n00000003"]
    assert sorted(p.name for p in figures.glob("*.png")) == ["fc7_sprite.png", "neighbours.png", "predictions.png"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
