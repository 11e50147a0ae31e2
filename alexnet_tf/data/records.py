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

import tensorflow as tf

from alexnet_tf import files
from alexnet_tf.errors import DataError, tf_error_line

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
    paths = sorted(tf.io.gfile.glob(files.join(data_dir, shard_pattern(split, num_shards))))
    if len(paths) != num_shards:
        raise not_prepared(data_dir, f"{DATASET_INFO_FILENAME} names {num_shards} {split} shards, "
                                     f"{len(paths)} are there")
    return paths


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


def read_json(path: str) -> dict:
    """The JSON object at `path`; DataError if it is not valid JSON."""
    value = files.read_json(path)
    if not isinstance(value, dict):
        raise DataError(f"{path}: not valid JSON (a JSON object was expected)")
    return value


def is_prepared(data_dir: str) -> bool:
    return tf.io.gfile.exists(files.join(data_dir, DATASET_INFO_FILENAME))


def read_dataset_info(data_dir: str) -> dict:
    """dataset_info.json of a prepared directory: stored_size, num_classes, splits.<split>.num_examples, ..."""
    path = files.join(data_dir, DATASET_INFO_FILENAME)
    if not tf.io.gfile.exists(path):
        raise not_prepared(data_dir, f"no {DATASET_INFO_FILENAME} (an interrupted preparation resumes when rerun)")
    info = read_json(path)
    missing = [key for key in _INFO_KEYS if key not in info]
    if missing:
        raise not_prepared(data_dir, f"{DATASET_INFO_FILENAME} lacks {', '.join(missing)}")
    return info


def write_dataset_info(data_dir: str, info: dict) -> None:
    files.write_json(files.join(data_dir, DATASET_INFO_FILENAME), info)


def read_labels(data_dir: str) -> list[tuple[str, str]]:
    """(wnid, name) per class in index order, from labels.txt."""
    path = files.join(data_dir, LABELS_FILENAME)
    if not tf.io.gfile.exists(path):
        raise not_prepared(data_dir, f"no {LABELS_FILENAME}")
    with tf.io.gfile.GFile(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f.read().splitlines(keepends=True) if line.strip()]
    if any(len(row) != 3 or row[0] != str(i) for i, row in enumerate(rows)):
        raise not_prepared(data_dir, f"{LABELS_FILENAME} is not index<TAB>wnid<TAB>name lines in index order")
    return [(wnid, name) for _, wnid, name in rows]


def write_labels(data_dir: str, labels: list[tuple[str, str]]) -> None:
    lines = "".join(f"{i}\t{wnid}\t{name}\n" for i, (wnid, name) in enumerate(labels))
    files.write_text(files.join(data_dir, LABELS_FILENAME), lines)


def corrupt_data_error(data_dir: str | None, error: tf.errors.OpError) -> DataError:
    """A DataError for a DataLossError while reading `data_dir`, naming its corrupt TFRecord files.

    TensorFlow's message gives only the offset of the bad record, so the files are read once more to find it
    (TFRecordDataset checks every record's CRC); this costs a pass over the data, but only after a failure.
    """
    shards = sorted(path for split in SPLITS
                    for path in tf.io.gfile.glob(files.join(data_dir, shard_pattern(split)))) if data_dir else []
    corrupt = [path for path in shards if _is_corrupt(path)]
    return DataError(f"unreadable data ({tf_error_line(error)}) in {', '.join(corrupt) or data_dir}: prepare "
                         "the data set again: " + prepare_command(data_dir or "DATA_DIR"))


def _is_corrupt(path: str) -> bool:
    try:
        for _ in tf.data.TFRecordDataset(path):
            pass
    except tf.errors.DataLossError:
        return True
    return False
