"""alexnet_tf.training.tensorboard: what TensorBoard shows while a run trains, read back with TensorBoard's readers."""

import io
import sys

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.graph import keras_util
from tensorboard.util import tensor_util
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from alexnet_tf import errors
from alexnet_tf.analysis import figure3, filter_measures
from alexnet_tf.model import build_alexnet
from alexnet_tf.training import tensorboard
from alexnet_tf.training.optimizer import PaperSGD
from alexnet_tf.training.schedule import PlateauSchedule


def _tiny_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(6, 5, name="conv1"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    return model


def _kernel(model):
    return model.get_layer("conv1").kernel.numpy()


def _fit(model, callbacks, epochs, initial_epoch=0):
    x = np.random.default_rng(1).normal(size=(8, 16, 16, 3)).astype(np.float32)
    y = np.random.default_rng(2).normal(size=(8, 2)).astype(np.float32)
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    model.fit(x, y, batch_size=4, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks, verbose=0)


def _events(log_dir, run=tensorboard.SUMMARY_RUN):
    accumulator = event_accumulator.EventAccumulator(
        str(log_dir / run), size_guidance={event_accumulator.TENSORS: 0, event_accumulator.HISTOGRAMS: 0}
    )
    accumulator.Reload()
    return accumulator


def _image(tensor_event):
    # A tf.summary.image tensor holds [width, height, png bytes...] as strings.
    width, height, png = tensor_util.make_ndarray(tensor_event.tensor_proto)
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape[:2] == (int(height), int(width))
    return image


def _scalar(tensor_event):
    return float(tensor_util.make_ndarray(tensor_event.tensor_proto))


def _conv1_callback(tmp_path, **kwargs):
    return tensorboard.Conv1Summaries(str(tmp_path), towers=1, kernel_fn=_kernel, **kwargs)


def test_callback_writes_figure3_and_the_measures_at_finished_epochs(tmp_path):
    model = _tiny_model()
    initial_kernel = _kernel(model).copy()
    _fit(model, _conv1_callback(tmp_path, scale=2), epochs=2)
    events = _events(tmp_path)
    images = events.Tensors("filters/conv1")
    assert [e.step for e in images] == [0, 1, 2]
    np.testing.assert_array_equal(_image(images[0]), figure3.figure3(initial_kernel, 1, 2))
    np.testing.assert_array_equal(_image(images[-1]), figure3.figure3(_kernel(model), 1, 2))
    assert not np.array_equal(_image(images[0]), _image(images[-1]))  # Training moved the filters.
    for tag, key in (("filters/conv1_gabor_fraction", "conv1_gabor_fraction"),
                     ("filters/conv1_oriented_fraction", "conv1_oriented_fraction")):
        values = events.Tensors(tag)
        assert [e.step for e in values] == [0, 1, 2]
        assert _scalar(values[0]) == pytest.approx(filter_measures.conv1_measures(initial_kernel, 1)[key])
        assert _scalar(values[-1]) == pytest.approx(filter_measures.conv1_measures(_kernel(model), 1)[key])
    assert [e.step for e in events.Tensors("filters/conv1_colour_specificity_all")] == [0, 1, 2]


def test_two_towers_log_a_colour_specificity_each(tmp_path):
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.normal(size=(5, 5, 1, 3)), 3, axis=2)  # Tower a: grey-level filters.
    colour = rng.normal(size=(5, 5, 3, 3))
    kernel = np.concatenate([grey, colour], axis=-1)
    callback = tensorboard.Conv1Summaries(str(tmp_path), towers=2, kernel_fn=lambda m: kernel)
    _fit(_tiny_model(), callback, epochs=1)
    events = _events(tmp_path)
    a = _scalar(events.Tensors("filters/conv1_colour_specificity_a")[-1])
    b = _scalar(events.Tensors("filters/conv1_colour_specificity_b")[-1])
    assert a == pytest.approx(0.0, abs=1e-9) and b > 0.3


def test_images_are_written_at_most_ten_times_including_the_first_and_last(tmp_path):
    assert tensorboard.image_steps(90) == {0, 10, 20, 30, 40, 50, 60, 70, 80, 90}
    assert tensorboard.image_steps(3) == {0, 1, 2, 3}
    assert len(tensorboard.image_steps(31)) == 10 and {0, 31} <= tensorboard.image_steps(31)
    _fit(_tiny_model(), _conv1_callback(tmp_path), epochs=12)
    events = _events(tmp_path)
    assert [e.step for e in events.Tensors("filters/conv1")] == sorted(tensorboard.image_steps(12))
    assert [e.step for e in events.Tensors("filters/conv1_gabor_fraction")] == list(range(13))


