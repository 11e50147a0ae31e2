"""What the binaries and tools share at their edge: flag groups, their typed configs, and one error exit.

Each binary (train, evaluate, export) declares its flags in one function of its own, `define_flags(flag_values)`,
from the groups here, so that every flag has one definition, one help text and one default: the default of the
typed config it fills (`AlexNetConfig`, `DataConfig`, ...), where the paper's values are named and cited. The
flags become those configs once, in the binary (`architecture_from_flags`, `data_config`); library code never sees
absl.

A binary defines only its own flags: `train --ten_crop` is an error, not a silently ignored option. A recipe (a
flagfile such as flags/paper.cfg) describes a whole run, so it may hold flags of any binary: each binary keeps the
ones it defines and names the others it leaves (`expand_recipes`). Tests give each binary a fresh
`flags.FlagValues()`, so the three can be parsed in one process.
"""

from __future__ import annotations

import dataclasses
import importlib
import signal
import sys
from typing import Any, Callable

import keras
from absl import app, flags

from alexnet_tf import errors, quiet
from alexnet_tf.model import alexnet, loading, presets
from alexnet_tf.model.architecture import POOLING, AlexNetConfig
from alexnet_tf.data.pipeline import CHANNEL_ORDERS, MEAN_MODES, DataConfig
from alexnet_tf.data.sources import TFDS_PREFIX

DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
# The binaries (alexnet_tf.<name>) whose flags a recipe may hold.
BINARIES = ("train", "evaluate", "export")
MODEL_FLAGS = ("towers", "groups", "width", "image_size", "num_classes", "lrn", "lrn_k", "lrn_alpha",
               "lrn_beta", "lrn_depth", "pooling", "activation", "dropout", "init", "input_scale",
               "conv1_init_gain")
_DEFAULTS = AlexNetConfig()


def define_model_flags(fv: flags.FlagValues) -> None:
    """The architecture (`AlexNetConfig`), for building a model or reading a .npy file into one: a --preset, and
    the fields that change it."""
    flags.DEFINE_enum("preset", None, list(presets.PRESETS), "A named network and the preprocessing its weights "
                      f"expect (alexnet_tf/model/presets.py): {presets.PAPER} (Figure 2; the default) or "
                      f"{presets.BVLC_ALEXNET} (Caffe's published network; the default for a .npy file). Model and "
                      "data flags given with it change its values.", flag_values=fv)
    flags.DEFINE_integer("towers", _DEFAULTS.towers, "2: the paper's two-tower network (Figure 2); 1: one stream.",
                         lower_bound=1, upper_bound=2, flag_values=fv)
    flags.DEFINE_integer("groups", _DEFAULTS.groups, "For --towers=1: 2 groups in conv2/4/5 (Caffe) or 1 (dense).",
                         lower_bound=1, upper_bound=2, flag_values=fv)
    flags.DEFINE_float("width", _DEFAULTS.width, "Scales every channel and unit count; 1.0 is the paper's.",
                       lower_bound=1e-3, upper_bound=4.0, flag_values=fv)
    flags.DEFINE_integer("image_size", _DEFAULTS.image_size, "Side of the square crops fed to the network, pixels "
                         "(section 4.1: 224; 64 at least, for a pool5 of one pixel).", lower_bound=64, flag_values=fv)
    flags.DEFINE_integer("num_classes", None, "Classes of fc8; default: the data set's (or the .npy file's).",
                         lower_bound=2, flag_values=fv)
    flags.DEFINE_boolean("lrn", _DEFAULTS.lrn, "Local response normalization after conv1 and conv2 (section 3.3).",
                         flag_values=fv)
    flags.DEFINE_float("lrn_k", _DEFAULTS.lrn_k, "LRN k (section 3.3).", flag_values=fv)
    flags.DEFINE_float("lrn_alpha", _DEFAULTS.lrn_alpha, "LRN alpha scaling the plain sum of squares (the paper's "
                       "and TensorFlow's convention; Caffe's alpha is this times the depth).", flag_values=fv)
    flags.DEFINE_float("lrn_beta", _DEFAULTS.lrn_beta, "LRN beta (section 3.3).", flag_values=fv)
    flags.DEFINE_integer("lrn_depth", _DEFAULTS.lrn_depth, "LRN window n, in channels, odd (section 3.3).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_enum("pooling", _DEFAULTS.pooling, list(POOLING),
                      "3x3 stride-2 overlapping or 2x2 stride-2 pooling (section 3.4).", flag_values=fv)
    flags.DEFINE_enum("activation", _DEFAULTS.activation, ["relu", "tanh"], "Nonlinearity (section 3.1).",
                      flag_values=fv)
    flags.DEFINE_float("dropout", _DEFAULTS.dropout, "Dropout rate on fc6 and fc7 (section 4.2).",
                       lower_bound=0.0, upper_bound=0.99, flag_values=fv)
    flags.DEFINE_enum("init", _DEFAULTS.init, ["paper", "he"],
                      "Initialization: the paper's (section 5) or He-normal (fc8 keeps the paper's N(0, 0.01)).",
                      flag_values=fv)
    flags.DEFINE_float("input_scale", _DEFAULTS.input_scale, "Multiplies the preprocessed input (1.0: the "
                       "paper's 0-255 values; 1/64: about unit variance).", lower_bound=1e-6, flag_values=fv)
    flags.DEFINE_float("conv1_init_gain", _DEFAULTS.conv1_init_gain, "Multiplies the standard deviation of "
                       "conv1's initial kernel (1.0: the --init's own).", lower_bound=1e-6, flag_values=fv)
    flags.register_validator("lrn_depth", lambda v: v % 2 == 1, "--lrn_depth must be odd", flag_values=fv)


