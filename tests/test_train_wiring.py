"""Every setting of flags/paper.cfg reaches the object that uses it, with the paper's value.

`train.build` makes the training objects from the flagfile without fitting; the input pipeline's builders are
replaced by recorders (the paper's 224-pixel crops need ImageNet-sized images, and their own tests check what
they do with the values), so these tests are about the wiring alone: a flag dropped on its way to the
optimizer, the schedule, the model or the pipeline fails one of them.
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import train
from alexnet_tf.data import pipeline, sources
from alexnet_tf.model import inner_layer
from tests.flag_parsing import flag_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = f"--flagfile={os.path.join(REPO, 'flags', 'paper.cfg')}"
NUM_CLASSES = 1000


class _Source:
    """A stand-in for ImageNet's prepared source: 1000 classes, both splits."""

    num_classes = NUM_CLASSES

    def has_split(self, split):
        return True

    def num_examples(self, split):
        return 1_281_167 if split == "train" else 50_000

    def class_names(self):
        return [str(i) for i in range(NUM_CLASSES)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(trainer, pipeline calls) for paper.cfg with the towers on the two logical CPUs."""
    calls = {}

    def recorder(name):
        def record(config, batch_size, image_size, **kwargs):
            calls[name] = dict(config=config, batch_size=batch_size, image_size=image_size, **kwargs)
            images = tf.zeros([1, image_size, image_size, 3])
            return tf.data.Dataset.from_tensors((images, tf.zeros([1], tf.int32)))
        return record

    patch = pytest.MonkeyPatch()
    patch.setattr(pipeline, "make_train_dataset", recorder("train"))
    patch.setattr(pipeline, "make_eval_dataset", recorder("eval"))
    patch.setattr(sources, "open_source", lambda data_dir, **kwargs: _Source())
    model_dir = tmp_path_factory.mktemp("paper")
    flag_values = flag_parser(train)(PAPER, "--data_dir=/data/imagenet", f"--model_dir={model_dir}",
                                     "--tower_devices=/CPU:0,/CPU:1", "--seed=0")
    try:
        yield train.build(train.config_from_flags(flag_values)), calls
    finally:
        patch.undo()


def test_sections_3_2_and_2_two_towers_on_their_devices(built):
    trainer, _ = built
    config = trainer.model.get_config()
    assert (config["towers"], config["groups"], config["image_size"], config["num_classes"]) == (2, 2, 224, 1000)
    assert trainer.model.input_shape == (None, 224, 224, 3)
    assert trainer.model.count_params() == 60_965_224
    for tower, device in (("a", "CPU:0"), ("b", "CPU:1")):
        assert inner_layer(trainer.model, f"conv1{tower}").kernel.value.device.endswith(device)


def test_tower_devices_present_are_kept_and_absent_ones_fall_back_to_the_cpu():
    from alexnet_tf.training import distribute

    # TensorFlow names the logical devices "/device:CPU:1", without a job: a full spec still matches.
    assert distribute.tower_devices(["/CPU:0", "/CPU:1"]) == ("/CPU:0", "/CPU:1")
    assert distribute.tower_devices(["/job:localhost/replica:0/task:0/device:CPU:1", "/CPU:0"])[0].endswith("CPU:1")
    assert distribute.tower_devices(["/GPU:0", "/GPU:1"]) == ("/CPU:0", "/CPU:0")


def test_section_3_3_lrn_constants(built):
    trainer, _ = built
    config = trainer.model.get_config()
    assert (config["lrn"], config["lrn_k"], config["lrn_depth"], config["lrn_alpha"], config["lrn_beta"]) == \
        (True, 2.0, 5, 1e-4, 0.75)
    layer = inner_layer(trainer.model, "lrn1a")
    assert (layer.depth, layer.k, layer.alpha, layer.beta) == (5, 2.0, 1e-4, 0.75)


def test_sections_3_1_3_4_and_4_2_relu_overlapping_pooling_dropout(built):
    trainer, _ = built
    pool = inner_layer(trainer.model, "pool1a")
    assert (tuple(pool.pool_size), tuple(pool.strides)) == ((3, 3), (2, 2))
    assert inner_layer(trainer.model, "conv1a").activation.__name__ == "relu"
    assert [inner_layer(trainer.model, f"dropout{i}").rate for i in (6, 7)] == [0.5, 0.5]


def test_section_5_initialization(built):
    trainer, _ = built
    kernel = np.asarray(inner_layer(trainer.model, "conv1a").kernel)
    assert kernel.std() == pytest.approx(0.01, rel=0.02)
    assert np.all(np.asarray(inner_layer(trainer.model, "conv2a").bias) == 1.0)
    assert np.all(np.asarray(inner_layer(trainer.model, "conv1a").bias) == 0.0)
    assert np.all(np.asarray(inner_layer(trainer.model, "conv3a").bias) == 0.0)


def test_section_5_optimizer(built):
    trainer, _ = built
    optimizer = trainer.model.optimizer
    assert type(optimizer).__name__ == "PaperSGD"
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    assert optimizer.momentum == pytest.approx(0.9)
    assert optimizer.weight_decay_l2 == pytest.approx(5e-4)


def test_section_5_plateau_schedule(built):
    trainer, _ = built
    schedule = trainer.callbacks.schedule
    assert (schedule.factor, schedule.patience_epochs, schedule.max_reductions) == (0.1, 5, 3)
    assert schedule.min_delta == pytest.approx(1e-3)
    assert schedule.monitor == "val_top1_error"


def test_section_5_epochs_and_batch_reach_fit(built, monkeypatch):
    trainer, calls = built
    seen = {}
    monkeypatch.setattr(trainer.model, "fit", lambda *args, **kwargs: seen.update(kwargs))
    train.fit(trainer)
    assert seen["epochs"] == 90
    assert calls["train"]["batch_size"] == calls["eval"]["batch_size"] == 128


def test_sections_2_and_4_1_the_pipeline_gets_the_paper_augmentation(built):
    _, calls = built
    training, evaluation = calls["train"], calls["eval"]
    assert training["config"].pca_noise is True and training["config"].mean == "image"
    assert training["image_size"] == evaluation["image_size"] == 224
    assert training["seed"] == 0
    assert evaluation.get("ten_crop", False) is False
    assert training["config"].data_dir == "/data/imagenet"


def test_flags_that_deviate_from_the_paper_reach_their_objects(tmp_path, monkeypatch):
    """The same path with other values: a flag that were dropped would leave the paper's default."""
    flag_values = flag_parser(train)(PAPER, "--data_dir=/data/imagenet", f"--model_dir={tmp_path}",
                                     "--strategy=one_device", "--width=0.0625", "--image_size=67",
                                     "--learning_rate=0.02", "--momentum=0.5", "--weight_decay=0.01",
                                     "--lr_patience_epochs=7", "--lr_min_delta=0.02", "--lr_max_reductions=1",
                                     "--lrn_k=1", "--lrn_alpha=2e-5", "--dropout=0.25", "--nopca_noise",
                                     "--mean=channel", "--input_scale=0.125", "--conv1_init_gain=0.5")
    config = train.config_from_flags(flag_values)
    monkeypatch.setattr(sources, "open_source", lambda data_dir, **kwargs: _Source())
    seen = {}
    batches = tf.data.Dataset.from_tensors((tf.zeros([1, 67, 67, 3]), tf.zeros([1], tf.int32)))
    monkeypatch.setattr(pipeline, "make_train_dataset", lambda c, b, s, **k: seen.setdefault("data", c) and batches)
    monkeypatch.setattr(pipeline, "make_eval_dataset", lambda c, b, s, **k: batches)
    trainer = train.build(config)
    optimizer, schedule, model_config = trainer.model.optimizer, trainer.callbacks.schedule, trainer.model.get_config()
    assert (float(optimizer.learning_rate), optimizer.momentum, optimizer.weight_decay_l2) == \
        pytest.approx((0.02, 0.5, 0.01))
    assert (schedule.patience_epochs, schedule.min_delta, schedule.max_reductions) == (7, 0.02, 1)
    assert (model_config["lrn_k"], model_config["lrn_alpha"], model_config["dropout"]) == (1.0, 2e-5, 0.25)
    assert (model_config["width"], model_config["image_size"], model_config["input_scale"]) == (0.0625, 67, 0.125)
    assert model_config["conv1_init_gain"] == 0.5
    assert inner_layer(trainer.model, "lrn1a").k == 1.0
    assert seen["data"].pca_noise is False and seen["data"].mean == "channel"


def _flagfile_flags(path: str) -> list[str]:
    """The names of the flags a flagfile sets, in order."""
    with open(path) as f:
        return [line.split("=")[0][2:].strip() for line in f if line.startswith("--")]


def _leaves(config: dict, prefix: str = "") -> dict:
    """A TrainConfig's JSON as {"architecture.width": 0.25, ...}."""
    leaves = {}
    for key, value in config.items():
        if isinstance(value, dict):
            leaves.update(_leaves(value, f"{prefix}{key}."))
        else:
            leaves[prefix + key] = value
    return leaves


# The config field each flag of a recipe fills, where its name is not the field's own.
_FIELD_OF_FLAG = {"lr_patience_epochs": "patience_epochs", "lr_min_delta": "min_delta",
                  "lr_max_reductions": "max_reductions"}


def test_the_demo_differs_from_the_paper_in_exactly_the_flags_it_lists(tmp_path, monkeypatch):
    demo_cfg = os.path.join(REPO, "flags", "demo.cfg")
    monkeypatch.chdir(tmp_path)  # From another working directory, by absolute path.
    demo = train.config_from_flags(flag_parser(train)(f"--flagfile={demo_cfg}"))
    paper = train.config_from_flags(flag_parser(train)(PAPER, f"--data_dir={demo.data.data_dir}",
                                                       f"--model_dir={demo.model_dir}"))
    demo_leaves, paper_leaves = _leaves(demo.to_json()), _leaves(paper.to_json())
    differing = {path.rsplit(".", 1)[-1] for path in demo_leaves if demo_leaves[path] != paper_leaves[path]}
    # paper.cfg names no folders (the user gives them): the demo's are compared above by giving them to both. Both
    # name the paper's preset, which is no field: it is resolved into the architecture and data fields compared.
    listed = {_FIELD_OF_FLAG.get(name, name) for name in _flagfile_flags(demo_cfg)} - {"data_dir", "model_dir",
                                                                                         "preset"}
    assert differing == listed
    assert (demo.architecture.width, demo.architecture.towers, demo.strategy) == (0.25, 2, "one_device")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
