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

import dataclasses
import sys
from typing import Any

import keras
import tensorflow as tf
from absl import app, flags, logging

from alexnet_tf import cli, distribute, errors, loading, multi_worker, safeguards, serving, summaries
from alexnet_tf import model as model_lib
from alexnet_tf import model_dir as model_dir_lib
from alexnet_tf import weights as weights_lib
from alexnet_tf.data import demo, pipeline, records, sources
from alexnet_tf.metrics import TOP_K, TopKError
from alexnet_tf.architecture import AlexNetConfig
from alexnet_tf.optimizer import OptimizerConfig
from alexnet_tf.schedule import PlateauSchedule, ScheduleConfig

STRATEGIES = ("one_device", "mirrored", "towers", "multi_worker")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, from the flags (`config_from_flags`) or built by a test.

    `model.num_classes` is the data set's when `classes_from_data` (no --num_classes given).
    """

    model: AlexNetConfig
    data: pipeline.DataConfig
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    model_dir: str
    epochs: int = 90  # Section 5: "roughly 90 cycles through the training set".
    batch_size: int = 128  # Section 5.
    steps_per_epoch: int | None = None
    strategy: str = "one_device"
    tower_devices: tuple[str, str] = ("/GPU:0", "/GPU:1")
    cluster_timeout: float = multi_worker.DEFAULT_TIMEOUT_SECONDS
    dtype_policy: str = "float32"
    xla: bool = False
    seed: int | None = None
    deterministic: bool = False
    keep_checkpoints: int = 3
    demo: bool = False
    pretrained: str | None = None
    freeze_conv: bool = False
    export_dir: str | None = None
    classes_from_data: bool = True


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """This binary's flags, with the defaults of the configs they fill (the paper's recipe)."""
    cli.define_model_flags(fv)
    cli.define_data_flags(fv, training=True)
    cli.define_dtype_policy_flag(fv)
    optimizer, schedule = OptimizerConfig(), ScheduleConfig()
    flags.DEFINE_string("model_dir", None, "Where checkpoints, TensorBoard logs and results.json go (local, "
                        "gs://, any tf.io.gfile path).", flag_values=fv)
    flags.DEFINE_integer("epochs", TrainConfig.epochs, "Passes over the training set (section 5: roughly 90).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("batch_size", TrainConfig.batch_size, "Global batch size, images (section 5).",
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
    flags.DEFINE_enum("strategy", TrainConfig.strategy, list(STRATEGIES),
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
    flags.register_multi_flags_validator(["deterministic", "seed"], lambda v: not v["deterministic"] or
                                         v["seed"] is not None, "--deterministic needs --seed", flag_values=fv)
    flags.DEFINE_integer("keep_checkpoints", TrainConfig.keep_checkpoints, "Epoch checkpoints kept in "
                         "MODEL_DIR/checkpoints.", lower_bound=1, flag_values=fv)
    flags.DEFINE_boolean("demo", False, "Generate the offline demo data set in --data_dir if it is not there.",
                         flag_values=fv)
    flags.DEFINE_string("pretrained", None, "Start from a bvlc_alexnet-layout .npy file or a .keras "
                        "checkpoint; fc8 is new when --num_classes differs.", flag_values=fv)
    flags.DEFINE_boolean("freeze_conv", False, "With --pretrained, train only the fully connected layers.",
                         flag_values=fv)
    flags.DEFINE_string("export_dir", None, "Where the SavedModel goes; default MODEL_DIR/export.", flag_values=fv)
    flags.adopt_module_key_flags(cli, flag_values=fv)


def config_from_flags(fv: flags.FlagValues) -> TrainConfig:
    """The flags as a TrainConfig; raises errors.ConfigError for settings that cannot work together."""
    if fv.model_dir is None:
        raise errors.ConfigError("--model_dir is required")
    if fv.xla and fv.strategy == "towers":
        raise errors.ConfigError("--xla: XLA ignores tf.device placement (tensorflow issue 124880), so it is "
                                 "refused with --strategy=towers")
    if fv.strategy == "towers" and fv.towers != 2:
        raise errors.ConfigError("--strategy=towers needs --towers=2")
    if fv.freeze_conv and not fv.pretrained:
        raise errors.ConfigError("--freeze_conv needs --pretrained: frozen random convolutions learn nothing")
    return TrainConfig(
        model=cli.model_config(fv, seed=fv.seed),
        data=cli.data_config(fv),
        optimizer=OptimizerConfig(fv.learning_rate, fv.momentum, fv.weight_decay),
        schedule=ScheduleConfig(fv.lr_patience_epochs, fv.lr_min_delta, fv.lr_max_reductions),
        model_dir=fv.model_dir, epochs=fv.epochs, batch_size=fv.batch_size, steps_per_epoch=fv.steps_per_epoch,
        strategy=fv.strategy, tower_devices=tuple(fv.tower_devices), cluster_timeout=fv.cluster_timeout,
        dtype_policy=fv.dtype_policy, xla=fv.xla, seed=fv.seed, deterministic=fv.deterministic,
        keep_checkpoints=fv.keep_checkpoints, demo=fv.demo, pretrained=fv.pretrained, freeze_conv=fv.freeze_conv,
        export_dir=fv.export_dir, classes_from_data=fv.num_classes is None)


@dataclasses.dataclass
class Datasets:
    """What a run trains and validates on. Tests pass their own through `datasets_override`."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    num_classes: int
    train_examples: int | None = None
    validation_examples: int | None = None


