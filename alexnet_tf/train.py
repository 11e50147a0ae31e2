"""Trains AlexNet: `python -m alexnet_tf.train --flagfile=flags/paper.cfg`.

The binary in the shape of tensorflow/models' classifiers: `define_flags` (this binary's flags, and only
these), `config_from_flags` (the flags become a typed `TrainConfig` once, here), `run(flags_obj,
strategy_override=None, datasets_override=None)`, which tests call in-process with tiny data sets and
strategies, and `main`. `build` makes every training object (model, optimizer, schedule, data sets,
callbacks) without fitting, so a test can check that each setting reaches the object that uses it.

MODEL_DIR's layout is `alexnet_tf.model_dir`'s: epoch checkpoints loadable with keras.models.load_model after
`import alexnet_tf`, a backup from which the same command continues after a crash, TensorBoard logs,
conv1.png, the SavedModel and results.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Any, Iterator

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging

from alexnet_tf import cli, errors, files, serving
from alexnet_tf import model_dir as model_dir_lib
from alexnet_tf.data import demo, records, sources
from alexnet_tf.data import pipeline
from alexnet_tf.metrics import TOP_K, TopKError
from alexnet_tf.model import alexnet, loading, npy_weights, presets
from alexnet_tf.model.architecture import TOWER_CHANNELS, AlexNetConfig
from alexnet_tf.training import callbacks as callbacks_lib
from alexnet_tf.training import distribute, multi_worker, results as results_lib, run_guard
from alexnet_tf.training.config import BATCH_SIZE, EPOCHS, TrainConfig
from alexnet_tf.training.optimizer import OptimizerConfig
from alexnet_tf.training.schedule import ScheduleConfig


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """This binary's flags, with the defaults of the configs they fill (the paper's recipe)."""
    cli.define_model_flags(fv)
    cli.define_data_flags(fv, training=True)
    cli.define_dtype_policy_flag(fv)
    optimizer, schedule = OptimizerConfig(), ScheduleConfig()
    flags.DEFINE_string("model_dir", None, "Where checkpoints, TensorBoard logs and results.json go (local, "
                        "gs://, any tf.io.gfile path).", flag_values=fv)
    flags.DEFINE_integer("epochs", EPOCHS, "Passes over the training set (section 5: roughly 90).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("batch_size", BATCH_SIZE, "Global batch size, images (section 5).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("steps_per_epoch", None, "Limit each epoch to this many steps (default: the whole set).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("learning_rate", optimizer.learning_rate, "Initial learning rate (section 5).",
                       lower_bound=1e-12, flag_values=fv)
    flags.DEFINE_float("momentum", optimizer.momentum, "SGD momentum (section 5).", lower_bound=0.0,
                       upper_bound=0.999999, flag_values=fv)
    flags.DEFINE_float("weight_decay", optimizer.weight_decay,
                       "Weight decay inside the gradient step, as the paper's update rule (section 5).",
                       lower_bound=0.0, flag_values=fv)
    flags.DEFINE_integer("lr_patience_epochs", schedule.patience_epochs, "Epochs without improvement of the "
                         "validation error before the learning rate is divided by 10 (section 5).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_float("lr_min_delta", schedule.min_delta, "Smallest drop of the validation top-1 error that "
                       "counts as improvement.", lower_bound=0.0, flag_values=fv)
    flags.DEFINE_integer("lr_max_reductions", schedule.max_reductions, "At most this many divisions by 10 "
                         "(section 5: three).", lower_bound=0, flag_values=fv)
    flags.DEFINE_enum("strategy", TrainConfig.strategy, list(distribute.STRATEGIES),
                      "one_device; mirrored (data parallel over local GPUs); towers (the paper's model "
                      "parallelism on --tower_devices); multi_worker (TF_CONFIG).", flag_values=fv)
    flags.DEFINE_list("tower_devices", list(TrainConfig.tower_devices), "The two devices of --strategy=towers.",
                      flag_values=fv)
    flags.register_validator("tower_devices", lambda v: len(v) == 2, "--tower_devices takes two devices",
                             flag_values=fv)
    flags.DEFINE_float("cluster_timeout", TrainConfig.cluster_timeout,
                       "multi_worker: seconds to wait for every worker of TF_CONFIG to join, and for any collective "
                       "operation; a worker silent for longer stops the others with an error.",
                       lower_bound=1e-3, flag_values=fv)
    flags.DEFINE_boolean("xla", False, "XLA-compile the train step (refused with --strategy=towers).",
                         flag_values=fv)
    flags.DEFINE_integer("seed", None, "Seeds initialization, shuffling and augmentation.", flag_values=fv)
    flags.DEFINE_boolean("deterministic", False, "Op determinism and the --seed everywhere: two runs of the same "
                         "command on the same machine end with identical weights.", flag_values=fv)
    flags.DEFINE_integer("keep_checkpoints", TrainConfig.keep_checkpoints, "Epoch checkpoints kept in "
                         "MODEL_DIR/checkpoints.", lower_bound=1, flag_values=fv)
    flags.DEFINE_boolean("demo", False, "Generate the offline demo data set in --data_dir if it is not there.",
                         flag_values=fv)
    flags.DEFINE_string("pretrained", None, "Fine-tune from a .keras checkpoint (the network it describes: model "
                        "flags that contradict it are refused) or a bvlc_alexnet-layout .npy file (the bvlc_alexnet "
                        "preset and its input, unless --preset says otherwise); fc8 is new when the number of "
                        "classes differs.", flag_values=fv)
    flags.DEFINE_boolean("freeze_conv", False, "With --pretrained, train only the fully connected layers.",
                         flag_values=fv)
    flags.DEFINE_string("export_dir", None, "Where the SavedModel goes; default MODEL_DIR/export.", flag_values=fv)
    # TensorBoard (docs/tensorboard.md).
    flags.DEFINE_integer("histogram_freq", TrainConfig.histogram_freq, "Epochs between two TensorBoard histograms "
                         "of the weights and sparsities of the ReLU outputs (0: none).", lower_bound=0, flag_values=fv)
    flags.DEFINE_list("profile_steps", TrainConfig.profile_steps, "START,END: trace these batches (1-based, from the "
                      "start of this command) with TensorFlow's profiler, for TensorBoard's Profile tab.",
                      flag_values=fv)
    flags.adopt_module_key_flags(cli, flag_values=fv)


def config_from_flags(fv: flags.FlagValues) -> TrainConfig:
    """The flags as a TrainConfig; raises errors.ConfigError for settings that cannot work together."""
    if fv.model_dir is None:
        raise errors.ConfigError("--model_dir is required")
    default_preset = presets.PAPER
    if fv.pretrained and fv.pretrained.endswith(loading.CHECKPOINT_SUFFIX):
        architecture = pretrained_architecture(fv)
    else:  # A .npy file holds Caffe's bvlc_alexnet unless --preset (a recipe) says otherwise: its input too.
        default_preset = presets.BVLC_ALEXNET if fv.pretrained else presets.PAPER
        architecture = cli.architecture_from_flags(fv, default_preset, seed=fv.seed)
    return TrainConfig(
        architecture=architecture,
        data=cli.data_config(fv, default_preset),
        optimizer=OptimizerConfig(fv.learning_rate, fv.momentum, fv.weight_decay),
        schedule=ScheduleConfig(fv.lr_patience_epochs, fv.lr_min_delta, fv.lr_max_reductions),
        model_dir=fv.model_dir, epochs=fv.epochs, batch_size=fv.batch_size, steps_per_epoch=fv.steps_per_epoch,
        strategy=fv.strategy, tower_devices=tuple(fv.tower_devices), cluster_timeout=fv.cluster_timeout,
        dtype_policy=fv.dtype_policy, xla=fv.xla, seed=fv.seed, deterministic=fv.deterministic,
        keep_checkpoints=fv.keep_checkpoints, demo=fv.demo, pretrained=fv.pretrained, freeze_conv=fv.freeze_conv,
        export_dir=fv.export_dir, classes_from_data=fv.num_classes is None, histogram_freq=fv.histogram_freq,
        profile_steps=profile_steps(fv.profile_steps))


def profile_steps(values: list[str] | None) -> tuple[int, ...] | None:
    """--profile_steps as integers (TrainConfig checks them); a ConfigError for what is not an integer."""
    if not values:
        return None
    try:
        return tuple(int(value) for value in values)
    except ValueError:
        raise errors.ConfigError(f"--profile_steps={','.join(values)}: give START,END, two batch numbers (e.g. "
                                 "10,15)") from None


def pretrained_architecture(fv: flags.FlagValues) -> AlexNetConfig:
    """The architecture of a --pretrained .keras checkpoint, which fine-tuning keeps: a model flag that contradicts
    it is a ConfigError naming both values; only --num_classes (a new fc8) may differ. Read without building it."""
    architecture = loading.checkpoint_architecture(fv.pretrained)
    cli.check_against_checkpoint(fv, fv.pretrained, architecture, may_differ=("num_classes",))
    return dataclasses.replace(architecture, num_classes=fv.num_classes or architecture.num_classes, seed=fv.seed)


@dataclasses.dataclass
class Datasets:
    """What a run trains and validates on, and the data set they come from (opened once, read again by the figures
    and the export). Tests pass their own through `datasets_override`."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    num_classes: int
    train_examples: int | None = None
    validation_examples: int | None = None
    source: sources.Source | None = None


