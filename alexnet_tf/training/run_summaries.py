"""What a run writes to TensorBoard once, beside its curves per epoch (`tensorboard.py`).

- `HParamsSummary`: the resolved TrainConfig (`hparams_of`) as the HParams plugin's session, written to the log
  directory itself at the start of a fit. The plugin finds the session's metrics in the runs below it (the last
  value of each of their scalars: `validation`'s errors/top1 and errors/top5, `conv1`'s Gabor and oriented
  fractions, `figures`' fc7 neighbour agreement, and the others), so the runs of a parent folder
  (`tensorboard --logdir runs/`) compare in one table, one row per MODEL_DIR (the trial id).
- `Fc7AgreementAtStart`: the fc7 neighbour agreement of the initial weights, at step 0 of `figures`, so that the
  trained network's value at the last step reads against what random features give.
- `write_figure4`: at the end, Figure 4's panels and the agreement to `figures`, and the fc7 features of the
  validation images to the projector there (`write_projector`, which `evaluate --figures` calls too).
- `write_results_text`: the run's final numbers as a table in the Text tab.
"""

from __future__ import annotations

from typing import Any

import keras
from absl import logging
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.plugins import projector
from tensorboard.plugins.hparams import api as hp

from alexnet_tf import errors, files
from alexnet_tf.analysis import figure4 as figure4_lib
from alexnet_tf.analysis.figure4 import Embedding, Figure4
from alexnet_tf.data import pipeline, sources
from alexnet_tf.training.config import TrainConfig

TRAIN_RUN = "train"  # Keras' name for the training run.
FIGURES_RUN = "figures"
# Fields of TrainConfig that say where files go or how the run is operated, not how the network is trained.
NOT_HPARAMS = ("model_dir", "export_dir", "keep_checkpoints", "cluster_timeout", "classes_from_data",
               "histogram_freq", "profile_steps")
FC7_CHECKPOINT = "fc7"  # The projector's files, in the folder of its projector_config.pbtxt.
FC7_TENSOR = "fc7/.ATTRIBUTES/VARIABLE_VALUE"  # The features' name in a tf.train.Checkpoint(fc7=...).
METADATA_TSV = "fc7_metadata.tsv"
SPRITE_PNG = "fc7_sprite.png"
RESULTS_TEXT = {"val_top1_error": "validation top-1 error", "val_top5_error": "validation top-5 error",
                "train_top1_error": "training top-1 error", "train_loss": "training loss",
                "conv1_gabor_fraction": "conv1 Gabor fraction", "conv1_oriented_fraction": "conv1 oriented fraction",
                "fc7_neighbour_agreement": "fc7 neighbour agreement", "train_images_per_sec": "images / s (median)",
                "epochs": "epochs"}


def hparams_of(config: TrainConfig) -> dict[str, bool | int | float | str]:
    """The settings of `config` as HParams: nested fields as "part.field" (e.g. "optimizer.learning_rate"), tuples
    joined with commas; unset (None) fields and NOT_HPARAMS left out."""
    flat: dict[str, Any] = {}
    for key, value in config.to_json().items():
        if key in NOT_HPARAMS:
            continue
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for field, item in items:
            flat[key if field is None else f"{key}.{field}"] = item
    return {name: ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            for name, value in sorted(flat.items()) if value is not None}


class HParamsSummary(keras.callbacks.Callback):
    """Writes `hparams_of(config)` as an HParams session (trial id: MODEL_DIR) to `log_dir` when a fit begins."""

    def __init__(self, log_dir: str, config: TrainConfig):
        super().__init__()
        self.log_dir, self.hparams, self.trial_id = log_dir, hparams_of(config), config.model_dir

    def on_train_begin(self, logs=None):
        writer = tf.summary.create_file_writer(self.log_dir)
        with writer.as_default():
            hp.hparams(self.hparams, trial_id=self.trial_id)
        writer.close()


class Fc7AgreementAtStart(keras.callbacks.Callback):
    """Writes the fc7 neighbour agreement of the initial weights (`figure4.fc7_neighbour_agreement`) to step 0 of
    the `figures` run, at the start of a fresh run (not of a resumed one, whose weights are trained)."""

    def __init__(self, log_dir: str, data: pipeline.DataConfig, source: sources.Source, image_size: int):
        super().__init__()
        self.log_dir, self.data, self.source, self.image_size = log_dir, data, source, image_size
        self._first_epoch_of_fit = True

    def on_train_begin(self, logs=None):
        self._first_epoch_of_fit = True

    def on_epoch_begin(self, epoch, logs=None):
        # As Conv1Summaries: a resumed fit knows its starting epoch (and has its weights back) only here.
        if self._first_epoch_of_fit and epoch == 0:
            try:
                agreement = figure4_lib.fc7_neighbour_agreement(self.model, self.data, self.image_size,
                                                                source=self.source)
            except errors.DataError as error:  # No image could be read: the run's own checks say so, in one line.
                logging.warning("No fc7 neighbour agreement at step 0: %s.", error)
                self._first_epoch_of_fit = False
                return
            writer = _figures_writer(self.log_dir)
            with writer.as_default(step=0):
                _agreement_summary(agreement)
            writer.close()
        self._first_epoch_of_fit = False