def define_data_flags(fv: flags.FlagValues, *, training: bool) -> None:
    """The data set and its preprocessing (`DataConfig`); `training` adds the augmentation's flags."""
    defaults = DataConfig(data_dir=None)
    flags.DEFINE_string("data_dir", None, "Prepared data set (tools/prepare_imagenet.py output), an ILSVRC "
                        f"folder, or '{TFDS_PREFIX}NAME' for a TFDS data set; local or any tf.io.gfile path.",
                        flag_values=fv)
    flags.DEFINE_string("stats_path", defaults.stats_path, "Mean image and RGB eigen-decomposition "
                        "(tools/compute_stats.py); default DATA_DIR/stats.npz. 'imagenet': ImageNet's "
                        "published per-channel values.", flag_values=fv)
    flags.DEFINE_enum("mean", defaults.mean, list(MEAN_MODES),
                      "Subtract the mean image (section 2), the per-channel mean, or nothing.", flag_values=fv)
    flags.DEFINE_enum("channel_order", defaults.channel_order, list(CHANNEL_ORDERS),
                      "Channel order fed to the network (BGR for Caffe's weights).", flag_values=fv)
    flags.DEFINE_list("mean_rgb", None, "With --mean=channel: the per-channel mean to subtract, R,G,B on the "
                      "0-255 scale (123,117,104 for Caffe's weights); default: the statistics' mean.",
                      flag_values=fv)
    flags.register_validator("mean_rgb", lambda v: v is None or (len(v) == 3 and all(map(_is_number, v))),
                             "--mean_rgb takes three numbers, R,G,B", flag_values=fv)
    if training:
        flags.DEFINE_boolean("pca_noise", defaults.pca_noise, "PCA colour noise in training (section 4.1).",
                             flag_values=fv)
        flags.DEFINE_integer("shuffle_buffer", defaults.shuffle_buffer, "Training shuffle buffer, examples.",
                             lower_bound=1, flag_values=fv)


def define_dtype_policy_flag(fv: flags.FlagValues) -> None:
    """--dtype_policy (Keras' mixed precision); the old --mixed_precision says what replaced it."""
    flags.DEFINE_enum("dtype_policy", "float32", list(DTYPE_POLICIES),
                      "Keras dtype policy. mixed_float16: GPUs before A100 (loss scaling); mixed_bfloat16: A100 "
                      "and later, CPUs with AVX-512 BF16 or AMX (no loss scaling). LRN, logits and loss stay "
                      "float32.", flag_values=fv)
    flags.DEFINE_boolean("mixed_precision", False, "Replaced by --dtype_policy=mixed_float16.", flag_values=fv)
    flags.register_validator("mixed_precision", lambda v: not v,
                             "--mixed_precision was replaced by --dtype_policy=mixed_float16 (or mixed_bfloat16)",
                             flag_values=fv)


def define_model_file_flags(fv: flags.FlagValues, *, ensemble: bool) -> None:
    """The trained model(s) a binary reads: --checkpoint, --pretrained and, for evaluation, --ensemble."""
    flags.DEFINE_string("checkpoint", None, "A .keras checkpoint written by training (it carries its own "
                        "architecture: no model flags needed).", flag_values=fv)
    flags.DEFINE_string("pretrained", None, "A bvlc_alexnet-layout .npy file, read into the model the model "
                        "flags describe (flags/bvlc.cfg for Caffe's published weights).", flag_values=fv)
    if ensemble:
        flags.DEFINE_list("ensemble", [], "More .keras or .npy models whose softmax outputs are averaged "
                          "(section 6).", flag_values=fv)