def create_datasets(config: TrainConfig) -> Datasets:
    """The training set (random crops, flips, PCA noise: section 4.1) and the validation set (centre crops)."""
    source = config.data.source()
    image_size = config.architecture.image_size
    train = pipeline.make_train_dataset(config.data, config.batch_size, image_size, seed=config.seed,
                                        deterministic=config.deterministic, source=source)
    validation = None
    if source.has_split(records.VALIDATION):
        validation = pipeline.make_eval_dataset(config.data, config.batch_size, image_size, source=source)
    else:
        logging.warning("%s has no validation split: the learning rate will not be scheduled.",
                        config.data.data_dir)
    return Datasets(train, validation, source.num_classes, source.num_examples(records.TRAIN),
                    source.num_examples(records.VALIDATION) if validation is not None else None, source)


def create_model(config: TrainConfig, architecture: AlexNetConfig) -> keras.Model:
    """The model of `architecture`, placed on the tower devices with --strategy=towers, with --pretrained weights
    and --freeze_conv applied."""
    devices = distribute.tower_devices(config.tower_devices) if config.strategy == "towers" else None
    model = alexnet.build_alexnet(config=architecture, tower_devices=devices)
    if config.pretrained:
        load_pretrained(model, config.pretrained)
    if config.freeze_conv:
        for layer in alexnet.conv_layers(model):
            layer.trainable = False
        logging.info("--freeze_conv: conv1 to conv5 are frozen; fc6, fc7 and fc8 train (%s of %s parameters).",
                     f"{sum(int(np.prod(v.shape)) for v in model.trainable_variables):,}", f"{model.count_params():,}")
    return model


