"""Exports a trained AlexNet as a TensorFlow SavedModel for serving: `python -m alexnet_tf.export`.

    python -m alexnet_tf.export --data_dir=/data/imagenet --checkpoint=/runs/paper/checkpoints/epoch_090.keras \
        --export_dir=/models/alexnet/1
    python -m alexnet_tf.export --flagfile=flags/bvlc.cfg --data_dir=/data/imagenet \
        --pretrained=bvlc_alexnet.npy --export_dir=/models/bvlc_alexnet/1

What the SavedModel holds and how to query it: `alexnet_tf.serving`. The data flags (--mean, --mean_rgb,
--stats_path, --channel_order) must be those the model was trained with; --data_dir gives the class names and
the statistics.
"""

from __future__ import annotations

from typing import Any

from absl import flags

from alexnet_tf import cli, errors, serving
from alexnet_tf.model import loading, presets


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """This binary's flags (`--help` lists them all, the shared groups of cli.py included)."""
    cli.define_model_flags(fv)
    cli.define_data_flags(fv, training=False)
    cli.define_model_file_flags(fv, ensemble=False)
    flags.DEFINE_string("export_dir", None, "Where the SavedModel goes (any tf.io.gfile path).", flag_values=fv)
    flags.adopt_module_key_flags(cli, flag_values=fv)


def run(flags_obj: flags.FlagValues) -> dict[str, Any]:
    """Exports the model the flags name to --export_dir; returns what it wrote."""
    if not flags_obj.export_dir:
        raise errors.ConfigError("--export_dir is required")
    [(path, model)] = cli.load_models(flags_obj)
    # A .npy file is read as the bvlc_alexnet preset unless --preset names another: so is its input.
    default_preset = presets.PAPER if path.endswith(loading.CHECKPOINT_SUFFIX) else presets.BVLC_ALEXNET
    results = serving.export_model(model, cli.data_config(flags_obj, default_preset), flags_obj.export_dir)
    return {**results, "model": path}


def main(argv: list[str]) -> None:
    results = cli.run_main("export", lambda: run(flags.FLAGS), argv)
    print(f"Exported {results['model']} ({results['num_classes']} classes, {results['image_size']} px) to "
          f"{results['export_dir']} with signatures {', '.join(results['signatures'])}.\n"
          f"Inspect it with: saved_model_cli show --dir {results['export_dir']} --all")


if __name__ == "__main__":
    define_flags()
    cli.quiet_main(main, "export")
