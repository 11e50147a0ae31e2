"""Top-1 and top-5 error on the validation set: `python -m alexnet_tf.evaluate`.

    python -m alexnet_tf.evaluate --data_dir=/data/imagenet --checkpoint=/runs/paper/checkpoints/epoch_090.keras
    python -m alexnet_tf.evaluate --flagfile=flags/bvlc.cfg --data_dir=/data/imagenet \
        --pretrained=bvlc_alexnet.npy --ten_crop
    python -m alexnet_tf.evaluate --data_dir=/data/imagenet --ensemble=run1.keras,run2.keras,run3.keras
    python -m alexnet_tf.evaluate --data_dir=runs/demo/data --checkpoint=runs/demo/model/checkpoints/epoch_040.keras \
        --figures=runs/demo/figures

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

With --figures=DIR, Figure 4 of the paper (section 6.1) is written to DIR (`alexnet_tf.analysis.figure4`), and the JSON
gains `fc7_neighbour_agreement`: over the whole validation set, the fraction of each image's six nearest
training images (fc7 features, Euclidean) that share its class. DIR also holds the fc7 features of up to 2,000
validation images for TensorBoard's projector (`tensorboard --logdir DIR`, tab Projector; docs/tensorboard.md).

The binary has the shape of train.py: `define_flags`, `run(flags, datasets_override)`, which tests call
in-process with tiny data sets, and `main`.
"""

from __future__ import annotations

import functools
import posixpath
import sys
from typing import Any, Sequence

import keras
import tensorflow as tf
from absl import flags

from alexnet_tf import cli, errors, files
from alexnet_tf.analysis import figure4
from alexnet_tf.data import pipeline, records
from alexnet_tf.model import alexnet, loading, presets
from alexnet_tf.metrics import TOP_K, TopKError
from alexnet_tf.training import run_summaries


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """This binary's flags (`--help` lists them all, the shared groups of cli.py included)."""
    cli.define_model_flags(fv)
    cli.define_data_flags(fv, training=False)
    cli.define_model_file_flags(fv, ensemble=True)
    cli.define_dtype_policy_flag(fv)
    flags.DEFINE_boolean("ten_crop", False, "Average the softmax over ten crops (section 4.1).", flag_values=fv)
    flags.DEFINE_integer("batch_size", 128, "Images per evaluation step.", lower_bound=1, flag_values=fv)
    flags.DEFINE_string("figures", None, "Also write Figure 4 to this folder: predictions.png (eight validation images "
                        "and their top-5 labels) and neighbours.png (five validation images and their six nearest "
                        "training images in fc7's feature space), of the first model, and the fc7 features of the "
                        "validation images for TensorBoard's projector (tensorboard --logdir DIR); adds "
                        "fc7_neighbour_agreement to the JSON.", flag_values=fv)
    flags.DEFINE_string("model_dir", None, "Where the JSON of a .npy model's evaluation goes (default: beside it).",
                        flag_values=fv)
    flags.adopt_module_key_flags(cli, flag_values=fv)


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
        raise errors.DataError("the evaluation set holds no images")
    return {"num_images": num_images, **{m.name: float(m.result()) for m in metrics}}


def results_path(flags_obj: flags.FlagValues, paths: Sequence[str]) -> str:
    """Where the JSON goes (see the module docstring)."""
    base = paths[0]
    if not base.endswith(loading.CHECKPOINT_SUFFIX) and flags_obj.model_dir:
        base = files.join(flags_obj.model_dir, posixpath.basename(base))
    protocol = ("_ten_crop" if flags_obj.ten_crop else "") + (f"_ensemble{len(paths)}" if len(paths) > 1 else "")
    return f"{base}.eval{protocol}.json"


def run(flags_obj: flags.FlagValues, datasets_override: tf.data.Dataset | None = None) -> dict[str, Any]:
    """Evaluates as the flags say, writes the JSON and returns what it holds.

    `datasets_override`: (images, labels) batches to evaluate instead of --data_dir's validation set.
    """
    paths = cli.model_paths(flags_obj)
    # Where the numbers and figures go, checked before the models run over the whole validation set.
    for folder in {posixpath.dirname(results_path(flags_obj, paths)) or ".", flags_obj.figures} - {None}:
        try:
            files.check_writable(folder)
        except (OSError, tf.errors.OpError) as error:
            raise errors.write_error(folder, error) or error
    npy_only = not any(path.endswith(loading.CHECKPOINT_SUFFIX) for path in paths)
    # A .npy file is read as the bvlc_alexnet preset unless --preset names another: so is its input.
    data = cli.data_config(flags_obj, default_preset=presets.BVLC_ALEXNET if npy_only else presets.PAPER)
    source = None if datasets_override is not None else data.source()
    keras.mixed_precision.set_global_policy(flags_obj.dtype_policy)
    loaded = cli.load_models(flags_obj)
    paths, models = [path for path, _ in loaded], [model for _, model in loaded]
    architectures = [alexnet.architecture_of(model) for model in models]
    image_size = _common(paths, [c.image_size for c in architectures], "image size")
    num_classes = _common(paths, [c.num_classes for c in architectures], "number of classes")
    if source is not None:
        if source.num_classes != num_classes:
            raise errors.ConfigError(f"the model has {num_classes} classes, {data.data_dir} has {source.num_classes}")
        dataset = pipeline.make_eval_dataset(data, flags_obj.batch_size, image_size, ten_crop=flags_obj.ten_crop,
                                             source=source)
        num_examples = source.num_examples(records.VALIDATION)
    else:
        dataset, num_examples = datasets_override, None
    results = evaluate(models, dataset, num_examples, verbose=1 if sys.stdout.isatty() else 2)
    if flags_obj.figures:
        if source is None:
            raise errors.ConfigError("--figures needs --data_dir's training and validation splits")
        figure = figure4.figure4(models[0], data, image_size, source=source)
        results.update(figure4.write_figure4(figure, flags_obj.figures))
        results.update(run_summaries.write_projector(flags_obj.figures, figure.embedding))
    results.update(models=paths, ten_crop=flags_obj.ten_crop, data_dir=data.data_dir, split=records.VALIDATION,
                   image_size=image_size, mean=data.mean, mean_rgb=data.mean_rgb, channel_order=data.channel_order)
    path = results_path(flags_obj, paths)
    files.write_json(path, results)
    results["results_path"] = path
    return results


def _common(paths: Sequence[str], values: Sequence[int], what: str) -> int:
    """The value every model shares; a ConfigError naming them otherwise."""
    by_path = dict(zip(paths, values))
    if len(set(values)) > 1:
        raise errors.ConfigError(f"the models differ in {what}: {by_path}")
    return values[0]


def main(argv: list[str]) -> None:
    results = cli.run_main("evaluate", lambda: run(flags.FLAGS), argv)
    crops = "ten crops" if results["ten_crop"] else "centre crop"
    models = f"{len(results['models'])} models" if len(results["models"]) > 1 else "1 model"
    print(f"top-1 error {results['top1_error']:.4f}, top-5 error {results['top5_error']:.4f} "
          f"on {results['num_images']} images ({crops}, {models}); written to {results['results_path']}")


if __name__ == "__main__":
    define_flags()
    cli.quiet_main(main, "evaluate")
