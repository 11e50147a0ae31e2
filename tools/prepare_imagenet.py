"""Prepares ImageNet (or any ILSVRC-layout folder or TFDS image data set) for training.

  python tools/prepare_imagenet.py --input_dir=SRC --output_dir=DST [--stored_size=256]

SRC is a folder holding train/<wnid>/*.JPEG and optionally val/<wnid>/*.JPEG or a flat val/ (labelled by
--val_labels), or `tfds:NAME` (e.g. tfds:imagenet2012, built offline by TFDS from ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in --manual_dir, default $TFDS_DATA_DIR/downloads/manual). DST (local or gs://...) receives
TFRecord shards of images stored as in Section 2 of the paper (shorter side rescaled to --stored_size, centre
square, JPEG), labels.txt, dataset_info.json and, last, the training set's statistics (stats.npz); training and
evaluation take --data_dir=DST. Rerunning the same command resumes an interrupted preparation (or starts over if
the input changed). Files left out are listed at the end, each with its path and the reason.
"""

import os

from alexnet_tf import cli  # First: it imports TensorFlow with its start-up notices held back.
from alexnet_tf.data import prepare, records, sources

from absl import flags, logging

_INPUT_DIR = flags.DEFINE_string("input_dir", None, "ILSVRC-layout folder (train/, val/) or tfds:NAME.",
                                 required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder to write the prepared data set to.", required=True)
_STORED_SIZE = flags.DEFINE_integer("stored_size", records.IMAGENET_STORED_SIZE,
                                    "Side in pixels of the stored square images (256 in the paper).",
                                    lower_bound=8)
_JPEG_QUALITY = flags.DEFINE_integer("jpeg_quality", prepare.DEFAULT_JPEG_QUALITY,
                                     "JPEG quality of the stored images.", lower_bound=1, upper_bound=100)
_IMAGES_PER_SHARD = flags.DEFINE_integer("images_per_shard", prepare.DEFAULT_IMAGES_PER_SHARD,
                                         "Images per TFRecord shard.", lower_bound=1)
_NUM_THREADS = flags.DEFINE_integer("num_threads", 0, "Shards written in parallel; 0 = one per CPU core.",
                                    lower_bound=0)
_VAL_LABELS = flags.DEFINE_string("val_labels", None,
                                  "Ground truth for a flat val/ folder: one wnid per line in file-name order, "
                                  "or `file wnid` lines (e.g. LOC_val_solution.csv).")
_NAMES_FILE = flags.DEFINE_string("names_file", None,
                                  "`wnid name` lines (e.g. LOC_synset_mapping.txt) naming the classes in "
                                  "labels.txt; without it the name is the wnid.")
_SEED = flags.DEFINE_integer("seed", prepare.DEFAULT_SHUFFLE_SEED, "Seed of the training shard order.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None,
                                  "For tfds:NAME: the folder of manually downloaded files TFDS builds from (for "
                                  "imagenet2012: ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar); default "
                                  "$TFDS_DATA_DIR/downloads/manual.")
_MAX_FILE_MB = flags.DEFINE_float("max_file_mb", prepare.DEFAULT_MAX_FILE_BYTES / 2**20,
                                  "Files larger than this many MiB are skipped unread (and reported).",
                                  lower_bound=0)

flags.register_validator(
    "input_dir", lambda v: v is None or v.startswith(sources.TFDS_PREFIX) or "://" in v or os.path.isdir(v),
    message="--input_dir must be an existing folder or tfds:NAME")
for _name in ("val_labels", "names_file"):
    flags.register_validator(_name, lambda v: v is None or os.path.isfile(v), message=f"--{_name}: no such file")


def main(argv: list[str]) -> None:
    reports = cli.run_main("prepare_imagenet", lambda: prepare.prepare(
        _INPUT_DIR.value, _OUTPUT_DIR.value, stored_size=_STORED_SIZE.value, jpeg_quality=_JPEG_QUALITY.value,
        images_per_shard=_IMAGES_PER_SHARD.value, num_threads=_NUM_THREADS.value or None,
        val_labels=_VAL_LABELS.value, names_file=_NAMES_FILE.value, seed=_SEED.value,
        manual_dir=_MANUAL_DIR.value, max_file_bytes=int(_MAX_FILE_MB.value * 2**20)), argv)
    for split, report in reports.items():
        logging.info("%s: %d images in %d shards, %d skipped", split, report.num_examples, report.num_shards,
                     len(report.skipped))
    print(f"Prepared {_OUTPUT_DIR.value}: " + ", ".join(
        f"{split} {r.num_examples} images ({len(r.skipped)} skipped)" for split, r in reports.items()))


if __name__ == "__main__":
    cli.quiet_main(main)