def _figures_writer(log_dir: str) -> tf.summary.SummaryWriter:
    return tf.summary.create_file_writer(files.join(log_dir, FIGURES_RUN))


def _agreement_summary(agreement: float) -> None:
    tf.summary.scalar("figures/fc7_neighbour_agreement", agreement, description=_AGREEMENT_DESCRIPTION)


def write_figure4(log_dir: str, figure: Figure4, step: int) -> dict[str, Any]:
    """Figure 4's two panels and the fc7 neighbour agreement, to the `figures` run of `log_dir` at `step`, and the
    fc7 embedding to the projector in that run's folder. Returns `write_projector`'s paths."""
    writer = _figures_writer(log_dir)
    with writer.as_default(step=step):
        columns = figure4_lib.prediction_columns(figure.predictions)
        tf.summary.image("figures/predictions", columns, max_outputs=len(columns),
                         description=_PREDICTIONS_DESCRIPTION)
        tf.summary.image("figures/neighbours", figure.neighbours[np.newaxis], description=_NEIGHBOURS_DESCRIPTION)
        _agreement_summary(figure.fc7_neighbour_agreement)
    writer.close()
    return write_projector(files.join(log_dir, FIGURES_RUN), figure.embedding)


def write_projector(directory: str, embedding: Embedding) -> dict[str, str]:
    """The fc7 embedding for TensorBoard's projector, in `directory` (`tensorboard --logdir` it, or a folder of it):
    the features as a TensorFlow checkpoint (FC7_CHECKPOINT, tensor FC7_TENSOR), their metadata (METADATA_TSV: a
    header row, then per image its label, the predicted class, whether it is right, its validation index), the
    sprite of their thumbnails (SPRITE_PNG) and projector_config.pbtxt naming them (paths relative to it, so the
    folder can move). Returns {"projector_config": path}."""
    # CheckpointManager writes the "checkpoint" index the projector looks for and keeps only this one.
    checkpoint = tf.train.Checkpoint(fc7=tf.Variable(embedding.features, trainable=False, name="fc7"))
    tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1, checkpoint_name=FC7_CHECKPOINT).save()
    names = embedding.class_names
    rows = ["label\tpredicted\tcorrect\tvalidation_index"] + [
        f"{_tsv(names[label])}\t{_tsv(names[predicted])}\t{'yes' if label == predicted else 'no'}\t{index}"
        for label, predicted, index in zip(embedding.labels, embedding.predicted, embedding.indices)]
    files.write_text(files.join(directory, METADATA_TSV), "\n".join(rows) + "\n")
    files.write_png(figure4_lib.sprite_image(embedding.thumbnails), files.join(directory, SPRITE_PNG))
    config = projector.ProjectorConfig()
    tensor = config.embeddings.add()
    tensor.tensor_name = FC7_TENSOR
    tensor.metadata_path = METADATA_TSV
    tensor.sprite.image_path = SPRITE_PNG
    tensor.sprite.single_image_dim.extend(embedding.thumbnails.shape[1:3][::-1])  # width, height
    # What projector.visualize_embeddings writes, written whole or not at all.
    path = files.write_text(files.join(directory, "projector_config.pbtxt"), text_format.MessageToString(config))
    return {"projector_config": path}


def _tsv(text: str) -> str:
    return " ".join(str(text).split())  # No tab or newline inside a field.


def write_results_text(log_dir: str, results: dict[str, Any], step: int) -> None:
    """The run's final numbers (RESULTS_TEXT's, those present) as a Markdown table, `results` in the log directory's
    own run, at `step`: single numbers are read there and in HParams rather than as one-point charts."""
    lines = ["| result | value |", "|---|---|"]
    for key, name in RESULTS_TEXT.items():
        value = results.get(key)
        if value is not None:
            lines.append(f"| {name} | {value:.4f} |" if isinstance(value, float) else f"| {name} | {value} |")
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default(step=step):
        tf.summary.text("results", "\n".join(lines))
    writer.close()


_AGREEMENT_DESCRIPTION = ("Over the validation images, the fraction of their six nearest training images in fc7's "
                          "feature space (Euclidean) that share their class; step 0: the initial weights.")
_PREDICTIONS_DESCRIPTION = ("Figure 4 (left): validation images with their five most probable labels, one a sample; "
                            "the correct label is written under each image, its bar red.")
_NEIGHBOURS_DESCRIPTION = ("Figure 4 (right): validation images (first column) and the six training images nearest "
                           "to each in fc7's feature space (Euclidean).")
