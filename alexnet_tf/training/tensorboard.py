"""What a training run shows in TensorBoard while it trains (what it writes once: `run_summaries.py`).

Steps are finished epochs everywhere: step 0 is the initialization, step e the state after epoch e (1-based),
for Keras' scalars (`EpochTensorBoard`, which fixes Keras' own off-by-one: it logs epoch e at step e - 1), the
conv1 summaries (`Conv1Summaries`) and the histograms (`WeightHistograms`). Runs (sub-folders of the log
directory; each writer closes its event file before another opens one in the same folder, as TensorBoard reads a
folder's event files one after the other, tensorflow/tensorboard#1011):

- `train`, `validation`: `errors/loss`, `errors/top1`, `errors/top5` (the two runs overlaid in each chart),
  and for `train` `schedule/learning_rate` (the rate used during the epoch) and `throughput/images_per_sec`;
- `schedule`: `schedule/learning_rate_by_batch` against the optimizer's step (batches), about 20 points an
  epoch, so that each division by 10 reads as a step, not a slope smoothed over epochs;
- `conv1`: `filters/conv1` (Figure 3's layout, at chosen epochs: TensorBoard keeps 10 images per tag, so step
  0, the last epoch and up to 8 between), `filters/conv1_gabor_fraction`, `filters/conv1_oriented_fraction`,
  `filters/conv1_colour_specificity_a` and `_b` (every epoch). The group is "filters", which TensorBoard lists
  after Keras' "epoch_" curves;
- `weights`: `weights/<layer>/kernel` and `/bias` histograms, and `sparsity/<layer>`, the fraction of a ReLU
  layer's outputs that are zero on the first validation images (a ReLU is exactly zero wherever its input is
  negative), every `histogram_freq` epochs, at step 0 and at the last epoch;
- `train` also holds the graphs (op graph and conceptual graph: `graph.py`) and the profiler's trace of the
  `--profile_steps` batches (`ProfileSteps`).
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import errors, files
from alexnet_tf.analysis import figure3, filter_measures
from alexnet_tf.model import alexnet
from alexnet_tf.model.layers import unwrap
from alexnet_tf.training import graph

SUMMARY_RUN = "conv1"
SCHEDULE_RUN = "schedule"
WEIGHTS_RUN = "weights"
# Keras' log keys -> TensorBoard tags. TensorBoard sorts groups (the part before "/") by name and opens the
# first ones: "errors" comes before "filters", "schedule" and "throughput".
EPOCH_TAGS = {"loss": "errors/loss", "top1_error": "errors/top1", "top5_error": "errors/top5",
              "learning_rate": "schedule/learning_rate", "images_per_sec": "throughput/images_per_sec"}
IMAGE_SAMPLES = 10  # TensorBoard's default --samples_per_plugin for images.
LEARNING_RATE_POINTS_PER_EPOCH = 20
# Validation images whose ReLU outputs give the sparsity: their first batch, at most this many.
SPARSITY_IMAGES = 64

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
      validation scalars against another step;

    and one that makes its graphs exist: with `element_spec` (the training batches'), `write_graph` writes the op
    graph of the train step and the conceptual graph (`graph.py`), which Keras 3.15 writes for neither this model
    nor its train function, to the `train` run after the first batch, through the callback's own writer (a second
    writer in the same folder would hide events from TensorBoard, tensorflow/tensorboard#1011).
    """

    def __init__(self, log_dir: str, element_spec: Any = None, **kwargs: Any):
        super().__init__(log_dir, write_graph=element_spec is not None, **kwargs)
        self.element_spec = element_spec

    def _write_keras_model_summary(self):
        pass  # Written with the op graph, in _write_keras_model_train_graph.

    def _write_keras_model_train_graph(self):
        with self._train_writer.as_default(step=0):
            tf.summary.graph(graph.train_step_graph(self.model, self.element_spec))
            concept = graph.conceptual_graph(self.model)
            if concept is not None:
                graph.write_conceptual_graph(concept)
        self._train_writer.flush()

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