def create_datasets(config: TrainConfig) -> Datasets:
    """The training set (random crops, flips, PCA noise: section 4.1) and the validation set (centre crops)."""
    if config.data.data_dir is None:
        raise errors.ConfigError("--data_dir is required (prepare one with: python tools/prepare_imagenet.py "
                                 "--input_dir=SRC --output_dir=DST)")
    source = sources.open_source(config.data.data_dir)
    image_size = config.model.image_size
    train = pipeline.make_train_dataset(config.data, config.batch_size, image_size, seed=config.seed,
                                        deterministic=config.deterministic)
    validation = None
    if source.has_split(records.VALIDATION):
        validation = pipeline.make_eval_dataset(config.data, config.batch_size, image_size)
    else:
        logging.warning("%s has no validation split: the learning rate will not be scheduled.",
                        config.data.data_dir)
    return Datasets(train, validation, source.num_classes, source.num_examples(records.TRAIN),
                    source.num_examples(records.VALIDATION) if validation is not None else None)


def create_model(config: TrainConfig, model_config: AlexNetConfig) -> keras.Model:
    """The model of `model_config`, placed on the tower devices with --strategy=towers, with --pretrained
    weights and --freeze_conv applied."""
    devices = distribute.tower_devices(config.tower_devices) if config.strategy == "towers" else None
    model = model_lib.build_alexnet(config=model_config, tower_devices=devices)
    if config.pretrained:
        load_pretrained(model, config.pretrained)
    if config.freeze_conv:
        for layer in model_lib.conv_layers(model):
            layer.trainable = False
    return model


def load_pretrained(model: keras.Model, path: str) -> None:
    """Every layer of a .npy (bvlc layout) or .keras file into `model`; fc8 only where its shape fits."""
    weights = weights_lib.npy_weights(loading.load_model(path)) if path.endswith(".keras") \
        else weights_lib.read_npy(path)
    fc8 = tuple(model_lib.inner_layer(model, "fc8").kernel.shape)
    skip = () if tuple(weights["fc8"][0].shape) == fc8 else ("fc8",)
    if skip:
        logging.info("fc8 is new: %s classes instead of the file's %d.", fc8[-1], weights["fc8"][0].shape[-1])
    try:
        weights_lib.load_npy_weights(model, weights, skip=skip)
    except errors.ModelFileError as error:  # It names the layer and both shapes.
        raise errors.ModelFileError(f"--pretrained={path} is another model variant: {error}") from None