def model_paths(fv: flags.FlagValues) -> list[str]:
    """The models a binary reads: --checkpoint or --pretrained, then every --ensemble entry."""
    if fv.checkpoint and fv.pretrained:
        raise errors.ConfigError("give --checkpoint or --pretrained, not both")
    first = fv.checkpoint or fv.pretrained
    paths = ([first] if first else []) + list(fv["ensemble"].value if "ensemble" in fv else [])
    if not paths:
        raise errors.ConfigError("no model: give --checkpoint=FILE.keras, --pretrained=FILE.npy"
                                 + (" or --ensemble" if "ensemble" in fv else ""))
    return paths


def load_models(fv: flags.FlagValues) -> list[tuple[str, keras.Model]]:
    """(path, model) for each of `model_paths(fv)`: a .keras checkpoint as it describes itself (model flags that
    contradict it are refused), a .npy file into the architecture of the model flags (on the `bvlc_alexnet`
    preset unless --preset names another)."""
    loaded = []
    for path in model_paths(fv):
        if path.endswith(loading.CHECKPOINT_SUFFIX):
            network = loading.load_model(path)
            check_against_checkpoint(fv, path, alexnet.architecture_of(network))
        else:
            network = loading.load_model(path, architecture_from_flags(fv, default_preset=presets.BVLC_ALEXNET),
                                         num_classes=fv.num_classes)
        loaded.append((path, network))
    return loaded


def preset(fv: flags.FlagValues, default_preset: str = presets.PAPER) -> presets.Preset:
    """The --preset the flags name, else `default_preset`."""
    return presets.get(fv.preset or default_preset)


def architecture_from_flags(fv: flags.FlagValues, default_preset: str = presets.PAPER, num_classes: int | None = None,
                            seed: int | None = None) -> AlexNetConfig:
    """The architecture the model flags describe: the preset's, with every model flag the user gave on top; fc8 has
    --num_classes units, else `num_classes`, else the preset's."""
    base = preset(fv, default_preset).architecture
    values = explicit_model_flags(fv)
    values["num_classes"] = values.get("num_classes") or num_classes or base.num_classes
    return dataclasses.replace(base, **values, seed=seed)


def explicit_model_flags(fv: flags.FlagValues) -> dict[str, Any]:
    """The model flags the user gave (on the command line or in a flagfile), name -> value."""
    return {name: fv[name].value for name in MODEL_FLAGS if fv[name].present}


def check_against_checkpoint(fv: flags.FlagValues, path: str, architecture: AlexNetConfig,
                             may_differ: tuple[str, ...] = ()) -> None:
    """Refuses model flags (and a --preset) that contradict a .keras checkpoint, which carries its own architecture,
    but those named in `may_differ`. A preset's number of classes is not compared: a fine-tuned checkpoint has its
    own fc8."""
    asked = {}
    if fv.preset:
        asked = {k: v for k, v in dataclasses.asdict(presets.get(fv.preset).architecture).items()
                 if k not in ("num_classes", "seed")}
    asked.update(explicit_model_flags(fv))
    asked = {name: value for name, value in asked.items() if name not in may_differ}
    recorded = dataclasses.asdict(architecture)
    conflicts = [f"--{name}={value} (it has {recorded[name]})" for name, value in asked.items()
                 if recorded.get(name) != value]
    if conflicts:
        source = f" (--preset={fv.preset})" if fv.preset else ""
        raise errors.ConfigError(f"{path} is another architecture than the flags{source} say: {'; '.join(conflicts)}. "
                                 "A .keras checkpoint carries its own; drop those flags")


def data_config(fv: flags.FlagValues, default_preset: str = presets.PAPER) -> DataConfig:
    """The data set and preprocessing the data flags describe: the preset's channel order and mean, unless given."""
    values = preset(fv, default_preset).preprocessing()
    if fv["mean"].present:  # Another mean than the preset's: its per-channel values go with it.
        values.update(mean=fv.mean, mean_rgb=None)
    if fv["mean_rgb"].present:
        values["mean_rgb"] = tuple(float(v) for v in fv.mean_rgb)
    if fv["channel_order"].present:
        values["channel_order"] = fv.channel_order
    extra = {name: fv[name].value for name in ("pca_noise", "shuffle_buffer") if name in fv}
    return DataConfig(data_dir=fv.data_dir, stats_path=fv.stats_path, **values, **extra)


