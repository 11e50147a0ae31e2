"""Computes the training set's mean image and RGB eigen-decomposition (Sections 2 and 4.1).

  python tools/compute_stats.py --data_dir=DST [--output=DST/stats.npz] [--max_images=N]

Reads the stored images of the training split (all of them, or the first --max_images: prepared training shards
are in shuffled order, so that is a random sample; an ILSVRC folder lists images class by class) and writes
the .npz that the input pipeline picks up from DST/stats.npz by default. Units: see alexnet_tf/data/stats.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from alexnet_tf.data import pipeline, stats  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared data set, ILSVRC folder or tfds:NAME.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, f"Stats file to write; default DATA_DIR/{stats.STATS_FILENAME}.")
_MAX_IMAGES = flags.DEFINE_integer("max_images", 0, "Use the first N training images; 0 = all.", lower_bound=0)
_STORED_SIZE = flags.DEFINE_integer("stored_size", None, "For unprepared sources: side of the stored square "
                                                         "(default 256); prepared data sets record theirs.",
                                    lower_bound=8)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images decoded per step.", lower_bound=1)

flags.register_validator(
    "data_dir", lambda v: v is None or v.startswith(pipeline.TFDS_PREFIX) or os.path.isdir(v),
    message="--data_dir must be an existing folder or tfds:NAME")


def stored_image_batches(data_dir: str, batch_size: int, max_images: int, stored_size: int | None):
    """Batches of whole stored training images, float32 [B, S, S, 3], 0-255, RGB, nothing subtracted."""
    if stored_size is None and not data_dir.startswith(pipeline.TFDS_PREFIX) and os.path.isfile(
            os.path.join(data_dir, pipeline.DATASET_INFO_FILENAME)):
        stored_size = int(pipeline.read_dataset_info(data_dir)["stored_size"])
    stored_size = stored_size or pipeline.IMAGENET_STORED_SIZE
    # The centre crop of the stored size is the whole stored image.
    dataset = pipeline.make_eval_dataset(data_dir, batch_size, split=pipeline.TRAIN,
                                               image_size=stored_size, stored_size=stored_size, mean="none")
    images = dataset.map(lambda images, labels: images)
    if max_images:
        images = images.unbatch().take(max_images).batch(batch_size)
    return images.as_numpy_iterator()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    output = _OUTPUT.value or os.path.join(_DATA_DIR.value, stats.STATS_FILENAME)
    try:
        batches = stored_image_batches(_DATA_DIR.value, _BATCH_SIZE.value, _MAX_IMAGES.value, _STORED_SIZE.value)
        result = stats.compute_stats(batches)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"compute_stats: {error}")
    stats.save_stats(output, result)
    logging.info("Wrote %s", output)
    print(f"{output}: per-channel mean {[round(float(v), 2) for v in result.mean_rgb]}, "
          f"eigenvalues {[round(float(v), 4) for v in result.eigval]}")


if __name__ == "__main__":
    app.run(main)
