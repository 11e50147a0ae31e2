"""Computes the training set's mean image and RGB eigen-decomposition (Sections 2 and 4.1).

  python tools/compute_stats.py --data_dir=DST [--output=DST/stats.npz] [--max_images=N]

Reads the stored images of the training split (all of them, or the first --max_images: prepared training shards
are in shuffled order, so that is a random sample; an ILSVRC folder lists images class by class) and writes
the .npz the input pipeline picks up from DST/stats.npz. tools/prepare_imagenet.py already does this as its last
step; this tool is for ILSVRC folders, tfds:NAME sources (no folder of their own: --output is required, and the
pipeline then takes --stats_path=OUTPUT) and data sets prepared before that step. Units: see
alexnet_tf/data/stats.py.
"""

import os

from alexnet_tf import cli, files  # First: it imports TensorFlow with its start-up notices held back.
from alexnet_tf.data import dataset_stats, sources, stats
from alexnet_tf.errors import ConfigError

from absl import flags, logging

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared data set, ILSVRC folder or tfds:NAME.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, f"Stats file to write; default DATA_DIR/{stats.STATS_FILENAME} "
                                              "(required for tfds:NAME).")
_MAX_IMAGES = flags.DEFINE_integer("max_images", 0, "Use the first N training images; 0 = all.", lower_bound=0)
_STORED_SIZE = flags.DEFINE_integer("stored_size", None, "For unprepared sources: side of the stored square "
                                                         "(default 256); prepared data sets record theirs.",
                                    lower_bound=8)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", dataset_stats.DEFAULT_BATCH_SIZE, "Images decoded per step.",
                                   lower_bound=1)

flags.register_validator(
    "data_dir", lambda v: v is None or v.startswith(sources.TFDS_PREFIX) or "://" in v or os.path.isdir(v),
    message="--data_dir must be an existing folder or tfds:NAME")


def output_path(data_dir: str, output: str | None) -> str:
    """--output, else DATA_DIR/stats.npz; a tfds: source is no folder, so it needs --output."""
    if output:
        return output
    if data_dir.startswith(sources.TFDS_PREFIX):
        raise ConfigError(f"--data_dir={data_dir} is not a folder to write {stats.STATS_FILENAME} to: give "
                          "--output=PATH, then train with --stats_path=PATH")
    return files.join(data_dir, stats.STATS_FILENAME)


def compute(data_dir: str, output: str | None) -> tuple[str, stats.Stats]:
    output = output_path(data_dir, output)
    result = dataset_stats.compute_dataset_stats(data_dir, batch_size=_BATCH_SIZE.value,
                                                 max_images=_MAX_IMAGES.value, stored_size=_STORED_SIZE.value)
    stats.save_stats(output, result)
    return output, result


def main(argv: list[str]) -> None:
    output, result = cli.run_main("compute_stats", lambda: compute(_DATA_DIR.value, _OUTPUT.value), argv)
    logging.info("Wrote %s", output)
    print(f"{output}: per-channel mean {[round(float(v), 2) for v in result.mean_rgb]}, "
          f"eigenvalues {[round(float(v), 4) for v in result.eigval]}")


if __name__ == "__main__":
    cli.quiet_main(main)