class WeightHistograms(keras.callbacks.Callback):
    """Histograms of every layer's weights and the sparsity of every ReLU layer's outputs, to the `weights` run.

    Written at step 0 of a fresh run, after every `every` epochs and after the last. A histogram summary holds
    TensorBoard's 30 bucket counts, not the weights: its size does not grow with the layer's (fc6's 38 million
    weights at the paper's width are 30 numbers a step). The sparsity is `tf.math.zero_fraction` of each ReLU
    layer's outputs (inference mode: no dropout) on the first SPARSITY_IMAGES images of `images`, the same images
    at every step; without `images` (no validation set) it is left out.
    """

    def __init__(self, log_dir: str, every: int, images: tf.data.Dataset | None = None):
        """`images`: (images, labels) batches, e.g. the validation set; `every`: epochs between two steps, >= 1."""
        super().__init__()
        if every < 1:
            raise errors.ConfigError(f"histograms every {every} epochs: give 1 or more")
        self.log_dir, self.every, self.images = log_dir, every, images
        self._writer: tf.summary.SummaryWriter | None = None
        self._probe: tuple[keras.Model, list[str], tf.Tensor] | None = None
        self._first_epoch_of_fit = True

    def on_train_begin(self, logs=None):
        self._first_epoch_of_fit = True

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch_of_fit and epoch == 0:  # As Conv1Summaries: the initial weights of a fresh run only.
            self._write(step=0)
        self._first_epoch_of_fit = False

    def on_epoch_end(self, epoch, logs=None):
        last = self.params.get("epochs") if self.params else None
        if (epoch + 1) % self.every == 0 or epoch + 1 == last:
            self._write(step=epoch + 1)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write(self, step: int) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(files.join(self.log_dir, WEIGHTS_RUN))
        with self._writer.as_default(step=step):
            for layer in self.model.layers:
                for weight in unwrap(layer).weights:
                    tf.summary.histogram(f"weights/{layer.name}/{weight.name}", weight.value)
            for name, fraction in self._sparsity().items():
                tf.summary.scalar(f"sparsity/{name}", fraction, description=_SPARSITY_DESCRIPTION)
        self._writer.flush()

    def _sparsity(self) -> dict[str, float]:
        """{layer name: fraction of zero outputs} of the ReLU layers, on the probe images."""
        if self.images is None:
            return {}
        if self._probe is None:
            relu = [layer for layer in self.model.layers
                    if getattr(unwrap(layer), "activation", None) is keras.activations.relu]
            if not relu:
                self.images = None
                return {}
            first = list(self.images.unbatch().batch(SPARSITY_IMAGES).take(1))
            if not first:  # No validation image could be read: the run stops at its first epoch's end.
                self.images = None
                return {}
            probe = keras.Model(self.model.inputs, [layer.output for layer in relu])
            self._probe = probe, [layer.name for layer in relu], first[0][0]
        probe, names, images = self._probe
        outputs = tf.nest.flatten(probe(images, training=False))  # A model of one output returns it alone.
        return {name: float(tf.math.zero_fraction(output)) for name, output in zip(names, outputs)}


class ProfileSteps(keras.callbacks.Callback):
    """Traces the batches `start` to `end` (1-based, counted from the start of this fit) with TensorFlow's profiler
    into `log_dir` (`plugins/profile/` there, which TensorBoard's Profile tab reads).

    Each traced batch is a step of the trace ("train", numbered by the optimizer's step, `_r=1`: the step marker
    from which the profiler's overview and input-pipeline analysis measure step time and input time).
    """

    def __init__(self, log_dir: str, start: int, end: int):
        super().__init__()
        if not 1 <= start <= end:
            raise errors.ConfigError(f"profile steps {start},{end}: give START,END with 1 <= START <= END")
        self.log_dir, self.start, self.end = log_dir, start, end
        self._batch, self._step, self._profiling = 0, None, False

    def on_train_batch_begin(self, batch, logs=None):
        self._batch += 1
        if self._batch == self.start:
            tf.profiler.experimental.start(self.log_dir)
            self._profiling = True
        if self._profiling:
            self._step = tf.profiler.experimental.Trace(
                "train", step_num=int(self.model.optimizer.iterations.numpy()), _r=1)
            self._step.__enter__()

    def on_train_batch_end(self, batch, logs=None):
        if self._step is not None:
            self._step.__exit__(None, None, None)
            self._step = None
        if self._profiling and self._batch >= self.end:
            self._stop()

    def on_train_end(self, logs=None):
        if self._profiling:  # Fewer batches than `end`: what was traced is kept.
            self._stop()

    def _stop(self) -> None:
        tf.profiler.experimental.stop()
        self._profiling = False


_IMAGE_DESCRIPTION = ("First-layer filters as in Figure 3 of the paper: tower a's on the top rows, tower b's below, "
                      "each normalised to its own min-max range. Step = finished epochs (0 = initialisation).")
_GABOR_DESCRIPTION = "Fraction of conv1 filters that a 2-D Gabor function fits with R^2 >= 0.5."
_ORIENTED_DESCRIPTION = ("Fraction of conv1 filters with an orientation selectivity >= 0.5 (|sum P exp(2i theta)| / "
                         "sum P over the filter's power spectrum; 1: one orientation, 0: isotropic).")
_COLOUR_DESCRIPTION = ("Mean share of a filter's variance off the grey axis, per tower (0: grey-level filters). "
                       "The paper saw one tower colour-agnostic, the other colour-specific (section 6.1).")
_RATE_DESCRIPTION = "The learning rate against the optimizer's step (batches): divisions by 10 are the steps."
_SPARSITY_DESCRIPTION = ("Fraction of the layer's ReLU outputs that are exactly zero, on the first validation images "
                         "(inference, no dropout).")
