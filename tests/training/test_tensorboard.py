"""alexnet_tf.summaries: what TensorBoard shows, read back from the event files."""

import io
import sys

import keras
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from alexnet_tf import errors
from alexnet_tf.analysis import figure3, filter_measures
from alexnet_tf.training import tensorboard
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
        str(log_dir / run), size_guidance={event_accumulator.TENSORS: 0}
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


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
