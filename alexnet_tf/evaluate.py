"""Top-1 and top-5 error on the validation set: `python -m alexnet_tf.evaluate`.

    python -m alexnet_tf.evaluate --data_dir=/data/imagenet --checkpoint=/runs/paper/checkpoints/epoch_090.keras
    python -m alexnet_tf.evaluate --flagfile=flags/bvlc.cfg --data_dir=/data/imagenet \
        --pretrained=bvlc_alexnet.npy --ten_crop
    python -m alexnet_tf.evaluate --data_dir=/data/imagenet --ensemble=run1.keras,run2.keras,run3.keras

The paper's test-time protocols (section 4.1 and section 6): one centre crop of each stored image;
with --ten_crop, the softmax averaged over the four corner patches, the centre patch and their
reflections; with several models (--checkpoint or --pretrained, then --ensemble, or --ensemble
alone), the softmax averaged over the models as well. Errors are fractions in [0, 1].

A `.keras` checkpoint holds its own architecture and image size; a `.npy` file in the bvlc_alexnet
layout is read into the model the flags describe. The data flags (--mean, --mean_rgb, --stats_path,
--channel_order) must be those the model was trained with.

The numbers are printed and written as JSON beside the first model: `<model>.eval.json`, with
`_ten_crop` and `_ensembleN` before `.json` for those protocols (so runs of each protocol keep their
own file), or in --model_dir instead for a `.npy` file when --model_dir is given.

The binary has the shape of train.py: flags (alexnet_tf/flags.py), `run(flags, datasets_override)`,
which tests call in-process with tiny datasets, and `main`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Callable, Sequence

import keras
import tensorflow as tf
from absl import app, flags

from alexnet_tf import flags as flags_lib
from alexnet_tf import loading
from alexnet_tf.data import pipeline
from alexnet_tf.metrics import TopKError

FLAGS = flags.FLAGS
TOP_K = (1, 5)  # Section 6: "top-1 and top-5 error rates".


def evaluate(models: Sequence[keras.Model], dataset: tf.data.Dataset, num_examples: int | None = None,
             verbose: int = 1) -> dict[str, Any]:
    """Top-k errors of the softmax averaged over `models` (and crops), with a progress bar.

    Args:
        models: one model, or the ensemble whose softmax outputs are averaged.
        dataset: (images, int labels) batches; images [B, S, S, 3], or [B, crops, S, S, 3] whose
            softmax outputs are averaged over the crops (`make_eval_dataset(ten_crop=True)`).
        num_examples: the progress bar's target, in images (None: unknown).
        verbose: 0 silent, 1 a live progress bar, 2 one line at the end (`keras.utils.Progbar`).

    Returns:
        {"num_images": int, "top1_error": float, "top5_error": float}.
    """
    predict = tf.function(functools.partial(loading.averaged_probabilities, models), autograph=False,
                          reduce_retracing=True)
    metrics = [TopKError(k) for k in TOP_K]
    progbar = keras.utils.Progbar(num_examples, verbose=verbose, unit_name="image",
                                  stateful_metrics=[m.name for m in metrics])
    num_images = 0
    for images, labels in dataset:
        probabilities = predict(images)
        for metric in metrics:
            metric.update_state(labels, probabilities)
        num_images += int(tf.shape(labels)[0])
        progbar.update(num_images, [(m.name, float(m.result())) for m in metrics])
    if not num_images:
        raise ValueError("the evaluation set holds no images")
    return {"num_images": num_images, **{m.name: float(m.result()) for m in metrics}}


def results_path(flags_obj: flags.FlagValues, paths: Sequence[str]) -> str:
    """Where the JSON goes (see the module docstring)."""
    base = paths[0]
    if not base.endswith(loading.CHECKPOINT_SUFFIX) and flags_obj.model_dir:
        base = os.path.join(flags_obj.model_dir, os.path.basename(base))
    protocol = ("_ten_crop" if flags_obj.ten_crop else "") + (f"_ensemble{len(paths)}" if len(paths) > 1 else "")
    return f"{base}.eval{protocol}.json"


def run(flags_obj: flags.FlagValues, datasets_override: tf.data.Dataset | None = None) -> dict[str, Any]:
    """Evaluates as the flags say, writes the JSON and returns what it holds.

    `datasets_override`: (images, labels) batches to evaluate instead of --data_dir's validation set.
    """
    paths = loading.model_paths(flags_obj)
    data_dir = flags_obj.data_dir
    if datasets_override is None and data_dir is None:
        raise app.UsageError("--data_dir is required (prepare one with: python tools/prepare_imagenet.py "
                             "--input_dir=SRC --output_dir=DST)")
    models = [loading.load_model(path, flags_obj) for path in paths]
    image_size = _common(paths, models, loading.image_size, "image size")
    num_classes = _common(paths, models, loading.num_classes, "number of classes")
    if datasets_override is None:
        dataset_classes = pipeline.num_classes(data_dir)
        if dataset_classes != num_classes:
            raise app.UsageError(f"the model has {num_classes} classes, {data_dir} has {dataset_classes}")
        dataset = pipeline.make_eval_dataset(
            data_dir, flags_obj.batch_size, image_size=image_size, ten_crop=flags_obj.ten_crop, mean=flags_obj.mean,
            stats_path=flags_obj.stats_path, channel_order=flags_obj.channel_order,
            mean_rgb=flags_lib.mean_rgb(flags_obj))
        num_examples = pipeline.num_examples(data_dir, pipeline.VALIDATION)
    else:
        dataset, num_examples = datasets_override, None
    results = evaluate(models, dataset, num_examples, verbose=1 if sys.stdout.isatty() else 2)
    results.update(models=paths, ten_crop=flags_obj.ten_crop, data_dir=data_dir, split=pipeline.VALIDATION,
                   image_size=image_size, mean=flags_obj.mean, mean_rgb=flags_lib.mean_rgb(flags_obj),
                   channel_order=flags_obj.channel_order)
    path = results_path(flags_obj, paths)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    results["results_path"] = path
    return results


def _common(paths: Sequence[str], models: Sequence[keras.Model], get: Callable[[keras.Model], int], what: str) -> int:
    """The value of `get(model)` that every model shares; a UsageError naming them otherwise."""
    values = {path: get(model) for path, model in zip(paths, models)}
    if len(set(values.values())) > 1:
        raise app.UsageError(f"the models differ in {what}: {values}")
    return next(iter(values.values()))


def main(argv: list[str]) -> None:
    results = flags_lib.run_or_exit("evaluate", run, argv)
    crops = "ten crops" if results["ten_crop"] else "centre crop"
    models = f"{len(results['models'])} models" if len(results["models"]) > 1 else "1 model"
    print(f"top-1 error {results['top1_error']:.4f}, top-5 error {results['top5_error']:.4f} "
          f"on {results['num_images']} images ({crops}, {models}); written to {results['results_path']}")


if __name__ == "__main__":
    flags_lib.define_flags()
    app.run(main)
