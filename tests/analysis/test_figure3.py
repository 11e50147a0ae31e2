"""alexnet_tf.conv1: the filter grid, Figure 3's two-tower layout, and the conv1 measures."""

import sys

import numpy as np
import pytest

from alexnet_tf import errors
from alexnet_tf.analysis import figure3


def _known_kernel():
    """[2, 2, 3, 3]: a ramp filter, a constant filter and a pure-red filter."""
    ramp = np.arange(12, dtype=np.float64).reshape(2, 2, 3) - 5.0  # Values -5 .. 6.
    constant = np.full((2, 2, 3), 0.3)
    red = np.zeros((2, 2, 3))
    red[..., 0] = [[1.0, 2.0], [3.0, 4.0]]
    return np.stack([ramp, constant, red], axis=-1)


def test_grid_of_a_known_kernel():
    grid = figure3.filter_grid(_known_kernel(), columns=2)
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
    assert np.all(grid[separators] == figure3.SEPARATOR_VALUE)


def test_paper_layout_of_96_filters():
    kernel = np.zeros((11, 11, 3, 96))
    kernel[0, 0, 0, :] = np.arange(1, 97)  # One bright red corner pixel per filter; the rest is 0.
    kernel[1, 1, 1, 47] = 1000.0  # The first tower's last filter, with a bright green pixel.
    grid = figure3.filter_grid(kernel)
    assert grid.shape == (8 * 12 - 1, 12 * 12 - 1, 3)
    # The first tower's 48 filters fill the top 4 rows: filter 47 ends row 3, filter 48 starts row 4.
    assert tuple(grid[3 * 12 + 1, 11 * 12 + 1]) == (0, 255, 0)
    assert tuple(grid[4 * 12, 0]) == (255, 0, 0)
    assert tuple(grid[4 * 12 + 1, 1]) == (0, 0, 0)


def test_grey_kernel_gives_grey_filters():
    kernel = np.random.default_rng(0).normal(size=(5, 5, 1, 6))
    grid = figure3.filter_grid(kernel)
    assert grid.shape == (2 * 6 - 1, 3 * 6 - 1, 3)
    np.testing.assert_array_equal(grid[..., 0], grid[..., 1])
    np.testing.assert_array_equal(grid[..., 0], grid[..., 2])


@pytest.mark.parametrize("count, columns", [(96, 12), (48, 12), (24, 6), (32, 8), (7, 4), (1, 2)])
def test_default_columns(count, columns):
    assert figure3.default_columns(count) == columns


def test_bad_kernel_shape_is_refused():
    with pytest.raises(errors.ConfigError, match=r"expected a kernel \[kh, kw, 3 or 1, filters\], got shape \(11,"):
        figure3.filter_grid(np.zeros((11, 11, 4, 8)))


def test_upscale_repeats_pixels():
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    big = figure3.upscale(image, 3)
    assert big.shape == (6, 6, 3)
    np.testing.assert_array_equal(big[::3, ::3], image)
    np.testing.assert_array_equal(big[2, 5], image[0, 1])
    with pytest.raises(errors.ConfigError, match="upscaling factor must be >= 1, got 0"):
        figure3.upscale(image, 0)


def test_figure3_puts_tower_a_above_tower_b_with_labels():
    kernel = np.zeros((11, 11, 3, 24))
    kernel[0, 0, 0, :12] = 1.0  # Tower a: a red corner; tower b: a blue one.
    kernel[0, 0, 2, 12:] = 1.0
    image = figure3.figure3(kernel, towers=2, scale=2)
    block = figure3.upscale(figure3.filter_grid(kernel[..., :12], figure3.default_columns(12)), 2)
    label = figure3._LABEL_WIDTH
    assert image.shape == (2 * block.shape[0] + figure3._GAP, label + block.shape[1], 3)
    np.testing.assert_array_equal(image[: block.shape[0], label:], block)
    bottom = image[block.shape[0] + figure3._GAP:, label:]
    assert tuple(bottom[0, 0]) == (0, 0, 255) and tuple(image[0, label]) == (255, 0, 0)
    # The labels: dark text pixels in the left column beside each block, none in the gap.
    text = image[..., :label].min(axis=-1) < 100
    assert text[: block.shape[0]].any() and text[block.shape[0] + figure3._GAP:].any()
    assert not text[block.shape[0]: block.shape[0] + figure3._GAP].any()


def test_figure3_of_one_stream_is_the_plain_grid():
    kernel = np.random.default_rng(0).normal(size=(11, 11, 3, 12))
    np.testing.assert_array_equal(figure3.figure3(kernel, towers=1, scale=3),
                                  figure3.upscale(figure3.filter_grid(kernel), 3))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