def test_resumed_fit_does_not_rewrite_the_initial_step(tmp_path):
    _fit(_tiny_model(), _conv1_callback(tmp_path), epochs=3, initial_epoch=1)
    assert [e.step for e in _events(tmp_path).Tensors("filters/conv1_gabor_fraction")] == [2, 3]


def test_only_the_chief_writes(tmp_path):
    calls = []
    callback = tensorboard.Conv1Summaries(str(tmp_path), towers=1, kernel_fn=calls.append, is_chief=False)
    _fit(_tiny_model(), callback, epochs=1)
    assert calls == []
    assert not (tmp_path / tensorboard.SUMMARY_RUN).exists()


def test_keras_scalars_are_at_finished_epochs_with_the_rate_each_epoch_used(tmp_path):
    """Epoch e's loss at step e, like the filters after epoch e; the learning rate logged for an epoch is the one
    it trained with, though the schedule divides it by 10 at that epoch's end."""
    model = _tiny_model()
    schedule = PlateauSchedule(monitor="loss", patience_epochs=1, min_delta=1e9, max_reductions=2)
    _fit(model, [schedule, tensorboard.EpochTensorBoard(str(tmp_path), update_freq="epoch")], epochs=3)
    events = _events(tmp_path, "train")
    assert [e.step for e in events.Tensors("errors/loss")] == [1, 2, 3]
    assert not [tag for tag in events.Tags()["tensors"] if "vs_iterations" in tag]
    rates = [(e.step, round(_scalar(e), 6)) for e in events.Tensors("schedule/learning_rate")]
    # The first epoch sets the best loss; the second does not improve on it: divided by 10 at its end.
    assert rates == [(1, 0.5), (2, 0.5), (3, 0.05)]


def test_learning_rate_steps_read_as_steps_against_batches(tmp_path):
    model = _tiny_model()
    schedule = PlateauSchedule(monitor="loss", patience_epochs=1, min_delta=1e9, max_reductions=1)
    x = np.zeros((40, 16, 16, 3), np.float32)
    y = np.zeros((40, 2), np.float32)
    model.fit(x, y, batch_size=1, epochs=3, verbose=0,
              callbacks=[schedule, tensorboard.LearningRateSteps(str(tmp_path))])
    points = [(e.step, round(_scalar(e), 6)) for e in _events(tmp_path, tensorboard.SCHEDULE_RUN).Tensors(
        "schedule/learning_rate_by_batch")]
    steps = [s for s, _ in points]
    assert steps == sorted(steps) and len(points) >= 3 * tensorboard.LEARNING_RATE_POINTS_PER_EPOCH
    # The division by 10 at the second epoch's end falls between its last batch (79) and the third's first.
    assert max(s for s, r in points if r == 0.5) == 79 and min(s for s, r in points if r == 0.05) == 80


@pytest.mark.parametrize("kwargs", [{"scale": 0}])
def test_bad_arguments_are_refused(tmp_path, kwargs):
    with pytest.raises(errors.ConfigError, match="scale must be >= 1, got 0"):
        tensorboard.Conv1Summaries(str(tmp_path), kernel_fn=_kernel, **kwargs)


def _relu_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
                              keras.layers.Flatten(name="flatten"), keras.layers.Dense(2, name="logits")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def test_weight_histograms_at_the_interval_and_the_sparsity_of_the_relu_outputs(tmp_path):
    model = _relu_model()
    rng = np.random.default_rng(0)
    images = rng.normal(size=(80, 8, 8, 3)).astype(np.float32)
    probe_batches = tf.data.Dataset.from_tensor_slices((images, np.zeros(80, np.int32))).batch(50)
    callback = tensorboard.WeightHistograms(str(tmp_path), every=2, images=probe_batches)
    model.fit(images[:8], rng.normal(size=(8, 2)).astype(np.float32), batch_size=4, epochs=3, verbose=0,
              callbacks=[callback])
    events = _events(tmp_path, tensorboard.WEIGHTS_RUN)
    # Step 0, every second epoch, and the last.
    histograms = {tag: [e.step for e in events.Tensors(tag)] for tag in events.Tags()["tensors"]
                  if tag.startswith("weights/")}
    assert histograms == {tag: [0, 2, 3] for tag in ("weights/conv1/kernel", "weights/conv1/bias",
                                                     "weights/logits/kernel", "weights/logits/bias")}
    # A histogram is 30 buckets (left edge, right edge, count) whatever the layer's size: its counts add up to it.
    buckets = tensor_util.make_ndarray(events.Tensors("weights/conv1/kernel")[-1].tensor_proto)
    assert buckets.shape == (30, 3) and buckets[:, 2].sum() == 3 * 3 * 3 * 4
    np.testing.assert_allclose([buckets[0, 0], buckets[-1, 1]], [model.get_layer("conv1").kernel.numpy().min(),
                                                                 model.get_layer("conv1").kernel.numpy().max()],
                               rtol=1e-6)
    # Sparsity of the only ReLU layer, on the first SPARSITY_IMAGES (64) images, after the last epoch.
    sparsity = events.Tensors("sparsity/conv1")
    assert [e.step for e in sparsity] == [0, 2, 3] and "sparsity/logits" not in events.Tags()["tensors"]
    conv = model.get_layer("conv1")
    expected = np.mean(conv(images[:tensorboard.SPARSITY_IMAGES]).numpy() == 0)
    assert 0.0 < expected < 1.0 and _scalar(sparsity[-1]) == pytest.approx(expected)


