"""TensorBoard summaries of the first convolution: the filter grid (the paper's Figure 3) and a Gabor score.

Keras' own `TensorBoard(write_images=True)` skips a kernel of shape 11x11x3x96, so `Conv1Summaries` writes
the grid itself with `tf.summary.image`, together with the fraction of Gabor-like filters
(`alexnet_tf.gabor.gabor_score`), which measures the paper's observation (section 6.1) that conv1 learns
frequency- and orientation-selective kernels.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from PIL import Image

from alexnet_tf import gabor
from alexnet_tf import model as model_lib
from alexnet_tf import model_dir as model_dir_lib

# Figure 3 of the paper: 96 filters in 8 rows of 12, the first tower's 48 in the top 4 rows.
PAPER_GRID_COLUMNS = 12
SEPARATOR_VALUE = 255  # White 1-pixel lines between filters (and in unused cells).
DEFAULT_SUMMARY_SCALE = 4  # Nearest-neighbour upscaling so 11-pixel filters are visible in TensorBoard.
SUMMARY_RUN = "conv1"  # Sub-directory of the log directory: its own TensorBoard run, see Conv1Summaries.

KernelFn = Callable[[keras.Model], np.ndarray]


def filter_grid(kernel: np.ndarray, columns: int | None = None) -> np.ndarray:
    """Tiles the filters of a first-layer kernel into one RGB image, like Figure 3 of the paper.

    Each filter is normalised independently: its values are mapped linearly so that its minimum is 0 and
    its maximum 255 over all three channels together (so the filter's colours are kept, and the weights'
    absolute scale, which shrinks or grows during training, is not). A constant filter is mid-grey (128).
    Filters fill the grid row by row in output-channel order, with 1-pixel separators of SEPARATOR_VALUE.

    Args:
      kernel: [kh, kw, 3, n] (or [kh, kw, 1, n], shown grey), e.g. from `alexnet_tf.model.conv1_kernel`.
      columns: filters per row; default `default_columns(n)` (12 for the paper's 96).

    Returns:
      uint8 [rows * (kh + 1) - 1, columns * (kw + 1) - 1, 3].
    """
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != 4 or kernel.shape[2] not in (1, 3):
        raise ValueError(f"Expected a kernel [kh, kw, 3 or 1, filters], got shape {kernel.shape}.")
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
        raise ValueError(f"Upscaling factor must be >= 1, got {factor}.")
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


class Conv1Summaries(keras.callbacks.Callback):
    """Writes the conv1 filter grid and the fraction of Gabor-like filters to TensorBoard.

    Written to the run `log_dir/conv1` (its own event file in its own directory: TensorBoard reads only
    the newest event file of a run directory, so sharing Keras' `log_dir/train` with a second writer would
    hide one of them; see tensorflow/tensorboard#1011), under the tags
      - `conv1/filters`: the `filter_grid` image, upscaled `scale` times (uint8 RGB);
      - `conv1/gabor_fraction`: `gabor.gabor_score(kernel)`, in [0, 1].
    The step is the number of finished epochs: step 0 holds the initial filters (written at the start of
    a fresh run, not of a resumed one), step e the filters after epoch e (1-based), every `every_n_epochs`.
    Note that Keras' TensorBoard callback logs epoch e's metrics at step e - 1.
    """

    def __init__(
        self,
        log_dir: str,
        kernel_fn: KernelFn | None = None,
        every_n_epochs: int = 1,
        is_chief: bool = True,
        scale: int = DEFAULT_SUMMARY_SCALE,
    ):
        """Creates the callback.

        Args:
          log_dir: TensorBoard log directory (the same as Keras' TensorBoard callback's).
          kernel_fn: model -> kernel [kh, kw, 3, n]; default `alexnet_tf.model.conv1_kernel`.
          every_n_epochs: write after every n-th epoch, n >= 1.
          is_chief: only the chief writes; other workers do nothing.
          scale: integer nearest-neighbour upscaling of the grid image, >= 1.
        """
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}.")
        self.log_dir = log_dir
        self.kernel_fn = kernel_fn or model_lib.conv1_kernel
        self.every_n_epochs = every_n_epochs
        self.is_chief = is_chief
        self.scale = scale
        self._writer: tf.summary.SummaryWriter | None = None
        self._first_epoch_of_fit = True

    def on_train_begin(self, logs=None):
        self._first_epoch_of_fit = True

    def on_epoch_begin(self, epoch, logs=None):
        # The initial filters are written here rather than in on_train_begin: a resumed fit() learns its
        # starting epoch (and BackupAndRestore restores the weights) only once all on_train_begin ran.
        if self._first_epoch_of_fit and epoch == 0:
            self._write(step=0)
        self._first_epoch_of_fit = False

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs == 0:
            self._write(step=epoch + 1)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write(self, step: int) -> None:
        if not self.is_chief:
            return
        kernel = np.asarray(self.kernel_fn(self.model))
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, SUMMARY_RUN))
        image = upscale(filter_grid(kernel), self.scale)
        with self._writer.as_default(step=step):
            tf.summary.image("conv1/filters", image[np.newaxis], description=_IMAGE_DESCRIPTION)
            tf.summary.scalar(
                "conv1/gabor_fraction", gabor.gabor_score(kernel), description=_SCORE_DESCRIPTION
            )
        self._writer.flush()


_IMAGE_DESCRIPTION = (
    "First-layer filters as in Figure 3 of the paper, each normalised to its own min-max range. "
    "Step = finished epochs (0 = initialisation)."
)
_SCORE_DESCRIPTION = (
    f"Fraction of conv1 filters fitted by a 2-D Gabor function with R^2 >= {gabor.GABOR_R2_THRESHOLD}. "
    "Step = finished epochs (0 = initialisation)."
)


def _normalised(filter_: np.ndarray) -> np.ndarray:
    """One filter [kh, kw, 3 or 1] mapped to uint8 [kh, kw, 3] by its own min-max range."""
    low, high = filter_.min(), filter_.max()
    if high == low:
        scaled = np.full(filter_.shape, 128.0)
    else:
        scaled = (filter_ - low) * (255.0 / (high - low))
    return np.broadcast_to(np.rint(scaled), filter_.shape[:2] + (3,)).astype(np.uint8)


class Throughput(keras.callbacks.Callback):
    """Logs training images per second of each epoch as `images_per_sec`."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.rates: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        rate = self._steps * self.batch_size / max(time.perf_counter() - self._start, 1e-9)
        self.rates.append(rate)
        if logs is not None:
            logs["images_per_sec"] = rate


def run_results(epochs: int, history: keras.callbacks.History, rates: Sequence[float], model_dir: str
                ) -> dict[str, Any]:
    """The numbers of results.json: the last epoch's errors and loss, the median throughput, where things are."""
    last = {key: values[-1] for key, values in history.history.items() if values}
    saved = model_dir_lib.checkpoints(model_dir_lib.join(model_dir, model_dir_lib.CHECKPOINTS))
    return {
        "epochs": epochs,
        "val_top1_error": _number(last.get("val_top1_error")),
        "val_top5_error": _number(last.get("val_top5_error")),
        "train_top1_error": _number(last.get("top1_error")),
        "train_loss": _number(last.get("loss")),
        "learning_rate": _number(last.get("learning_rate")),
        "train_images_per_sec": _number(float(np.median(rates)) if rates else None),
        "checkpoint": saved[-1] if saved else None,
        "tensorboard_logdir": model_dir_lib.join(model_dir, model_dir_lib.LOGS),
    }


def write_conv1_png(kernel: np.ndarray, path: str, scale: int = DEFAULT_SUMMARY_SCALE) -> str:
    """The conv1 filters as one grid image (as TensorBoard shows them), saved as a PNG through tf.io.gfile."""
    with tf.io.gfile.GFile(path, "wb") as f:
        Image.fromarray(upscale(filter_grid(kernel), scale)).save(f, format="PNG")
    return path


def write_final_figures(model: keras.Model, model_dir: str) -> dict[str, Any]:
    """The figures and conv1 measures of a trained model, for results.json."""
    kernel = model_lib.conv1_kernel(model)
    return {"conv1_png": write_conv1_png(kernel, model_dir_lib.join(model_dir, model_dir_lib.CONV1_PNG)),
            "conv1_gabor_fraction": float(gabor.gabor_score(kernel))}


def _number(value) -> float | None:
    return None if value is None else float(value)
