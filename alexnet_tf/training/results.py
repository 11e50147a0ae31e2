"""What a finished run leaves besides its checkpoints: results.json's numbers, conv1.png (Figure 3) and Figure 4
(PNG files and TensorBoard's images, projector and results table)."""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np

from alexnet_tf import files, model_dir as model_dir_lib
from alexnet_tf.analysis import figure3, figure4, filter_measures
from alexnet_tf.data import pipeline, sources
from alexnet_tf.model import alexnet
from alexnet_tf.training import run_summaries


def run_results(epochs: int, history: Mapping[int, Mapping[str, float]], model_dir: str) -> dict[str, Any]:
    """The numbers of results.json: the last epoch's errors and loss, the median throughput, where things are.

    `history`: every finished epoch's logs, by 1-based epoch (`callbacks.EpochHistory.records`), which a resumed
    run keeps from its earlier commands.
    """
    last = history[max(history)] if history else {}
    rates = [logs["images_per_sec"] for logs in history.values() if "images_per_sec" in logs]
    saved = model_dir_lib.checkpoints(files.join(model_dir, model_dir_lib.CHECKPOINTS))
    return {
        "epochs": epochs,
        "val_top1_error": last.get("val_top1_error"),
        "val_top5_error": last.get("val_top5_error"),
        "train_top1_error": last.get("top1_error"),
        "train_loss": last.get("loss"),
        "learning_rate": last.get("learning_rate"),
        "train_images_per_sec": float(np.median(rates)) if rates else None,
        "checkpoint": saved[-1] if saved else None,
        "tensorboard_logdir": files.join(model_dir, model_dir_lib.LOGS),
    }


def write_final_figures(model: keras.Model, model_dir: str, data: pipeline.DataConfig | None, step: int,
                        source: sources.Source | None = None) -> dict[str, Any]:
    """conv1.png (Figure 3) and the conv1 measures; with a validation split in `data` (opened as `source`), Figure 4
    to MODEL_DIR/figures and to TensorBoard at `step` (with the fc7 embedding for the projector). Returns the entries
    of results.json."""
    architecture = alexnet.architecture_of(model)
    kernel = alexnet.conv1_kernel(model)
    results = {"conv1_png": files.write_png(figure3.figure3(kernel, architecture.towers),
                                            files.join(model_dir, model_dir_lib.CONV1_PNG)),
               **filter_measures.conv1_measures(kernel, architecture.towers)}
    if data is None:
        return results
    figure = figure4.figure4(model, data, architecture.image_size, source=source)
    results.update(figure4.write_figure4(figure, files.join(model_dir, model_dir_lib.FIGURES)))
    results.update(run_summaries.write_figure4(files.join(model_dir, model_dir_lib.LOGS), figure, step))
    return results


def write_results_text(model_dir: str, results: dict[str, Any], step: int) -> None:
    """The final numbers of `results` as a table in TensorBoard's Text tab, at `step`."""
    run_summaries.write_results_text(files.join(model_dir, model_dir_lib.LOGS), results, step)
