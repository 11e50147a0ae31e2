"""Trains AlexNet: `python -m alexnet_tf.train --flagfile=flags/paper.cfg`.

The binary in three parts, as tensorflow/models' classifiers: the flags (alexnet_tf/flags.py),
`run(flags, strategy_override=None, datasets_override=None)`, which tests call in-process with
tiny datasets and strategies, and `main`.

MODEL_DIR receives:
- checkpoints/epoch_NNN.keras: the model and optimizer after each epoch (the last
  --keep_checkpoints kept), loadable with keras.models.load_model after `import alexnet_tf`;
- backup/: Keras BackupAndRestore's state and plateau.json, the learning-rate schedule's, so
  that the same command after a crash continues from the last finished epoch;
- logs/: TensorBoard (train/, validation/, conv1/);
- results.json: the final numbers.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from PIL import Image

from alexnet_tf import distribute, export, multi_worker, safeguards, summaries, model as model_lib
from alexnet_tf.data import pipeline
from alexnet_tf import flags as flags_lib
from alexnet_tf import weights as weights_lib
from alexnet_tf.metrics import TopKError
from alexnet_tf.optimizer import PaperSGD
from alexnet_tf.schedule import PlateauSchedule

FLAGS = flags.FLAGS
CHECKPOINT_PATTERN = "epoch_{epoch:03d}.keras"
CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


@dataclasses.dataclass
class Datasets:
    """What a run trains and validates on. Tests pass their own through `datasets_override`."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    num_classes: int
    train_examples: int | None = None
    validation_examples: int | None = None


def create_datasets(flags_obj: flags.FlagValues, batch_size: int) -> Datasets:
    """The training and validation sets of --data_dir; raises TrainingError if it cannot be read."""
    try:
        return _create_datasets(flags_obj, batch_size)
    except json.JSONDecodeError as error:
        raise safeguards.TrainingError(f"{flags_obj.data_dir}: {pipeline.DATASET_INFO_FILENAME} is not "
                                       f"valid JSON ({error}): prepare the data set again") from None
    except ValueError as error:  # input_pipeline's messages name the problem.
        raise safeguards.TrainingError(str(error)) from None


def _create_datasets(flags_obj: flags.FlagValues, batch_size: int) -> Datasets:
    data_dir = flags_obj.data_dir
    common = dict(image_size=flags_obj.image_size, mean=flags_obj.mean, stats_path=flags_obj.stats_path,
                  channel_order=flags_obj.channel_order, mean_rgb=flags_lib.mean_rgb(flags_obj))
    train = pipeline.make_train_dataset(
        data_dir, batch_size, seed=flags_obj.seed, deterministic=flags_obj.deterministic,
        pca_noise=flags_obj.pca_noise, shuffle_buffer=flags_obj.shuffle_buffer, **common)
    try:
        validation = pipeline.make_eval_dataset(data_dir, batch_size, **common)
    except FileNotFoundError:
        logging.warning("%s has no validation split: the learning rate will not be scheduled.", data_dir)
        validation = None
    return Datasets(train, validation, pipeline.num_classes(data_dir),
                    pipeline.num_examples(data_dir, pipeline.TRAIN),
                    None if validation is None else pipeline.num_examples(data_dir, pipeline.VALIDATION))


def create_model(flags_obj: flags.FlagValues, num_classes: int) -> keras.Model:
    """The model the flags describe, with --pretrained weights and --freeze_conv applied."""
    kwargs = flags_lib.model_kwargs(flags_obj, num_classes)
    if flags_obj.strategy == "towers":
        if flags_obj.towers != 2:
            raise app.UsageError("--strategy=towers needs --towers=2")
        kwargs["tower_devices"] = distribute.tower_devices(flags_obj.tower_devices)
    model = model_lib.build_alexnet(**kwargs)
    if flags_obj.pretrained:
        load_pretrained(model, flags_obj.pretrained)
    if flags_obj.freeze_conv:
        for layer in model.layers:
            if layer.name.rstrip("ab") in CONV_LAYERS:
                layer.trainable = False
    return model


