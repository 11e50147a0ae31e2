"""What a training run shows in TensorBoard.

Steps are finished epochs everywhere: step 0 is the initialization, step e the state after epoch e (1-based),
for Keras' scalars (`EpochTensorBoard`, which fixes Keras' own off-by-one: it logs epoch e at step e - 1) and for
the conv1 summaries (`Conv1Summaries`). Runs (sub-folders of the log directory, each with its own event file:
TensorBoard reads only the newest event file of a folder, tensorflow/tensorboard#1011):

- `train`, `validation`: `errors/loss`, `errors/top1`, `errors/top5` (the two runs overlaid in each chart),
  and for `train` `schedule/learning_rate` (the rate used during the epoch) and `throughput/images_per_sec`;
- `schedule`: `schedule/learning_rate_by_batch` against the optimizer's step (batches), about 20 points an
  epoch, so that each division by 10 reads as a step, not a slope smoothed over epochs;
- `conv1`: `filters/conv1` (Figure 3's layout, at chosen epochs: TensorBoard keeps 10 images per tag, so step
  0, the last epoch and up to 8 between), `filters/conv1_gabor_fraction`, `filters/conv1_oriented_fraction`,
  `filters/conv1_colour_specificity_a` and `_b` (every epoch). The group is "filters", which TensorBoard lists
  after Keras' "epoch_" curves;
- `figures`: Figure 4's `figures/predictions` and `figures/neighbours`, at the last step.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import errors, files
from alexnet_tf.analysis import figure3, filter_measures
from alexnet_tf.analysis.figure4 import Figure4
from alexnet_tf.model import alexnet

SUMMARY_RUN = "conv1"
SCHEDULE_RUN = "schedule"
FIGURES_RUN = "figures"
# Keras' log keys -> TensorBoard tags. TensorBoard sorts groups (the part before "/") by name and opens the
# first ones: "errors" comes before "filters", "schedule" and "throughput".
EPOCH_TAGS = {"loss": "errors/loss", "top1_error": "errors/top1", "top5_error": "errors/top5",
              "learning_rate": "schedule/learning_rate", "images_per_sec": "throughput/images_per_sec"}
IMAGE_SAMPLES = 10  # TensorBoard's default --samples_per_plugin for images.
LEARNING_RATE_POINTS_PER_EPOCH = 20

KernelFn = Callable[[keras.Model], np.ndarray]


def image_steps(epochs: int, samples: int = IMAGE_SAMPLES) -> set[int]:
    """The steps at which the filter image is written: 0, `epochs`, and evenly spaced ones between, `samples`
    in all at most, so that TensorBoard's reservoir keeps every one of them."""
    return {int(round(s)) for s in np.linspace(0, epochs, num=min(samples, epochs + 1))}


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback with three changes that make its curves read right:

    - epoch e's scalars at step e (finished epochs), not e - 1, as the conv1 summaries;
    - the learning rate the epoch used (`logs["learning_rate"]`, set by the plateau schedule), not the
      optimizer's rate at the epoch's end, which is already the next epoch's after a reduction;
    - tags grouped so that TensorBoard opens on the curves (`EPOCH_TAGS`: "errors/top1", "errors/top5",
      "errors/loss", train and validation in one chart each), and no `evaluation_*_vs_iterations` copies of the
      validation scalars against another step.
    """

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, logs)

    def on_test_end(self, logs=None):
        self._pop_writer()

    def _collect_learning_rate(self, logs):
        return logs if "learning_rate" in logs else super()._collect_learning_rate(logs)

    def _log_epoch_metrics(self, epoch, logs):
        if not logs:
            return
        train = self._collect_learning_rate({k: v for k, v in logs.items() if not k.startswith("val_")})
        validation = {k[len("val_"):]: v for k, v in logs.items() if k.startswith("val_")}
        for writer, values in ((self._train_writer, train), (self._val_writer, validation)):
            with writer.as_default():
                for name, value in values.items():
                    tf.summary.scalar(EPOCH_TAGS.get(name, f"epoch/{name}"), value, step=epoch)
            writer.flush()


class LearningRateSteps(keras.callbacks.Callback):
    """Writes `schedule/learning_rate_by_batch` against the optimizer's step, LEARNING_RATE_POINTS_PER_EPOCH times an
    epoch and at each epoch's first and last batch (module docstring)."""

    def __init__(self, log_dir: str, is_chief: bool = True):
        super().__init__()
        self.log_dir, self.is_chief = log_dir, is_chief
        self._writer: tf.summary.SummaryWriter | None = None

    def on_train_batch_begin(self, batch, logs=None):
        steps = (self.params or {}).get("steps") or 0
        every = max(1, steps // LEARNING_RATE_POINTS_PER_EPOCH)
        if self.is_chief and (batch % every == 0 or batch == steps - 1):
            self._write(int(self.model.optimizer.iterations.numpy()))

    def on_epoch_end(self, epoch, logs=None):
        if self.is_chief:  # The rate that the epoch's last batch used, at its step.
            self._write(int(self.model.optimizer.iterations.numpy()) - 1, (logs or {}).get("learning_rate"))

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write(self, step: int, rate: float | None = None) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(files.join(self.log_dir, SCHEDULE_RUN))
        rate = float(np.asarray(self.model.optimizer.learning_rate)) if rate is None else rate
        with self._writer.as_default(step=max(step, 0)):
            tf.summary.scalar("schedule/learning_rate_by_batch", rate, description=_RATE_DESCRIPTION)


class Conv1Summaries(keras.callbacks.Callback):
    """Writes Figure 3's filter image and the conv1 measures (`filter_measures.conv1_measures`) to TensorBoard.

    The step is the number of finished epochs: step 0 holds the initial filters (written at the start of a
    fresh run, not of a resumed one); the measures are written after every epoch, the image at
    `image_steps(epochs)`.
    """

    def __init__(self, log_dir: str, towers: int | None = None, kernel_fn: KernelFn | None = None,
                 is_chief: bool = True, scale: int = figure3.DEFAULT_SCALE):
        """Creates the callback.

        Args:
          log_dir: TensorBoard log directory (the same as Keras' TensorBoard callback's).
          towers: 1 or 2, the layout of Figure 3; default the model's config.
          kernel_fn: model -> kernel [kh, kw, 3, n]; default `alexnet_tf.model.alexnet.conv1_kernel`.
          is_chief: only the chief writes; other workers do nothing.
          scale: integer nearest-neighbour upscaling of the image, >= 1.
        """
        super().__init__()
        if scale < 1:
            raise errors.ConfigError(f"scale must be >= 1, got {scale}")
        self.log_dir, self.towers, self.is_chief, self.scale = log_dir, towers, is_chief, scale
        self.kernel_fn = kernel_fn or alexnet.conv1_kernel
        self._writer: tf.summary.SummaryWriter | None = None
        self._first_epoch_of_fit = True

    def on_train_begin(self, logs=None):
        self._first_epoch_of_fit = True

    def on_epoch_begin(self, epoch, logs=None):
        # Written here rather than in on_train_begin: a resumed fit() learns its starting epoch (and
        # BackupAndRestore restores the weights) only once all on_train_begin ran.
        if self._first_epoch_of_fit and epoch == 0:
            self._write(step=0)
        self._first_epoch_of_fit = False

    def on_epoch_end(self, epoch, logs=None):
        self._write(step=epoch + 1)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write(self, step: int) -> None:
        if not self.is_chief:
            return
        kernel = np.asarray(self.kernel_fn(self.model))
        towers = self.towers or alexnet.architecture_of(self.model).towers
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(files.join(self.log_dir, SUMMARY_RUN))
        values = filter_measures.conv1_measures(kernel, towers)
        with self._writer.as_default(step=step):
            if step in image_steps(self.params.get("epochs", step) if self.params else step):
                image = figure3.figure3(kernel, towers, self.scale)
                tf.summary.image("filters/conv1", image[np.newaxis], description=_IMAGE_DESCRIPTION)
            tf.summary.scalar("filters/conv1_gabor_fraction", values["conv1_gabor_fraction"],
                              description=_GABOR_DESCRIPTION)
            tf.summary.scalar("filters/conv1_oriented_fraction", values["conv1_oriented_fraction"],
                              description=_ORIENTED_DESCRIPTION)
            for tower, value in values["conv1_colour_specificity"].items():
                tf.summary.scalar(f"filters/conv1_colour_specificity_{tower}", value, description=_COLOUR_DESCRIPTION)
        self._writer.flush()


def write_figure4(log_dir: str, figure: Figure4, step: int) -> None:
    """Figure 4's two panels and the fc7 neighbour agreement, to the `figures` run of `log_dir` at `step`."""
    with tf.summary.create_file_writer(files.join(log_dir, FIGURES_RUN)).as_default(step=step):
        tf.summary.image("figures/predictions", figure.predictions[np.newaxis], description=_PREDICTIONS_DESCRIPTION)
        tf.summary.image("figures/neighbours", figure.neighbours[np.newaxis], description=_NEIGHBOURS_DESCRIPTION)
        tf.summary.scalar("figures/fc7_neighbour_agreement", figure.fc7_neighbour_agreement)


_IMAGE_DESCRIPTION = ("First-layer filters as in Figure 3 of the paper: tower a's on the top rows, tower b's below, "
                      "each normalised to its own min-max range. Step = finished epochs (0 = initialisation).")
_GABOR_DESCRIPTION = "Fraction of conv1 filters that a 2-D Gabor function fits with R^2 >= 0.5."
_ORIENTED_DESCRIPTION = ("Fraction of conv1 filters with an orientation selectivity >= 0.5 (|sum P exp(2i theta)| / "
                         "sum P over the filter's power spectrum; 1: one orientation, 0: isotropic).")
_COLOUR_DESCRIPTION = ("Mean share of a filter's variance off the grey axis, per tower (0: grey-level filters). "
                       "The paper saw one tower colour-agnostic, the other colour-specific (section 6.1).")
_RATE_DESCRIPTION = "The learning rate against the optimizer's step (batches): divisions by 10 are the steps."
_PREDICTIONS_DESCRIPTION = ("Figure 4 (left): validation images with their five most probable labels; the correct "
                            "label is written under each image, its bar red.")
_NEIGHBOURS_DESCRIPTION = ("Figure 4 (right): validation images (first column) and the six training images nearest "
                           "to each in fc7's feature space (Euclidean).")
