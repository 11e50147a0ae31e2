"""Every command-line flag of the binaries (train, evaluate, export), declared once.

Each binary calls `define_flags()` and reads `FLAGS`; the flagfiles in flags/ (paper.cfg,
demo.cfg, bvlc.cfg) therefore work with any of them. Defaults are the paper's recipe; section
numbers refer to Krizhevsky, Sutskever & Hinton (2012). A bad value stops the binary with one
line naming the flag (absl's validators), before any work is done.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from absl import app, flags

from alexnet_tf import model, multi_worker, optimizer
from alexnet_tf.data import pipeline

FLAGS = flags.FLAGS
STRATEGIES = ("one_device", "mirrored", "towers", "multi_worker")
_defined = False


def define_flags() -> None:
    """Declares all flags (idempotent, so tests may call it more than once)."""
    global _defined
    if _defined:
        return
    _defined = True
    _define_model_flags()
    _define_data_flags()
    _define_training_flags()
    _define_evaluation_flags()
    flags.register_multi_flags_validator(
        ["data_dir", "demo"],
        lambda v: v["data_dir"] is None or v["demo"] or v["data_dir"].startswith(pipeline.TFDS_PREFIX)
        or os.path.isdir(v["data_dir"]),
        "--data_dir must be an existing directory or tfds:NAME (prepare one with: "
        "python tools/prepare_imagenet.py --input_dir=SRC --output_dir=DST)")


def _define_model_flags() -> None:
    flags.DEFINE_integer("towers", 2, "2: the paper's two-tower network (Figure 2); 1: one stream.")
    flags.DEFINE_integer("groups", 2, "For --towers=1: 2 groups in conv2/4/5 (Caffe) or 1 (dense).")
    flags.DEFINE_float("width", 1.0, "Scales every channel and unit count; 1.0 is the paper's.")
    flags.DEFINE_integer("image_size", pipeline.IMAGENET_CROP_SIZE, "Side of the square crops fed to the network, pixels.")
    flags.DEFINE_integer("num_classes", None, "Classes of fc8; default: the dataset's.")
    flags.DEFINE_boolean("lrn", True, "Local response normalization after conv1 and conv2 (section 3.3).")
    flags.DEFINE_float("lrn_k", 2.0, "LRN k (section 3.3).")
    flags.DEFINE_float("lrn_alpha", 1e-4, "LRN alpha scaling the plain sum of squares (the paper's and "
                       "TensorFlow's convention; Caffe's alpha is this times the depth).")
    flags.DEFINE_float("lrn_beta", 0.75, "LRN beta (section 3.3).")
    flags.DEFINE_integer("lrn_depth", 5, "LRN window n, in channels (section 3.3).")
    flags.DEFINE_enum("pooling", "overlapping", list(model.POOLING),
                      "3x3 stride-2 overlapping or 2x2 stride-2 pooling (section 3.4).")
    flags.DEFINE_enum("activation", "relu", ["relu", "tanh"], "Nonlinearity (section 3.1).")
    flags.DEFINE_float("dropout", model.DROPOUT_RATE, "Dropout rate on fc6 and fc7 (section 4.2).")
    flags.DEFINE_enum("init", "paper", ["paper", "he"], "Initialization: the paper's (section 5) or He-normal.")
    flags.DEFINE_float("input_scale", 1.0, "Multiplies the preprocessed input (1.0: the paper's 0-255 values; "
                       "1/64: about unit variance).")
    flags.register_validator("input_scale", lambda v: v > 0, "--input_scale must be > 0")
    flags.DEFINE_list("tower_devices", ["/GPU:0", "/GPU:1"], "The two devices of --strategy=towers.")
    for name, low in [("image_size", 63), ("lrn_depth", 1)]:
        flags.register_validator(name, lambda v, low=low: v >= low, f"--{name} must be >= {low}")
    flags.register_validator("towers", lambda v: v in (1, 2), "--towers must be 1 or 2")
    flags.register_validator("groups", lambda v: v in (1, 2), "--groups must be 1 or 2")
    flags.register_validator("width", lambda v: 0 < v <= 4, "--width must be in (0, 4]")
    flags.register_validator("num_classes", lambda v: v is None or v >= 2, "--num_classes must be >= 2")
    flags.register_validator("dropout", lambda v: 0 <= v < 1, "--dropout must be in [0, 1)")
    flags.register_validator("lrn_depth", lambda v: v % 2 == 1, "--lrn_depth must be odd")
    flags.register_validator("tower_devices", lambda v: len(v) == 2, "--tower_devices takes two devices")


def _define_data_flags() -> None:
    flags.DEFINE_string("data_dir", None, "Prepared dataset (tools/prepare_imagenet.py output), an ILSVRC "
                        f"folder, or '{pipeline.TFDS_PREFIX}NAME' for a TFDS dataset.")
    flags.DEFINE_string("stats_path", None, "Mean image and RGB eigen-decomposition (tools/compute_stats.py); "
                        "default DATA_DIR/stats.npz, else the published ImageNet values.")
    flags.DEFINE_enum("mean", "image", list(pipeline.MEAN_MODES),
                      "Subtract the mean image (section 2), the per-channel mean, or nothing.")
    flags.DEFINE_enum("channel_order", "RGB", list(pipeline.CHANNEL_ORDERS),
                      "Channel order fed to the network (BGR for Caffe's weights).")
    flags.DEFINE_boolean("pca_noise", True, "PCA colour noise in training (section 4.1).")
    flags.DEFINE_integer("shuffle_buffer", pipeline.DEFAULT_SHUFFLE_BUFFER, "Training shuffle buffer, examples.")
    flags.register_validator("shuffle_buffer", lambda v: v >= 1, "--shuffle_buffer must be >= 1")
    flags.DEFINE_list("mean_rgb", None, "With --mean=channel: the per-channel mean to subtract, R,G,B on the "
                      "0-255 scale (123,117,104 for Caffe's weights); default: the statistics' mean.")
    flags.register_validator("mean_rgb", lambda v: v is None or (len(v) == 3 and all(map(_is_number, v))),
                             "--mean_rgb takes three numbers, R,G,B")
    flags.register_multi_flags_validator(["mean_rgb", "mean"],
                                         lambda v: v["mean_rgb"] is None or v["mean"] == "channel",
                                         "--mean_rgb needs --mean=channel")


def _define_training_flags() -> None:
    flags.DEFINE_string("model_dir", None, "Where checkpoints, TensorBoard logs and results.json go.")
    flags.DEFINE_integer("epochs", 90, "Passes over the training set (section 5: roughly 90 cycles).")
    flags.DEFINE_integer("batch_size", 128, "Global batch size, images (section 5).")
    flags.DEFINE_integer("steps_per_epoch", None, "Limit each epoch to this many steps (default: the whole set).")
    flags.DEFINE_float("learning_rate", optimizer.LEARNING_RATE, "Initial learning rate (section 5).")
    flags.DEFINE_float("momentum", optimizer.MOMENTUM, "SGD momentum (section 5).")
    flags.DEFINE_float("weight_decay", optimizer.WEIGHT_DECAY,
                       "Weight decay inside the gradient step, as the paper's update rule (section 5).")
    flags.DEFINE_integer("lr_patience_epochs", 5, "Epochs without improvement of the validation error "
                         "before the learning rate is divided by 10 (section 5).")
    flags.DEFINE_float("lr_min_delta", 1e-3, "Smallest drop of the validation top-1 error that counts as improvement.")
    flags.DEFINE_integer("lr_max_reductions", 3, "At most this many divisions by 10 (section 5: three).")
    flags.DEFINE_enum("strategy", "one_device", list(STRATEGIES),
                      "one_device; mirrored (data parallel over local GPUs); towers (the paper's model "
                      "parallelism on --tower_devices); multi_worker (TF_CONFIG).")
    flags.DEFINE_float("cluster_timeout", multi_worker.DEFAULT_TIMEOUT_SECONDS,
                       "multi_worker: seconds to wait for every worker of TF_CONFIG to join, and for any collective "
                       "operation; a worker silent for longer stops the others with an error.")
    flags.DEFINE_boolean("mixed_precision", False, "mixed_float16 compute with loss scaling (GPUs).")
    flags.DEFINE_boolean("xla", False, "XLA-compile the train step (refused with --strategy=towers).")
    flags.DEFINE_integer("seed", None, "Seeds initialization, shuffling and augmentation.")
    flags.DEFINE_boolean("deterministic", False, "Op determinism and the --seed everywhere: two runs of the same "
                         "command on the same machine end with identical weights.")
    flags.DEFINE_integer("keep_checkpoints", 3, "Epoch checkpoints kept in MODEL_DIR/checkpoints.")
    flags.DEFINE_boolean("demo", False, "Generate the offline demo dataset in --data_dir if it is not there.")
    flags.DEFINE_string("pretrained", None, "Start from a bvlc_alexnet-layout .npy file or a .keras "
                        "checkpoint; fc8 is new when --num_classes differs.")
    flags.DEFINE_boolean("freeze_conv", False, "With --pretrained, train only the fully connected layers.")
    for name in ("epochs", "batch_size", "lr_patience_epochs", "keep_checkpoints"):
        flags.register_validator(name, lambda v: v >= 1, f"--{name} must be >= 1")
    flags.register_validator("steps_per_epoch", lambda v: v is None or v >= 1, "--steps_per_epoch must be >= 1")
    flags.register_validator("cluster_timeout", lambda v: v > 0, "--cluster_timeout must be > 0")
    flags.register_multi_flags_validator(["deterministic", "seed"], lambda v: not v["deterministic"] or
                                         v["seed"] is not None, "--deterministic needs --seed")
    flags.register_validator("learning_rate", lambda v: v > 0, "--learning_rate must be > 0")
    flags.register_validator("momentum", lambda v: 0 <= v < 1, "--momentum must be in [0, 1)")
    flags.register_validator("weight_decay", lambda v: v >= 0, "--weight_decay must be >= 0")
    flags.register_validator("lr_max_reductions", lambda v: v >= 0, "--lr_max_reductions must be >= 0")
    flags.register_validator("pretrained", lambda v: v is None or os.path.isfile(v),
                             "--pretrained must be an existing .npy or .keras file")


def _define_evaluation_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "A .keras checkpoint written by training.")
    flags.DEFINE_boolean("ten_crop", False, "Average the softmax over ten crops (section 4.1).")
    flags.DEFINE_list("ensemble", [], "Checkpoints whose softmax outputs are averaged (section 6).")
    flags.DEFINE_string("export_dir", None, "Where export writes the SavedModel.")
    flags.register_validator("checkpoint", lambda v: v is None or os.path.exists(v),
                             "--checkpoint must be an existing file")
    flags.register_validator("ensemble", lambda v: all(os.path.isfile(p) for p in v),
                             "--ensemble takes existing .keras or .npy files")


def mean_rgb(flag_values: flags.FlagValues) -> tuple[float, float, float] | None:
    """--mean_rgb as numbers (R, G, B on the 0-255 scale), or None."""
    return None if flag_values.mean_rgb is None else tuple(float(v) for v in flag_values.mean_rgb)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def model_kwargs(flag_values: flags.FlagValues, num_classes: int) -> dict:
    """The `build_alexnet` arguments that the model flags describe."""
    return dict(
        num_classes=num_classes,
        towers=flag_values.towers,
        groups=flag_values.groups,
        image_size=flag_values.image_size,
        width=flag_values.width,
        lrn=flag_values.lrn,
        lrn_depth=flag_values.lrn_depth,
        lrn_k=flag_values.lrn_k,
        lrn_alpha=flag_values.lrn_alpha,
        lrn_beta=flag_values.lrn_beta,
        pooling=flag_values.pooling,
        activation=flag_values.activation,
        dropout=flag_values.dropout,
        init=flag_values.init,
        input_scale=flag_values.input_scale,
        seed=flag_values.seed,
    )


def run_or_exit(program: str, run: Callable[[flags.FlagValues], dict[str, Any]], argv: list[str]) -> dict[str, Any]:
    """`run(FLAGS)` for a binary's `main`. A missing dataset or model, or flags that do not fit
    them (FileNotFoundError, ValueError, UsageError), ends the program with one line on stderr
    and a non-zero exit, without a traceback."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        return run(FLAGS)
    except (FileNotFoundError, ValueError, app.UsageError) as error:
        sys.exit(f"{program}: error: {error}")