def load_pretrained(model: keras.Model, path: str) -> None:
    """Every layer of a .npy (bvlc layout) or .keras file; fc8 only where its shape fits."""
    if path.endswith(".keras"):
        weights = weights_lib.npy_weights(keras.models.load_model(path, compile=False))
    else:
        weights = weights_lib.read_npy(path)
    fc8 = model_lib.inner_layer(model, "fc8").kernel.shape
    skip = () if tuple(weights["fc8"][0].shape) == tuple(fc8) else ("fc8",)
    if skip:
        logging.info("fc8 is new: %s classes instead of the file's %d.", fc8[-1], weights["fc8"][0].shape[-1])
    try:
        weights_lib.load_npy_weights(model, weights, skip=skip)
    except ValueError as error:  # It names the layer and both shapes.
        raise safeguards.TrainingError(f"--pretrained={path} is another model variant: {error}") from None


def compile_model(model: keras.Model, flags_obj: flags.FlagValues) -> None:
    optimizer = PaperSGD(flags_obj.learning_rate, flags_obj.momentum, flags_obj.weight_decay)
    # With a mixed_float16 policy, Keras wraps the optimizer in a LossScaleOptimizer itself.
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[TopKError(1), TopKError(5)],
        jit_compile=flags_obj.xla,
    )


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


class KeepLastCheckpoints(keras.callbacks.Callback):
    """Deletes all but the newest `keep` epoch checkpoints after each epoch."""

    def __init__(self, directory: str, keep: int):
        super().__init__()
        self.directory, self.keep = directory, keep

    def on_epoch_end(self, epoch, logs=None):
        for path in checkpoints(self.directory)[: -self.keep]:
            os.remove(path)


def checkpoints(directory: str) -> list[str]:
    """Epoch checkpoints in `directory`, oldest first."""
    return sorted(glob.glob(os.path.join(directory, "epoch_*.keras")))


def create_callbacks(flags_obj: flags.FlagValues, model_dir: str, batch_size: int,
                     chief: bool) -> tuple[list[keras.callbacks.Callback], Throughput]:
    checkpoint_dir = os.path.join(model_dir, "checkpoints")
    backup_dir = os.path.join(model_dir, "backup")
    log_dir = os.path.join(model_dir, "logs")
    throughput = Throughput(batch_size)
    callbacks = [
        # First: a diverged epoch raises before any other callback saves it.
        safeguards.StopOnNaN(),
        throughput,
        # Before BackupAndRestore: the schedule's state file is then never older than the backup.
        PlateauSchedule(
            patience_epochs=flags_obj.lr_patience_epochs, min_delta=flags_obj.lr_min_delta,
            max_reductions=flags_obj.lr_max_reductions, state_path=os.path.join(backup_dir, "plateau.json"),
            is_chief=chief),
        # double_checkpoint: Keras writes the backup in place, so a kill during the write leaves a
        # corrupt file; it then restores the previous epoch's backup instead. Other workers restore the
        # chief's backup and never write it: a save frequency of sys.maxsize batches is never reached.
        keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch" if chief else sys.maxsize,
                                         double_checkpoint=True, delete_checkpoint=False),
    ]
    if chief:
        os.makedirs(checkpoint_dir, exist_ok=True)
        callbacks += [
            keras.callbacks.ModelCheckpoint(os.path.join(checkpoint_dir, CHECKPOINT_PATTERN)),
            KeepLastCheckpoints(checkpoint_dir, flags_obj.keep_checkpoints),
            keras.callbacks.TensorBoard(log_dir, update_freq="epoch"),
            summaries.Conv1Summaries(log_dir, is_chief=chief),
        ]
    return callbacks, throughput


