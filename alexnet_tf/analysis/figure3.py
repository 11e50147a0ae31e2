"""What the first layer learned, as the paper shows it (section 6.1, Figure 3).

Figure 3: "96 convolutional kernels of size 11x11x3 learned by the first convolutional layer on the 224x224x3
input images. The top 48 kernels were learned on GPU 1 while the bottom 48 kernels were learned on GPU 2."
`figure3` lays the kernels out that way: tower a's filters in the top rows, tower b's below, each block
labelled. The numbers that say what a person sees in it are `filter_measures.conv1_measures`.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from alexnet_tf.errors import ConfigError

DEFAULT_SCALE = 4  # Nearest-neighbour upscaling so 11-pixel filters are visible.
SEPARATOR_VALUE = 255  # White 1-pixel lines between filters (and in unused cells).
TOWER_NAMES = ("a", "b")
_LABEL_WIDTH = 72  # Pixels of the label column, at the upscaled size.
_GAP = 12  # Pixels between the towers' blocks, at the upscaled size.
_FONT = ImageFont.load_default(size=14)


def figure3(kernel: np.ndarray, towers: int, scale: int = DEFAULT_SCALE) -> np.ndarray:
    """The conv1 filters as Figure 3: uint8 RGB, each filter normalised to its own range (`filter_grid`).

    With `towers=2` the output channels' first half (tower a) fills the top block and the second half (tower b)
    the bottom block, each labelled on its left; with `towers=1`, one unlabelled block.
    """
    kernel = np.asarray(kernel)
    if towers == 1:
        return upscale(filter_grid(kernel), scale)
    halves = np.split(kernel, towers, axis=-1)
    columns = default_columns(halves[0].shape[-1])
    blocks = [upscale(filter_grid(half, columns), scale) for half in halves]
    width = _LABEL_WIDTH + blocks[0].shape[1]
    height = sum(b.shape[0] for b in blocks) + _GAP * (towers - 1)
    canvas = Image.new("RGB", (width, height), (SEPARATOR_VALUE,) * 3)
    draw = ImageDraw.Draw(canvas)
    top = 0
    for name, block in zip(TOWER_NAMES, blocks):
        canvas.paste(Image.fromarray(block), (_LABEL_WIDTH, top))
        draw.text((6, top + block.shape[0] // 2 - 8), f"tower {name}", fill=(0, 0, 0), font=_FONT)
        top += block.shape[0] + _GAP
    return np.asarray(canvas)


def filter_grid(kernel: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Tiles the filters of a first-layer kernel into one RGB image, like Figure 3 of the paper.

    Each filter is normalised independently: its values are mapped linearly so that its minimum is 0 and
    its maximum 255 over all three channels together (so the filter's colours are kept, and the weights'
    absolute scale, which shrinks or grows during training, is not). A constant filter is mid-grey (128).
    Filters fill the grid row by row in output-channel order, with 1-pixel separators of SEPARATOR_VALUE.

    Args:
      kernel: [kh, kw, 3, n] (or [kh, kw, 1, n], shown grey), e.g. from `alexnet_tf.model.alexnet.conv1_kernel`.
      columns: filters per row; default `default_columns(n)` (12 for the paper's 96).

    Returns:
      uint8 [rows * (kh + 1) - 1, columns * (kw + 1) - 1, 3].
    """
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != 4 or kernel.shape[2] not in (1, 3):
        raise ConfigError(f"expected a kernel [kh, kw, 3 or 1, filters], got shape {kernel.shape}")
    kh, kw, channels, count = kernel.shape
    columns = columns or default_columns(count)
    rows = math.ceil(count / columns)
    grid = np.full((rows * (kh + 1) - 1, columns * (kw + 1) - 1, 3), SEPARATOR_VALUE, np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * (kh + 1), column * (kw + 1)
        grid[top : top + kh, left : left + kw] = _normalised(kernel[..., index])
    return grid


def default_columns(count: int) -> int:
    """Filters per grid row: the paper's 12 for 96 filters, else about its 3:2 aspect ratio.

    For an even count, a divisor of count / 2 is preferred, so that each tower's half fills whole rows
    (the first tower's filters above the second's, as in the paper).
    """
    target = math.sqrt(1.5 * count)  # columns / rows = 3 / 2 with columns * rows = count.
    if count % 2 == 0:
        half_divisors = [d for d in range(1, count // 2 + 1) if (count // 2) % d == 0 and d >= target]
        if half_divisors and half_divisors[0] <= 2 * target:
            return half_divisors[0]
    return math.ceil(target)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an [H, W, C] image by an integer factor >= 1."""
    if factor < 1:
        raise ConfigError(f"the upscaling factor must be >= 1, got {factor}")
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _normalised(filter_: np.ndarray) -> np.ndarray:
    """One filter [kh, kw, 3 or 1] mapped to uint8 [kh, kw, 3] by its own min-max range."""
    low, high = filter_.min(), filter_.max()
    if high == low:
        scaled = np.full(filter_.shape, 128.0)
    else:
        scaled = (filter_ - low) * (255.0 / (high - low))
    return np.broadcast_to(np.rint(scaled), filter_.shape[:2] + (3,)).astype(np.uint8)