def compile_model(model: keras.Model, config: TrainConfig) -> None:
    """PaperSGD (section 5), softmax cross-entropy on the logits, top-1 and top-5 error (section 6)."""
    # With a mixed_float16 policy, Keras wraps the optimizer in a LossScaleOptimizer itself.
    model.compile(
        optimizer=config.optimizer.build(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[TopKError(k) for k in TOP_K],
        jit_compile=config.xla,
    )


def create_callbacks(config: TrainConfig, chief: bool
                     ) -> tuple[list[keras.callbacks.Callback], summaries.Throughput, PlateauSchedule]:
    """The callbacks of `model.fit`, in the order that keeps MODEL_DIR consistent after a kill at any point."""
    join = model_dir_lib.join
    backup_dir = join(config.model_dir, model_dir_lib.BACKUP)
    log_dir = join(config.model_dir, model_dir_lib.LOGS)
    throughput = summaries.Throughput(config.batch_size)
    schedule = PlateauSchedule(
        patience_epochs=config.schedule.patience_epochs, min_delta=config.schedule.min_delta,
        max_reductions=config.schedule.max_reductions, state_path=join(backup_dir, "plateau.json"),
        is_chief=chief)
    # First: a diverged epoch raises before any other callback saves it. The schedule's state and the epoch's
    # checkpoint go before the backup: a kill between them resumes at that epoch and writes both again.
    callbacks: list[keras.callbacks.Callback] = [safeguards.StopOnNaN(), throughput, schedule]
    if chief:
        callbacks.append(model_dir_lib.EpochCheckpoints(join(config.model_dir, model_dir_lib.CHECKPOINTS),
                                                        config.keep_checkpoints))
    # double_checkpoint: Keras writes the backup in place, so a kill during the write leaves a damaged file; the
    # previous epoch's backup is restored instead. Other workers restore the chief's backup and never write it:
    # a save frequency of sys.maxsize batches is never reached.
    callbacks.append(safeguards.FallbackBackupAndRestore(backup_dir, save_freq="epoch" if chief else sys.maxsize,
                                                         double_checkpoint=True, delete_checkpoint=False))
    if chief:
        callbacks += [summaries.EpochTensorBoard(log_dir, update_freq="epoch"),
                      summaries.LearningRateSteps(log_dir),
                      summaries.Conv1Summaries(log_dir, towers=config.model.towers)]
    return callbacks, throughput, schedule


@dataclasses.dataclass
class Trainer:
    """The objects of one run, made by `build`, before `model.fit`."""

    config: TrainConfig
    strategy: tf.distribute.Strategy
    chief: bool
    datasets: Datasets
    model: keras.Model
    callbacks: list[keras.callbacks.Callback]
    throughput: summaries.Throughput
    schedule: PlateauSchedule
    steps_per_epoch: int | None
    lock: safeguards.RunLock


def build(config: TrainConfig, strategy_override: tf.distribute.Strategy | None = None,
          datasets_override: Datasets | None = None) -> Trainer:
    """Every training object of `config`, ready for `fit`; sets the process-wide seed and dtype policy."""
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(config.dtype_policy)
    if config.demo and datasets_override is None:
        demo.ensure_demo_data(config.data.data_dir)
    strategy = strategy_override or distribute.make_strategy(config.strategy, config.cluster_timeout)
    chief = distribute.is_chief(strategy)
    datasets = datasets_override or create_datasets(config)
    model_config = config.model
    if config.classes_from_data:
        model_config = dataclasses.replace(model_config, num_classes=datasets.num_classes)
    # The lock, once the data set is known to be readable and before anything is written to MODEL_DIR. Workers of
    # a cluster share MODEL_DIR, and only the chief writes it; their restarts must not find it locked.
    lock = safeguards.RunLock(config.model_dir)
    if chief and not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        lock.acquire()
    try:
        safeguards.RunRecord(config.model_dir, run_variant(config, model_config), chief,
                             settings={"learning_rate": config.optimizer.learning_rate}).check()
        steps_per_epoch = config.steps_per_epoch
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            steps_per_epoch = in_lockstep(datasets, strategy.num_replicas_in_sync, config.batch_size,
                                          steps_per_epoch)
        with strategy.scope():
            model = create_model(config, model_config)
            compile_model(model, config)
        callbacks, throughput, schedule = create_callbacks(config, chief)
    except BaseException:
        lock.release()
        raise
    return Trainer(config, strategy, chief, datasets, model, callbacks, throughput, schedule, steps_per_epoch, lock)


def run_variant(config: TrainConfig, model_config: AlexNetConfig) -> dict[str, Any]:
    """What shapes the model's and the optimizer's variables, which a resumed run must keep: the architecture
    (the model's own Keras config, less its initialization) and the training settings that change the state.
    Initialization stays out: a resume loads the weights, and a MODEL_DIR recorded before a field of it existed
    (conv1_init_gain) must still resume."""
    initialization = ("seed", "init", "conv1_init_gain")
    architecture = {k: v for k, v in dataclasses.asdict(model_config).items() if k not in initialization}
    return {**architecture, "dtype_policy": config.dtype_policy, "freeze_conv": config.freeze_conv}


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
            callbacks=trainer.callbacks,
            shuffle=False,  # The input pipeline shuffles.
            verbose=2 if not sys.stdout.isatty() else 1,
        )
    except tf.errors.DataLossError as error:
        raise safeguards.corrupt_data_error(config.data.data_dir, error) from None
    except multi_worker.PEER_ERRORS as error:
        if not isinstance(trainer.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise multi_worker.worker_lost(error, config.cluster_timeout) from None
    except (OSError, tf.errors.OpError) as error:
        disk_full = safeguards.disk_error(config.model_dir, error)
        if disk_full is None:
            raise
        raise disk_full from None


def train(config: TrainConfig, strategy_override: tf.distribute.Strategy | None = None,
          datasets_override: Datasets | None = None) -> dict[str, Any]:
    """Trains as `config` says and returns what it writes to MODEL_DIR/results.json.

    A run that already finished `config.epochs` epochs in MODEL_DIR is not trained again: its results are kept
    and returned. The chief holds MODEL_DIR's lock (`build` takes it) for the whole run.
    """
    results_path = model_dir_lib.join(config.model_dir, model_dir_lib.RESULTS)
    finished = model_dir_lib.read_json(results_path)
    if finished and finished.get("epochs") == config.epochs and finished.get("checkpoint") and \
            tf.io.gfile.exists(finished["checkpoint"]):
        logging.warning("%s already holds this run's %d epochs: its results are kept (give more --epochs to "
                        "train on).", config.model_dir, config.epochs)
        return finished
    trainer = build(config, strategy_override, datasets_override)
    try:
        logging.info("Training %s (%s parameters) with %s on %d replica(s).", trainer.model.name,
                     f"{trainer.model.count_params():,}", type(trainer.strategy).__name__,
                     trainer.strategy.num_replicas_in_sync)
        history = fit(trainer)
        return finish(trainer, history)
    finally:
        trainer.lock.release()


def finish(trainer: Trainer, history: keras.callbacks.History) -> dict[str, Any]:
    """What the chief writes after the last epoch: figures, the SavedModel, results.json (last)."""
    config = trainer.config
    results = summaries.run_results(config.epochs, history, trainer.throughput.rates, config.model_dir)
    if trainer.chief:
        validated = config.data if trainer.datasets.validation is not None and config.data.data_dir else None
        results.update(summaries.write_final_figures(trainer.model, config.model_dir, validated, config.epochs))
        export_dir = config.export_dir or model_dir_lib.join(config.model_dir, model_dir_lib.EXPORT)
        results["export_dir"] = serving.export_model(trainer.model, config.data, export_dir)["export_dir"]
        model_dir_lib.write_json(model_dir_lib.join(config.model_dir, model_dir_lib.RESULTS), results)
    else:  # Written only to check a run: every worker must end with the chief's weights.
        results["checkpoint"] = None  # The chief may not have written the last one yet.
        results["worker_model"] = model_dir_lib.join(
            multi_worker.worker_dir(config.model_dir, trainer.strategy), "model.keras")
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
    for what, where in [("Checkpoint", results["checkpoint"]),
                        ("TensorBoard", f"tensorboard --logdir {results['tensorboard_logdir']}"),
                        ("SavedModel", results.get("export_dir")), ("conv1 filters", results.get("conv1_png")),
                        ("Figure 4", results.get("predictions_png")
                         and model_dir_lib.join(flags.FLAGS.model_dir, model_dir_lib.FIGURES)),
                        ("Worker model", results.get("worker_model")),
                        ("Results", model_dir_lib.join(flags.FLAGS.model_dir, model_dir_lib.RESULTS))]:
        if where:
            print(f"{what + ':':15}{where}")


if __name__ == "__main__":
    define_flags()
    cli.quiet_main(main)