def run_main(program: str, run: Callable[[], Any], argv: list[str], on_error: Callable[[int], None] | None = None):
    """`run()` for a binary's or tool's `main`: the one error exit of the project.

    A user's mistake or a fault met on the way (errors.AlexNetError) ends the program with one line on stderr,
    `program: error: message`, and the error's exit status, without a traceback. `on_error(code)` runs first
    (the trainer's cluster shutdown). TensorFlow's C++ noise is filtered from stderr (`quiet.quiet_binary`).
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet.quiet_binary()
    try:
        return run()
    except errors.AlexNetError as error:
        _exit(f"{program}: error: {error}", error.exit_code, on_error)
    except KeyboardInterrupt:  # A second Ctrl-C (the first is a preemption, training/preemption.py), or a tool's.
        _exit(f"{program}: interrupted", 128 + signal.SIGINT, on_error)


def _exit(line: str, code: int, on_error: Callable[[int], None] | None) -> None:
    """Prints `line` and exits with `code`, `on_error(code)` first. Called within the `except` block: the error's
    traceback still holds what TensorFlow's coordination agent would log again, at length, once it is freed."""
    print(line, file=sys.stderr)
    if on_error is not None:
        quiet.release()
        on_error(code)
    sys.exit(code)


def quiet_main(main: Callable[[list[str]], None], program: str | None = None) -> None:
    """`app.run(main)` with TensorFlow's C++ noise filtered from the start, flag parsing included (the CUDA
    probe's failure on a machine without a GPU was seen printed before `main` ran): every binary's and tool's
    entry point. A binary gives its `program` name: its recipes are then read by `expand_recipes`."""
    quiet.quiet_binary()
    if program is None:
        app.run(main)
        return

    def parse(argv: list[str]) -> list[str]:
        try:
            argv = expand_recipes(program, argv, flags.FLAGS)
        except flags.Error:
            pass  # A flagfile that cannot be read: absl's own parse below reads it again and says so.
        return app.parse_flags_with_usage(argv)

    app.run(main, flags_parser=parse)


def recipe_flag_names() -> frozenset[str]:
    """Every flag that a binary of the project defines: what a recipe may hold."""
    names: set[str] = set()
    for binary in BINARIES:
        # Imported here, not at the top of this module: the binaries import it.
        module = importlib.import_module(f"alexnet_tf.{binary}")
        scratch = flags.FlagValues()
        module.define_flags(scratch)
        names.update(scratch)
    return frozenset(names)


def expand_recipes(program: str, argv: list[str], fv: flags.FlagValues) -> list[str]:
    """`argv` with every --flagfile typed on the command line replaced by the flags it holds that `fv` defines.

    A recipe's flags of another binary (flags/paper.cfg's --strategy, for `evaluate`) are left out, and one line on
    stderr names them. A flag typed on the command line is never left out, and neither is a recipe's flag that no
    binary defines (a misspelling): absl refuses both, naming them. Nested flagfiles are read by absl.
    """
    expanded, left_out = [argv[0]], {}
    known = None
    args = list(argv[1:])
    while args:
        arg = args.pop(0)
        if arg in ("--flagfile", "-flagfile") and args:
            arg = f"--flagfile={args.pop(0)}"
        if not arg.startswith(("--flagfile=", "-flagfile=")):
            expanded.append(arg)
            continue
        path = arg.split("=", 1)[1]
        for line in fv.read_flags_from_files([arg], force_gnu=False):
            name = _flag_name(line, fv)
            if name is None or name in fv:
                expanded.append(line)
                continue
            known = known if known is not None else recipe_flag_names()
            if name in known:
                left_out.setdefault(path, []).append(f"--{name}")
            else:
                expanded.append(line)  # No binary's flag: absl names it.
    for path, names in left_out.items():
        print(f"{program}: {path}: leaving out the flags of other binaries: {', '.join(names)}", file=sys.stderr)
    return expanded


def _flag_name(arg: str, fv: flags.FlagValues) -> str | None:
    """The name of the flag an argument sets (`--name=value`, `--name`, `--noname`), or None for no flag."""
    if not arg.startswith("-"):
        return None
    name = arg.lstrip("-").split("=", 1)[0]
    if name.startswith("no") and name not in fv and "=" not in arg:
        return name[2:]
    return name


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
