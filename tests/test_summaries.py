"""Tests of alexnet_tf.summaries: the filter grid and the TensorBoard callback, read back from event files."""

import io
import sys

import keras
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from alexnet_tf import gabor, summaries


def _known_kernel():
    """[2, 2, 3, 3]: a ramp filter, a constant filter and a pure-red filter."""
    ramp = np.arange(12, dtype=np.float64).reshape(2, 2, 3) - 5.0  # Values -5 .. 6.
    constant = np.full((2, 2, 3), 0.3)
    red = np.zeros((2, 2, 3))
    red[..., 0] = [[1.0, 2.0], [3.0, 4.0]]
    return np.stack([ramp, constant, red], axis=-1)


def test_grid_of_a_known_kernel():
    grid = summaries.filter_grid(_known_kernel(), columns=2)
    # 2 rows x 2 columns of 2x2 filters with 1-pixel separators; the 4th cell is unused.
    assert grid.shape == (5, 5, 3) and grid.dtype == np.uint8
    ramp = np.rint((np.arange(12).reshape(2, 2, 3)) * 255.0 / 11.0)
    np.testing.assert_array_equal(grid[0:2, 0:2], ramp)
    np.testing.assert_array_equal(grid[0:2, 3:5], np.full((2, 2, 3), 128))
    expected_red = np.zeros((2, 2, 3))
    expected_red[..., 0] = np.rint(np.array([[1.0, 2.0], [3.0, 4.0]]) * 255.0 / 4.0)
    np.testing.assert_array_equal(grid[3:5, 0:2], expected_red)
    separators = np.ones((5, 5), bool)
    separators[0:2, 0:2] = separators[0:2, 3:5] = separators[3:5, 0:2] = False
    assert np.all(grid[separators] == summaries.SEPARATOR_VALUE)


def test_paper_layout_of_96_filters():
    kernel = np.zeros((11, 11, 3, 96))
    kernel[0, 0, 0, :] = np.arange(1, 97)  # One bright red corner pixel per filter; the rest is 0.
    kernel[1, 1, 1, 47] = 1000.0  # The first tower's last filter, with a bright green pixel.
    grid = summaries.filter_grid(kernel)
    assert grid.shape == (8 * 12 - 1, 12 * 12 - 1, 3)
    # The first tower's 48 filters fill the top 4 rows: filter 47 ends row 3, filter 48 starts row 4.
    assert tuple(grid[3 * 12 + 1, 11 * 12 + 1]) == (0, 255, 0)
    assert tuple(grid[4 * 12, 0]) == (255, 0, 0)
    assert tuple(grid[4 * 12 + 1, 1]) == (0, 0, 0)


def test_grey_kernel_gives_grey_filters():
    kernel = np.random.default_rng(0).normal(size=(5, 5, 1, 6))
    grid = summaries.filter_grid(kernel)
    assert grid.shape == (2 * 6 - 1, 3 * 6 - 1, 3)
    np.testing.assert_array_equal(grid[..., 0], grid[..., 1])
    np.testing.assert_array_equal(grid[..., 0], grid[..., 2])


@pytest.mark.parametrize("count, columns", [(96, 12), (48, 12), (24, 6), (32, 8), (7, 4), (1, 2)])
def test_default_columns(count, columns):
    assert summaries.default_columns(count) == columns


def test_bad_kernel_shape_is_refused():
    with pytest.raises(ValueError, match="Expected a kernel"):
        summaries.filter_grid(np.zeros((11, 11, 4, 8)))


def test_upscale_repeats_pixels():
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    big = summaries.upscale(image, 3)
    assert big.shape == (6, 6, 3)
    np.testing.assert_array_equal(big[::3, ::3], image)
    np.testing.assert_array_equal(big[2, 5], image[0, 1])
    with pytest.raises(ValueError):
        summaries.upscale(image, 0)


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