def load_pretrained(model: keras.Model, path: str) -> None:
    """Every layer of a .npy (bvlc layout) or .keras file into `model`; fc8 only where its shape fits."""
    weights = npy_weights.npy_weights(loading.load_model(path)) if path.endswith(loading.CHECKPOINT_SUFFIX) \
        else npy_weights.read_npy(path)
    fc8 = tuple(alexnet.inner_layer(model, "fc8").kernel.shape)
    skip = () if tuple(weights["fc8"][0].shape) == fc8 else ("fc8",)
    try:
        npy_weights.load_npy_weights(model, weights, skip=skip)
    except errors.ModelFileError as error:  # It names the layer and both shapes.
        width = weights["conv1"][0].shape[-1] / (2 * TOWER_CHANNELS["conv1"])
        raise errors.ModelFileError(f"--pretrained={path} is another model variant: {error} (its conv1 has "
                                    f"{weights['conv1'][0].shape[-1]} filters: --width={width:g})") from None
    loaded = [name for name in npy_weights.LAYERS if name not in skip]
    logging.info("Fine-tuning from %s: %s loaded%s.", path, ", ".join(loaded),
                 f"; fc8 is new ({fc8[-1]} classes; the file's has {weights['fc8'][0].shape[-1]})" if skip else "")