def test_profile_steps_trace_the_chosen_batches_as_steps(tmp_path):
    model = _relu_model()
    x = np.zeros((24, 8, 8, 3), np.float32)
    model.fit(x, np.zeros((24, 2), np.float32), batch_size=4, epochs=2, verbose=0,
              callbacks=[tensorboard.ProfileSteps(str(tmp_path), 8, 9)])  # Across the epochs: 6 batches each.
    traces = list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1
    space = xplane_pb2.XSpace.FromString(traces[0].read_bytes())
    steps = set()
    for plane in space.planes:
        names = {i: m.name for i, m in plane.event_metadata.items()}
        stat_names = {i: m.name for i, m in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                if names.get(event.metadata_id) == "train":
                    steps |= {s.int64_value or s.uint64_value for s in event.stats
                              if stat_names.get(s.metadata_id) == "step_num"}
    # Batches 8 and 9 are the optimizer's steps 7 and 8 (it counts from 0).
    assert steps == {7, 8}


def test_profiling_stops_with_the_run_when_end_is_past_it(tmp_path):
    model = _relu_model()
    model.fit(np.zeros((8, 8, 8, 3), np.float32), np.zeros((8, 2), np.float32), batch_size=4, epochs=1, verbose=0,
              callbacks=[tensorboard.ProfileSteps(str(tmp_path), 2, 100)])
    assert len(list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))) == 1
    tf.profiler.experimental.start(str(tmp_path / "again"))  # The profiler was stopped: it starts again.
    tf.profiler.experimental.stop()


@pytest.mark.parametrize("kwargs, message", [({"start": 0, "end": 2}, "1 <= START <= END"),
                                             ({"start": 3, "end": 2}, "profile steps 3,2")])
def test_bad_profile_steps_are_refused(tmp_path, kwargs, message):
    with pytest.raises(errors.ConfigError, match=message):
        tensorboard.ProfileSteps(str(tmp_path), **kwargs)


def test_graphs_of_the_placed_towers_show_each_tower_on_its_device(tmp_path):
    """The op graph of the train step: every convolution of tower a on device 0 and of tower b on device 1, forward
    and backward, spelled one way; the conceptual graph: the layers, concat3a reading both towers."""
    model = build_alexnet(num_classes=3, image_size=64, width=0.0625, tower_devices=("/CPU:0", "/CPU:1"), seed=0)
    model.compile(optimizer=PaperSGD(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((4, 64, 64, 3), np.float32), np.arange(4) % 3)).batch(4)
    callback = tensorboard.EpochTensorBoard(str(tmp_path), dataset.element_spec, update_freq="epoch")
    model.fit(dataset, epochs=1, verbose=0, callbacks=[callback])
    events = _events(tmp_path, "train")
    graph_def = events.Graph()
    convolutions = [node for node in graph_def.node if node.op in ("Conv2D", "Conv2DBackpropFilter")]
    towers = {(node.name.split("/")[2 if node.name.startswith("gradient_tape/") else 1].rsplit("_", 1)[0][-1],
               node.device) for node in convolutions}
    assert len(convolutions) == 2 * 5 * 2  # Five layers, two towers, forward and the kernel's gradient.
    assert towers == {("a", "/device:CPU:0"), ("b", "/device:CPU:1")}
    assert {node.device for node in graph_def.node} == {"", "/device:CPU:0", "/device:CPU:1"}
    # Written once, through the callback's own event file.
    assert len(list((tmp_path / "train").glob("events.out.tfevents.*"))) == 1
    concept = json.loads(tensor_util.make_ndarray(events.Tensors("keras")[0].tensor_proto).item())
    nodes = {node.name.split("/")[-1]: node for node in keras_util.keras_model_to_graph_def(concept).node}
    assert nodes["conv3a"].attr["keras_class"].s == b"Conv2D"  # Not the OnDevice wrapper.
    assert nodes["lrn1b"].attr["keras_class"].s == b"LocalResponseNormalization"
    assert sorted(name.split("/")[-1] for name in nodes["concat3a"].input) == ["pool2a", "pool2b"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