def run(flags_obj: flags.FlagValues, strategy_override: tf.distribute.Strategy | None = None,
        datasets_override: Datasets | None = None) -> dict[str, Any]:
    """Trains as the flags say and returns what it writes to MODEL_DIR/results.json."""
    if flags_obj.model_dir is None:
        raise app.UsageError("--model_dir is required")
    if flags_obj.xla and flags_obj.strategy == "towers":
        raise app.UsageError("--xla: XLA ignores tf.device placement (tensorflow issue 124880), so it is "
                             "refused with --strategy=towers")
    if flags_obj.seed is not None:
        keras.utils.set_random_seed(flags_obj.seed)
    if flags_obj.deterministic:
        tf.config.experimental.enable_op_determinism()
    if flags_obj.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    if flags_obj.demo:
        prepare_demo(flags_obj.data_dir)
    strategy = strategy_override or distribute.make_strategy(flags_obj.strategy, flags_obj.cluster_timeout)
    chief = distribute.is_chief(strategy)
    batch_size = flags_obj.batch_size
    if datasets_override is None and flags_obj.data_dir is None:
        raise app.UsageError("--data_dir is required (prepare one with: python tools/prepare_imagenet.py "
                             "--input_dir=SRC --output_dir=DST)")
    datasets = datasets_override or create_datasets(flags_obj, batch_size)
    num_classes = flags_obj.num_classes or datasets.num_classes
    variant = safeguards.ModelVariantRecord(flags_obj.model_dir, model_variant(flags_obj, num_classes), chief)
    variant.check()
    steps_per_epoch = flags_obj.steps_per_epoch
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        steps_per_epoch = in_lockstep(datasets, strategy.num_replicas_in_sync, batch_size, steps_per_epoch)
    with strategy.scope():
        model = create_model(flags_obj, num_classes)
        compile_model(model, flags_obj)
    os.makedirs(flags_obj.model_dir, exist_ok=True)
    callbacks, throughput = create_callbacks(flags_obj, flags_obj.model_dir, batch_size, chief)
    logging.info("Training %s (%s parameters) with %s on %d replica(s).", model.name,
                 f"{model.count_params():,}", type(strategy).__name__, strategy.num_replicas_in_sync)
    history = fit(model, datasets, flags_obj, steps_per_epoch, [*callbacks, variant])
    results = summarize(flags_obj, history, throughput)
    if chief:
        results["conv1_png"] = write_conv1_png(model, os.path.join(flags_obj.model_dir, "conv1.png"))
        export_dir = flags_obj.export_dir or os.path.join(flags_obj.model_dir, "export")
        verbosity = logging.get_verbosity()
        logging.set_verbosity(logging.WARNING)  # TensorFlow's SavedModel writer logs every step at INFO.
        try:
            results["export_dir"] = export.export_model(model, flags_obj, export_dir)["export_dir"]
        finally:
            logging.set_verbosity(verbosity)
        with open(os.path.join(flags_obj.model_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    else:  # Written only to check a run: every worker must end with the chief's weights.
        results["checkpoint"] = None  # The chief may not have written the last one yet.
        results["worker_model"] = os.path.join(multi_worker.worker_dir(flags_obj.model_dir, strategy), "model.keras")
        os.makedirs(os.path.dirname(results["worker_model"]), exist_ok=True)
        model.save(results["worker_model"])
    return results


def in_lockstep(datasets: Datasets, replicas: int, batch_size: int, steps_per_epoch: int | None) -> int:
    """Makes `datasets` fit for multi_worker (`multi_worker.lockstep_datasets`); returns an epoch's steps."""
    if batch_size % replicas:
        raise app.UsageError(f"--batch_size={batch_size} does not split evenly over the cluster's {replicas} replicas")
    steps_per_epoch = steps_per_epoch or (datasets.train_examples or 0) // batch_size
    if not steps_per_epoch:
        raise app.UsageError("--strategy=multi_worker needs --steps_per_epoch: the training set's size is unknown")
    datasets.train, datasets.validation = multi_worker.lockstep_datasets(
        datasets.train, datasets.validation, batch_size, datasets.validation_examples)
    return steps_per_epoch


def fit(model: keras.Model, datasets: Datasets, flags_obj: flags.FlagValues, steps_per_epoch: int | None,
        callbacks: list[keras.callbacks.Callback]) -> keras.callbacks.History:
    """`model.fit`, with the errors a user can cause or meet turned into one-line TrainingErrors."""
    try:
        return model.fit(
            datasets.train,
            validation_data=datasets.validation,
            epochs=flags_obj.epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            shuffle=False,  # The input pipeline shuffles.
            verbose=2 if not sys.stdout.isatty() else 1,
        )
    except tf.errors.DataLossError as error:
        raise safeguards.corrupt_data_error(flags_obj.data_dir, error) from None
    except multi_worker.PEER_ERRORS as error:
        if not isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise multi_worker.worker_lost(error, flags_obj.cluster_timeout) from None


def model_variant(flags_obj: flags.FlagValues, num_classes: int) -> dict[str, Any]:
    """The flags that shape the model's and the optimizer's variables, which a resumed run must keep."""
    variant = flags_lib.model_kwargs(flags_obj, num_classes)
    for initialization_only in ("seed", "init"):
        del variant[initialization_only]
    return variant | {"mixed_precision": flags_obj.mixed_precision, "freeze_conv": flags_obj.freeze_conv}


def summarize(flags_obj: flags.FlagValues, history: keras.callbacks.History, throughput: Throughput) -> dict:
    last = {key: values[-1] for key, values in history.history.items() if values}
    saved = checkpoints(os.path.join(flags_obj.model_dir, "checkpoints"))
    return {
        "epochs": flags_obj.epochs,
        "val_top1_error": _number(last.get("val_top1_error")),
        "val_top5_error": _number(last.get("val_top5_error")),
        "train_top1_error": _number(last.get("top1_error")),
        "train_loss": _number(last.get("loss")),
        "learning_rate": _number(last.get("learning_rate")),
        "train_images_per_sec": _number(float(np.median(throughput.rates)) if throughput.rates else None),
        "checkpoint": saved[-1] if saved else None,
        "tensorboard_logdir": os.path.join(flags_obj.model_dir, "logs"),
    }


def write_conv1_png(model: keras.Model, path: str) -> str:
    """The conv1 filters as one grid image (as TensorBoard shows them), saved as a PNG."""
    grid = summaries.upscale(summaries.filter_grid(model_lib.conv1_kernel(model)), summaries.DEFAULT_SUMMARY_SCALE)
    Image.fromarray(grid).save(path)
    return path


def _number(value) -> float | None:
    return None if value is None else float(value)


def prepare_demo(data_dir: str | None) -> None:
    """Generates and prepares the offline demo dataset in `data_dir`, unless it is there."""
    from alexnet_tf.data import demo, prepare  # Only the demo needs them.

    if data_dir is None:
        raise app.UsageError("--demo needs --data_dir")
    if os.path.exists(os.path.join(data_dir, pipeline.DATASET_INFO_FILENAME)):
        return
    raw = os.path.join(data_dir, "raw")
    if not os.path.isdir(raw):  # generate() writes the folder whole or not at all.
        demo.generate(raw)
    prepare.prepare(raw, data_dir, stored_size=demo.DEFAULT_SIZE,
                    names_file=os.path.join(raw, demo.NAMES_FILE))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        results = run(FLAGS)
    except (FileNotFoundError, app.UsageError, safeguards.TrainingError) as error:
        # Impossible flags, bad input, a diverged loss, a lost worker: one line, no traceback.
        print(f"train: error: {error}", file=sys.stderr)
        code = getattr(error, "exit_code", 1)
        multi_worker.exit_if_joined(code)
        sys.exit(code)
    if results["val_top1_error"] is not None:
        print(f"Validation top-1 error {results['val_top1_error']:.4f}, top-5 error "
              f"{results['val_top5_error']:.4f} after {results['epochs']} epochs.")
    for what, where in [("Checkpoint", results["checkpoint"]),
                        ("TensorBoard", f"tensorboard --logdir {results['tensorboard_logdir']}"),
                        ("SavedModel", results.get("export_dir")), ("conv1 filters", results.get("conv1_png")),
                        ("Worker model", results.get("worker_model")),
                        ("Results", os.path.join(FLAGS.model_dir, "results.json"))]:
        if where:
            print(f"{what + ':':15}{where}")


if __name__ == "__main__":
    flags_lib.define_flags()
    app.run(main)