def compile_model(model: keras.Model, config: TrainConfig) -> None:
    """PaperSGD (section 5), softmax cross-entropy on the logits, top-1 and top-5 error (section 6)."""
    # With a mixed_float16 policy, Keras wraps the optimizer in a LossScaleOptimizer itself.
    model.compile(
        optimizer=config.optimizer.build(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[TopKError(k) for k in TOP_K],
        jit_compile=config.xla,
    )


@dataclasses.dataclass
class Trainer:
    """The objects of one run, made by `build`, before `model.fit`."""

    config: TrainConfig
    strategy: tf.distribute.Strategy
    chief: bool
    datasets: Datasets
    model: keras.Model
    callbacks: callbacks_lib.RunCallbacks
    steps_per_epoch: int | None
    lock: run_guard.RunLock


def build(config: TrainConfig, strategy_override: tf.distribute.Strategy | None = None,
          datasets_override: Datasets | None = None) -> Trainer:
    """Every training object of `config`, ready for `fit`; sets the process-wide seed and dtype policy."""
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(config.dtype_policy)
    if tf.io.gfile.exists(config.model_dir) and not tf.io.gfile.isdir(config.model_dir):
        raise errors.ConfigError(f"--model_dir={config.model_dir} is a file, not a folder")
    if config.demo and datasets_override is None:
        demo.ensure_demo_data(config.data.data_dir)
    strategy = strategy_override or distribute.make_strategy(config.strategy, config.cluster_timeout)
    chief = distribute.is_chief(strategy)
    datasets = datasets_override or create_datasets(config)
    if config.classes_from_data:
        config = dataclasses.replace(config, architecture=dataclasses.replace(
            config.architecture, num_classes=datasets.num_classes))
    elif config.architecture.num_classes < datasets.num_classes:
        raise errors.ConfigError(f"--num_classes={config.architecture.num_classes} is fewer than the "
                                 f"{datasets.num_classes} classes of {config.data.data_dir}: fc8 needs one per class")
    # The lock, once the data set is known to be readable and before anything is written to MODEL_DIR. Workers of
    # a cluster share MODEL_DIR, and only the chief writes it; their restarts must not find it locked.
    lock = run_guard.RunLock(config.model_dir)
    if chief and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        lock.acquire()
    try:
        changed = run_guard.RunRecord(config.model_dir, run_variant(config), chief, run_settings(config)).check()
        if chief:
            files.write_json(files.join(config.model_dir, model_dir_lib.CONFIG), config.to_json())
        steps_per_epoch = config.steps_per_epoch
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            steps_per_epoch = in_lockstep(datasets, strategy.num_replicas_in_sync, config.batch_size,
                                          steps_per_epoch)
        with strategy.scope():
            model = create_model(config, config.architecture)
            compile_model(model, config)
        # A resumed run given another --learning_rate continues at it (e.g. a lower one after a divergence).
        learning_rate = changed.get("learning_rate", (None, None))[1]
        callbacks = callbacks_lib.make_callbacks(config, chief, learning_rate,
                                                 element_spec=datasets.train.element_spec,
                                                 validation=datasets.validation, source=datasets.source)
    except BaseException:
        lock.release()
        raise
    return Trainer(config, strategy, chief, datasets, model, callbacks, steps_per_epoch, lock)


def run_variant(config: TrainConfig) -> dict[str, Any]:
    """What a resumed run must keep (`run_guard.RunRecord`): what shapes the model's and the optimizer's variables
    (the architecture, less its initialization, which a resume does not use; the dtype policy; --freeze_conv) and
    what gives the model's inputs their meaning (channel order and mean: the export serves with them)."""
    initialization = ("seed", "init", "conv1_init_gain")
    architecture = {k: v for k, v in dataclasses.asdict(config.architecture).items() if k not in initialization}
    data = config.data
    return {**architecture, "dtype_policy": config.dtype_policy, "freeze_conv": config.freeze_conv,
            "channel_order": data.channel_order, "mean": data.mean, "mean_rgb": data.mean_rgb}


def run_settings(config: TrainConfig) -> dict[str, Any]:
    """What a resumed run may change, each change said in one line (`run_guard.RunRecord`)."""
    return {"learning_rate": config.optimizer.learning_rate, "momentum": config.optimizer.momentum,
            "weight_decay": config.optimizer.weight_decay, "batch_size": config.batch_size,
            "data_dir": config.data.data_dir, "stats_path": config.data.stats_path, "pca_noise": config.data.pca_noise,
            "lr_patience_epochs": config.schedule.patience_epochs, "lr_min_delta": config.schedule.min_delta,
            "lr_max_reductions": config.schedule.max_reductions}


def in_lockstep(datasets: Datasets, replicas: int, batch_size: int, steps_per_epoch: int | None) -> int:
    """Makes `datasets` fit for multi_worker (`multi_worker.lockstep_datasets`); returns an epoch's steps."""
    if batch_size % replicas:
        raise errors.ConfigError(f"--batch_size={batch_size} does not split evenly over the cluster's {replicas} "
                                 "replicas")
    steps_per_epoch = steps_per_epoch or (datasets.train_examples or 0) // batch_size
    if not steps_per_epoch:
        raise errors.ConfigError("--strategy=multi_worker needs --steps_per_epoch: the training set's size is "
                                 "unknown")
    datasets.train, datasets.validation = multi_worker.lockstep_datasets(
        datasets.train, datasets.validation, batch_size, datasets.validation_examples)
    return steps_per_epoch


def fit(trainer: Trainer) -> keras.callbacks.History:
    """`model.fit`, with the errors a user can cause or meet turned into one-line errors."""
    config = trainer.config
    try:
        return trainer.model.fit(
            trainer.datasets.train,
            validation_data=trainer.datasets.validation,
            epochs=config.epochs,
            steps_per_epoch=trainer.steps_per_epoch,
            callbacks=trainer.callbacks.all,
            shuffle=False,  # The input pipeline shuffles.
            verbose=2 if not sys.stdout.isatty() else 1,
        )
    except tf.errors.DataLossError as error:
        raise records.corrupt_data_error(config.data.data_dir, error) from None
    except multi_worker.PEER_ERRORS as error:
        if not isinstance(trainer.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise multi_worker.worker_lost(error, config.cluster_timeout) from None


def train(config: TrainConfig, strategy_override: tf.distribute.Strategy | None = None,
          datasets_override: Datasets | None = None) -> dict[str, Any]:
    """Trains as `config` says and returns what it writes to MODEL_DIR/results.json.

    A run that already finished `config.epochs` epochs in MODEL_DIR is not trained again: its results are kept
    and returned. The chief holds MODEL_DIR's lock (`build` takes it) for the whole run.
    """
    finished = files.read_json(files.join(config.model_dir, model_dir_lib.RESULTS))
    if finished and finished.get("epochs") == config.epochs and finished.get("checkpoint") and \
            tf.io.gfile.exists(finished["checkpoint"]):
        logging.warning("%s already holds this run's %d epochs: its results are kept (give more --epochs to "
                        "train on).", config.model_dir, config.epochs)
        return finished
    with _write_errors_named(config.model_dir, config.export_dir):
        trainer = build(config, strategy_override, datasets_override)
        try:
            with trainer.callbacks.preemption:  # SIGTERM, Ctrl-C: a backup, then one line (training/preemption.py).
                logging.info("Training %s (%s parameters) with %s on %d replica(s).", trainer.model.name,
                             f"{trainer.model.count_params():,}", type(trainer.strategy).__name__,
                             trainer.strategy.num_replicas_in_sync)
                fit(trainer)
                return finish(trainer)
        finally:
            trainer.lock.release()


@contextlib.contextmanager
def _write_errors_named(model_dir: str, export_dir: str | None) -> Iterator[None]:
    """A full disk, or a MODEL_DIR (or --export_dir) this process may not write, as one line naming the folder."""
    try:
        yield
    except (OSError, tf.errors.OpError) as error:
        named = errors.write_error(model_dir if export_dir is None else f"{model_dir} or {export_dir}", error)
        if named is None:
            raise
        raise named from None


def finish(trainer: Trainer) -> dict[str, Any]:
    """What the chief writes after the last epoch: figures, the SavedModel, results.json (last)."""
    config, source = trainer.config, trainer.datasets.source
    results = results_lib.run_results(config.epochs, trainer.callbacks.history.records, config.model_dir)
    if trainer.chief:
        validated = config.data if trainer.datasets.validation is not None and config.data.data_dir else None
        results.update(results_lib.write_final_figures(trainer.model, config.model_dir, validated, config.epochs,
                                                       source=source))
        results_lib.write_results_text(config.model_dir, results, config.epochs)
        export_dir = config.export_dir or files.join(config.model_dir, model_dir_lib.EXPORT)
        results["export_dir"] = serving.export_model(trainer.model, config.data, export_dir,
                                                     source=source)["export_dir"]
        files.write_json(files.join(config.model_dir, model_dir_lib.RESULTS), results)
    else:  # Written only to check a run: every worker must end with the chief's weights.
        results["checkpoint"] = None  # The chief may not have written the last one yet.
        results["worker_model"] = files.join(multi_worker.worker_dir(config.model_dir, trainer.strategy),
                                             "model.keras")
        model_dir_lib.save_atomically(trainer.model, results["worker_model"])
    return results


def run(flags_obj: flags.FlagValues, strategy_override: tf.distribute.Strategy | None = None,
        datasets_override: Datasets | None = None) -> dict[str, Any]:
    """`train` on the flags' config (the binary's entry point, and the tests')."""
    return train(config_from_flags(flags_obj), strategy_override, datasets_override)


def main(argv: list[str]) -> None:
    results = cli.run_main("train", lambda: run(flags.FLAGS), argv, on_error=multi_worker.exit_if_joined)
    if results["val_top1_error"] is not None:
        print(f"Validation top-1 error {results['val_top1_error']:.4f}, top-5 error "
              f"{results['val_top5_error']:.4f} after {results['epochs']} epochs.")
    model_dir = flags.FLAGS.model_dir
    for what, where in [("Checkpoint", results["checkpoint"]),
                        ("TensorBoard", f"tensorboard --logdir {results['tensorboard_logdir']}"),
                        ("SavedModel", results.get("export_dir")), ("conv1 filters", results.get("conv1_png")),
                        ("Figure 4", results.get("predictions_png") and files.join(model_dir, model_dir_lib.FIGURES)),
                        ("Worker model", results.get("worker_model")),
                        ("Results", files.join(model_dir, model_dir_lib.RESULTS))]:
        if where:
            print(f"{what + ':':15}{where}")


if __name__ == "__main__":
    define_flags()
    cli.quiet_main(main, "train")
