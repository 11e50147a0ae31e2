"""The prepared data set's format, shared by its writer (prepare.py) and its readers (sources.py, pipeline.py).

Layout of a prepared directory (local, or any file system tf.io.gfile knows: gs://, ram://, ...):
  <split>-NNNNN-of-NNNNN.tfrecord  tf.train.Examples: image/encoded (a JPEG of the stored image), image/class/label
                                   (int64, 0-based index of labels.txt), image/filename (bytes, the source path).
  labels.txt                       index<TAB>wnid<TAB>name, one line per class, in index order.
  dataset_info.json                stored_size (px), num_classes, jpeg_quality and per split num_examples,
                                   num_shards and skipped ({path: reason}); written last by the writer: its
                                   presence means the shards are complete.
  stats.npz                        the training split's statistics (see stats.py), written after dataset_info.

Readers take only the `num_shards` shards dataset_info names (`shard_files`), so stray shards of another run with
another shard count are never read twice.
"""

from __future__ import annotations

import json
import os
import posixpath

import tensorflow as tf

from alexnet_tf.errors import DataError

TRAIN = "train"
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION)
IMAGENET_STORED_SIZE = 256  # Section 2: shorter side rescaled to 256, central 256x256 patch kept.
DATASET_INFO_FILENAME = "dataset_info.json"
LABELS_FILENAME = "labels.txt"
ENCODED_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
FILENAME_KEY = "image/filename"
FEATURES = {
    ENCODED_KEY: tf.io.FixedLenFeature([], tf.string),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
}
_INFO_KEYS = ("stored_size", "num_classes", "splits")


def join(directory: str, name: str) -> str:
    """`directory/name` for local paths and URLs alike (os.path.join would use '\\' on Windows for gs://)."""
    return posixpath.join(directory, name) if "://" in directory else os.path.join(directory, name)


def prepare_command(data_dir: str) -> str:
    return f"python tools/prepare_imagenet.py --input_dir=<ILSVRC folder or tfds:NAME> --output_dir={data_dir}"


def not_prepared(data_dir: str, problem: str) -> DataError:
    """The error for a data_dir that is not (or not completely) a usable data set, with the command to run."""
    return DataError(f"{data_dir}: {problem}. Prepare the data with: {prepare_command(data_dir)}")


def shard_filename(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_pattern(split: str, num_shards: int | None = None) -> str:
    """Glob of the shards of `split`: of one run (`num_shards`), or of any."""
    return f"{split}-*-of-{'*' if num_shards is None else f'{num_shards:05d}'}.tfrecord"


def shard_files(data_dir: str, split: str, num_shards: int) -> list[str]:
    """The `num_shards` shard paths of `split`, sorted; DataError if any is missing."""
    files = sorted(tf.io.gfile.glob(join(data_dir, shard_pattern(split, num_shards))))
    if len(files) != num_shards:
        raise not_prepared(data_dir, f"{DATASET_INFO_FILENAME} names {num_shards} {split} shards, "
                                     f"{len(files)} are there")
    return files


def serialize_example(jpeg: bytes, label: int, filename: bytes) -> bytes:
    """One record: `filename` is bytes, so a path that is not UTF-8 (os.fsencode) is kept as it is."""
    feature = {
        ENCODED_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        FILENAME_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[filename])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_example(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(encoded JPEG, int64 label) of one serialized record."""
    features = tf.io.parse_single_example(serialized, FEATURES)
    return features[ENCODED_KEY], features[LABEL_KEY]


def write_text(path: str, text: str) -> None:
    """Writes `path` atomically: a temporary name, then a rename over it."""
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(text)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def write_json(path: str, value: dict) -> None:
    write_text(path, json.dumps(value, indent=1))


def read_json(path: str) -> dict:
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.loads(f.read())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None


def is_prepared(data_dir: str) -> bool:
    return tf.io.gfile.exists(join(data_dir, DATASET_INFO_FILENAME))


def read_dataset_info(data_dir: str) -> dict:
    """dataset_info.json of a prepared directory: stored_size, num_classes, splits.<split>.num_examples, ..."""
    path = join(data_dir, DATASET_INFO_FILENAME)
    if not tf.io.gfile.exists(path):
        raise not_prepared(data_dir, f"no {DATASET_INFO_FILENAME} (an interrupted preparation resumes when rerun)")
    info = read_json(path)
    missing = [key for key in _INFO_KEYS if key not in info]
    if missing:
        raise not_prepared(data_dir, f"{DATASET_INFO_FILENAME} lacks {', '.join(missing)}")
    return info


def write_dataset_info(data_dir: str, info: dict) -> None:
    write_json(join(data_dir, DATASET_INFO_FILENAME), info)


def read_labels(data_dir: str) -> list[tuple[str, str]]:
    """(wnid, name) per class in index order, from labels.txt."""
    path = join(data_dir, LABELS_FILENAME)
    if not tf.io.gfile.exists(path):
        raise not_prepared(data_dir, f"no {LABELS_FILENAME}")
    with tf.io.gfile.GFile(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f.read().splitlines(keepends=True) if line.strip()]
    if any(len(row) != 3 or row[0] != str(i) for i, row in enumerate(rows)):
        raise not_prepared(data_dir, f"{LABELS_FILENAME} is not index<TAB>wnid<TAB>name lines in index order")
    return [(wnid, name) for _, wnid, name in rows]


def write_labels(data_dir: str, labels: list[tuple[str, str]]) -> None:
    write_text(join(data_dir, LABELS_FILENAME), "".join(f"{i}\t{w}\t{n}\n" for i, (w, n) in enumerate(labels)))