def _fit(model, callback, epochs, initial_epoch=0):
    x = np.random.default_rng(1).normal(size=(8, 16, 16, 3)).astype(np.float32)
    y = np.random.default_rng(2).normal(size=(8, 2)).astype(np.float32)
    model.fit(x, y, batch_size=4, epochs=epochs, initial_epoch=initial_epoch, callbacks=[callback], verbose=0)


def _events(log_dir):
    accumulator = event_accumulator.EventAccumulator(
        str(log_dir / summaries.SUMMARY_RUN), size_guidance={event_accumulator.TENSORS: 0}
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


def test_callback_writes_grid_and_gabor_score_each_epoch(tmp_path):
    model = _tiny_model()
    initial_kernel = _kernel(model).copy()
    _fit(model, summaries.Conv1Summaries(str(tmp_path), kernel_fn=_kernel, scale=2), epochs=2)
    events = _events(tmp_path)

    images = events.Tensors("conv1/filters")
    scores = events.Tensors("conv1/gabor_fraction")
    assert [e.step for e in images] == [0, 1, 2]
    assert [e.step for e in scores] == [0, 1, 2]
    np.testing.assert_array_equal(
        _image(images[0]), summaries.upscale(summaries.filter_grid(initial_kernel), 2)
    )
    np.testing.assert_array_equal(_image(images[-1]), summaries.upscale(summaries.filter_grid(_kernel(model)), 2))
    assert not np.array_equal(_image(images[0]), _image(images[-1]))  # Training moved the filters.
    assert _scalar(scores[0]) == pytest.approx(gabor.gabor_score(initial_kernel))
    assert _scalar(scores[-1]) == pytest.approx(gabor.gabor_score(_kernel(model)))


def test_gabor_score_of_gabor_filters_is_logged(tmp_path):
    """Exact Gabor filters log a fraction of 1, every second epoch."""
    model = _tiny_model()
    half = 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    gabors = [np.exp(-(x**2 + y**2) / 4.0) * np.cos(2 * np.pi * (x * np.cos(t) + y * np.sin(t)) / 4.0)
              for t in np.linspace(0, np.pi, 6, endpoint=False)]
    kernel = np.stack([g[..., np.newaxis] * [1.0, 0.5, 0.2] for g in gabors], axis=-1).astype(np.float32)
    callback = summaries.Conv1Summaries(str(tmp_path), kernel_fn=lambda m: kernel, every_n_epochs=2)
    _fit(model, callback, epochs=2)
    scores = _events(tmp_path).Tensors("conv1/gabor_fraction")
    assert [(e.step, _scalar(e)) for e in scores] == [(0, 1.0), (2, 1.0)]


def test_default_kernel_fn_finds_the_layer_named_conv1(tmp_path):
    model = _tiny_model()
    _fit(model, summaries.Conv1Summaries(str(tmp_path), scale=1), epochs=1)
    last = _events(tmp_path).Tensors("conv1/filters")[-1]
    np.testing.assert_array_equal(_image(last), summaries.filter_grid(_kernel(model)))


def test_resumed_fit_does_not_rewrite_the_initial_step(tmp_path):
    model = _tiny_model()
    _fit(model, summaries.Conv1Summaries(str(tmp_path), kernel_fn=_kernel), epochs=3, initial_epoch=1)
    assert [e.step for e in _events(tmp_path).Tensors("conv1/filters")] == [2, 3]


def test_only_the_chief_writes(tmp_path):
    calls = []
    callback = summaries.Conv1Summaries(str(tmp_path), kernel_fn=calls.append, is_chief=False)
    _fit(_tiny_model(), callback, epochs=1)
    assert calls == []
    assert not (tmp_path / summaries.SUMMARY_RUN).exists()


@pytest.mark.parametrize("kwargs", [{"every_n_epochs": 0}, {"scale": 0}])
def test_bad_arguments_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        summaries.Conv1Summaries(str(tmp_path), kernel_fn=_kernel, **kwargs)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
