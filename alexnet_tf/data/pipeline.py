"""Data sources and the paper's tf.data input pipelines (Sections 2 and 4.1).

`data_dir` names one of three sources:
  * a directory prepared by `python tools/prepare_imagenet.py` (fast path): TFRecord shards
    `<split>-NNNNN-of-NNNNN.tfrecord` of JPEGs stored as the paper stored them (shorter side rescaled to the
    stored size, centre square), `labels.txt` (`index<TAB>wnid<TAB>name`) and `dataset_info.json`;
  * `tfds:<name>`, a TensorFlow Datasets image-classification data set (e.g. `tfds:imagenet2012`, prepared by
    TFDS from the ILSVRC2012 tar files in its manual_dir) read from TFDS's data dir ($TFDS_DATA_DIR, default
    ~/tensorflow_datasets);
  * a directory in ILSVRC layout: `train/<wnid>/*.JPEG`, and `val/<wnid>/*.JPEG` or a flat `val/` whose labels
    come from a ground-truth file (`val_labels`, see `read_val_labels`).
The last two are decoded and rescaled on the fly (slow path, files that fail to decode are logged and skipped);
for real training prepare them first.

Images leave the pipeline as float32 on the 0-255 scale with the mean subtracted, RGB (or BGR on request, for
Caffe-trained weights); labels are int32 class indices in sorted-wnid order (n01440764 -> 0 for ImageNet).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from alexnet_tf.data import augment, stats as stats_lib

TRAIN = "train"
VALIDATION = "validation"
DATASET_INFO_FILENAME = "dataset_info.json"
LABELS_FILENAME = "labels.txt"
TFDS_PREFIX = "tfds:"
IMAGENET_STORED_SIZE = 256  # Section 2: shorter side rescaled to 256, central 256x256 patch kept.
IMAGENET_CROP_SIZE = 224  # Section 4.1: random 224x224 patches.
DEFAULT_SHUFFLE_BUFFER = 8192
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
MEAN_MODES = ("image", "channel", "none")
CHANNEL_ORDERS = ("RGB", "BGR")
ENCODED_KEY = "image/encoded"
LABEL_KEY = "image/class/label"
FILENAME_KEY = "image/filename"
ILSVRC_SPLIT_DIRS = {TRAIN: "train", VALIDATION: "val"}  # Split -> folder of an ILSVRC layout.
_FEATURES = {
    ENCODED_KEY: tf.io.FixedLenFeature([], tf.string),
    LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
}


def shard_filename(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def _not_prepared(data_dir: str, problem: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{data_dir}: {problem}. Prepare the data with: python tools/prepare_imagenet.py "
        f"--input_dir=<ILSVRC folder or tfds:NAME> --output_dir={data_dir}")


def _source_kind(data_dir: str) -> str:
    """'tfds', 'prepared' or 'ilsvrc'; raises FileNotFoundError (with the command to run) for anything else."""
    if data_dir.startswith(TFDS_PREFIX):
        return "tfds"
    if not os.path.isdir(data_dir):
        raise _not_prepared(data_dir, "no such directory")
    if os.path.isfile(os.path.join(data_dir, DATASET_INFO_FILENAME)):
        return "prepared"
    if any(os.path.isdir(os.path.join(data_dir, d)) for d in ILSVRC_SPLIT_DIRS.values()):
        return "ilsvrc"
    raise _not_prepared(data_dir, f"neither a prepared data set (no {DATASET_INFO_FILENAME}; an interrupted "
                                  "preparation resumes when rerun) nor an ILSVRC folder (no train/ or val/)")


def read_dataset_info(data_dir: str) -> dict:
    """The `dataset_info.json` of a prepared directory: stored_size, num_classes, splits.<split>.num_examples."""
    if _source_kind(data_dir) != "prepared":
        raise _not_prepared(data_dir, "not a prepared data set")
    with open(os.path.join(data_dir, DATASET_INFO_FILENAME)) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------------- ILSVRC.

def read_names_file(path: str) -> dict[str, str]:
    """wnid -> human-readable name, from `wnid name...` lines (LOC_synset_mapping.txt, words.txt)."""
    names = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(None, 1)
            if parts:
                names[parts[0]] = parts[1] if len(parts) > 1 else parts[0]
    return names


def ilsvrc_wnids(root: str) -> list[str]:
    """The classes of an ILSVRC folder in index order: sorted wnids (sub-folders of train/, else of val/)."""
    for split_dir in ILSVRC_SPLIT_DIRS.values():
        path = os.path.join(root, split_dir)
        wnids = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))) \
            if os.path.isdir(path) else []
        if wnids:
            return wnids
    raise _not_prepared(root, "no class folders under train/ or val/")


def _image_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, f)))


def read_val_labels(path: str, files: list[str]) -> list[str]:
    """The wnid of each of `files` (sorted paths of a flat val/ folder) from a ground-truth file.

    Accepted formats: one wnid per line in file-name order (TFDS's imagenet2012_validation_labels.txt), or
    `<image id or file name>[ ,]<wnid> ...` lines (Kaggle's LOC_val_solution.csv, header allowed). The devkit's
    ILSVRC2012_validation_ground_truth.txt holds ILSVRC2012_IDs, which are not in wnid order; convert it first.
    """
    with open(path) as f:
        rows = [line.replace(",", " ").split() for line in f if line.strip()]
    if rows and all(len(row) == 1 for row in rows):
        if rows[0][0].isdigit():
            raise ValueError(f"{path}: integer labels (devkit ILSVRC2012_IDs) are not in wnid order; give one "
                             "wnid per line, or `file wnid` lines")
        if len(rows) != len(files):
            raise ValueError(f"{path}: {len(rows)} labels for {len(files)} validation images")
        return [row[0] for row in rows]
    by_id = {os.path.splitext(row[0])[0]: row[1] for row in rows if len(row) > 1}
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    missing = [s for s in stems if s not in by_id]
    if missing:
        raise ValueError(f"{path}: no label for {len(missing)} validation images, e.g. {missing[0]}")
    return [by_id[s] for s in stems]


def list_ilsvrc(root: str, split: str, *, val_labels: str | None = None) -> tuple[list[str], list[int]]:
    """(paths, labels) of an ILSVRC-layout split, sorted by path; labels index `ilsvrc_wnids(root)`."""
    wnids = ilsvrc_wnids(root)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    folder = os.path.join(root, ILSVRC_SPLIT_DIRS[split])
    if not os.path.isdir(folder):
        raise _not_prepared(root, f"no {ILSVRC_SPLIT_DIRS[split]}/ folder for the {split} split")
    class_dirs = [d for d in sorted(os.listdir(folder)) if d in index]
    if class_dirs:
        pairs = [(p, index[d]) for d in class_dirs for p in _image_files(os.path.join(folder, d))]
    else:
        files = _image_files(folder)
        if val_labels is None:
            raise ValueError(f"{folder} is a flat folder: its labels need a ground-truth file (val_labels)")
        unknown = sorted(set(read_val_labels(val_labels, files)) - set(index))
        if unknown:
            raise ValueError(f"{val_labels}: wnids not among the training classes, e.g. {unknown[0]}")
        pairs = list(zip(files, (index[w] for w in read_val_labels(val_labels, files))))
    return [p for p, _ in pairs], [label for _, label in pairs]


# ------------------------------------------------------------------------------------------------------ TFDS.

def _tfds_builder(data_dir: str):
    import tensorflow_datasets as tfds  # Imported lazily: it is slow to import and only this source needs it.
    return tfds.builder(data_dir[len(TFDS_PREFIX):])


def tfds_encoded(data_dir: str, split: str, *, shuffle_files: bool = False,
                 seed: int | None = None) -> tf.data.Dataset:
    """(encoded image bytes, int64 label) pairs of a TFDS split, left undecoded."""
    import tensorflow_datasets as tfds
    return tfds.load(data_dir[len(TFDS_PREFIX):], split=split, as_supervised=True, shuffle_files=shuffle_files,
                     decoders={"image": tfds.decode.SkipDecoding()},
                     read_config=tfds.ReadConfig(shuffle_seed=seed))


# --------------------------------------------------------------------------------------- Labels and counts.

def read_labels(data_dir: str, *, names_file: str | None = None) -> list[tuple[str, str]]:
    """(wnid, name) per class in index order; `names_file` (see `read_names_file`) names unprepared sources."""
    kind = _source_kind(data_dir)
    if kind == "prepared":
        with open(os.path.join(data_dir, LABELS_FILENAME)) as f:
            rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
        return [(wnid, name) for _, wnid, name in rows]
    wnids = ilsvrc_wnids(data_dir) if kind == "ilsvrc" else _tfds_builder(data_dir).info.features["label"].names
    names = read_names_file(names_file) if names_file else {}
    return [(wnid, names.get(wnid, wnid)) for wnid in wnids]


def num_classes(data_dir: str) -> int:
    return len(read_labels(data_dir))


def num_examples(data_dir: str, split: str, *, val_labels: str | None = None) -> int:
    """Examples in `split` ('train' or 'validation'; any split name for TFDS)."""
    kind = _source_kind(data_dir)
    if kind == "prepared":
        splits = read_dataset_info(data_dir)["splits"]
        if split not in splits:
            raise _not_prepared(data_dir, f"no {split} split (has {sorted(splits)})")
        return int(splits[split]["num_examples"])
    if kind == "ilsvrc":
        return len(list_ilsvrc(data_dir, split, val_labels=val_labels)[0])
    return _tfds_builder(data_dir).info.splits[split].num_examples


# ------------------------------------------------------------------------------------------------ Pipelines.

def _stored_size(data_dir: str, kind: str, stored_size: int | None, image_size: int) -> int:
    if kind == "prepared":
        prepared_size = int(read_dataset_info(data_dir)["stored_size"])
        if stored_size not in (None, prepared_size):
            raise ValueError(f"{data_dir} stores {prepared_size} px images, not stored_size={stored_size}")
        stored_size = prepared_size
    stored_size = stored_size or IMAGENET_STORED_SIZE
    if not 0 < image_size <= stored_size:
        raise ValueError(f"image_size={image_size} must be in [1, stored size {stored_size}]")
    return stored_size


def _encoded_records(data_dir: str, kind: str, split: str, *, training: bool, seed: int | None,
                     deterministic: bool, val_labels: str | None) -> tf.data.Dataset:
    """(encoded image, label) pairs; shuffled by file (shard, path or TFDS file) when `training`."""
    if kind == "tfds":
        return tfds_encoded(data_dir, split, shuffle_files=training, seed=seed)
    if kind == "ilsvrc":
        paths, labels = list_ilsvrc(data_dir, split, val_labels=val_labels)
        records = tf.data.Dataset.from_tensor_slices((paths, labels))
        if training:  # A list of paths shuffles whole, so no record shuffle buffer is needed after it.
            records = records.shuffle(len(paths), seed=seed)
        return records.map(lambda path, label: (tf.io.read_file(path), label), num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=deterministic)
    num_examples(data_dir, split)  # Raises a clear error for a missing split.
    pattern = os.path.join(data_dir, f"{split}-*-of-*.tfrecord")
    if training:
        files = tf.data.Dataset.list_files(pattern, shuffle=True, seed=seed)
        serialized = files.interleave(tf.data.TFRecordDataset, num_parallel_calls=tf.data.AUTOTUNE,
                                      deterministic=deterministic)
    else:
        serialized = tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern)))
    return serialized.map(_parse_record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _parse_record(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    features = tf.io.parse_single_example(serialized, _FEATURES)
    return features[ENCODED_KEY], features[LABEL_KEY]


def _window_decoder(kind: str | None, stored_size: int) -> Callable[[tf.Tensor, tf.Tensor, int], tf.Tensor]:
    """fn(encoded, offset, size) -> uint8 [size, size, 3]: a window of the image as stored (Section 2)."""
    if kind == "prepared":
        return augment.decode_and_crop

    def decode(encoded: tf.Tensor, offset: tf.Tensor, size: int) -> tf.Tensor:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        window = augment.crop(augment.resize_shorter_and_centre_crop(image, stored_size), offset, size)
        return tf.ensure_shape(window, [size, size, 3])
    return decode


def _stats(data_dir: str | None, kind: str | None, stats_path: str | None, stored_size: int,
           needed: bool) -> stats_lib.Stats:
    if not needed:  # Not even a stale stats file in data_dir should matter then.
        return stats_lib.default_stats(stored_size)
    return stats_lib.resolve_stats(None if kind == "tfds" else data_dir, stats_path, stored_size)


def _needs_stats(mean: str, mean_rgb: Sequence[float] | None) -> bool:
    return mean == "image" or (mean == "channel" and mean_rgb is None)


def _mean_image(mean: str, stats: stats_lib.Stats, mean_rgb: Sequence[float] | None = None) -> tf.Tensor:
    """float32 [S, S, 3] to subtract: the mean image, or the constant image of the per-channel mean (`mean_rgb`,
    else the statistics'), or zeros."""
    if mean_rgb is not None and (mean != "channel" or len(mean_rgb) != 3):
        raise ValueError(f"mean_rgb={mean_rgb} needs mean='channel' and three values (R, G, B)")
    if mean == "image":
        return tf.constant(stats.mean_image)
    value = (stats.mean_rgb if mean_rgb is None else mean_rgb) if mean == "channel" else [0.0, 0.0, 0.0]
    return tf.constant(np.broadcast_to(np.asarray(value, np.float32), stats.mean_image.shape))


def _check_options(batch_size: int | None, mean: str, channel_order: str) -> None:
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    if mean not in MEAN_MODES:
        raise ValueError(f"mean={mean!r} must be one of {MEAN_MODES}")
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(f"channel_order={channel_order!r} must be one of {CHANNEL_ORDERS}")


def _with_options(dataset: tf.data.Dataset, deterministic: bool, threads: int | None) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = deterministic
    if threads:
        options.threading.private_threadpool_size = threads
    return dataset.with_options(options)


def make_train_dataset(data_dir: str, batch_size: int, *, image_size: int = IMAGENET_CROP_SIZE,
                       seed: int | None = None, deterministic: bool = False, pca_noise: bool = True,
                       mean: str = "image", stats_path: str | None = None, channel_order: str = "RGB",
                       stored_size: int | None = None, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                       threads: int | None = None, mean_rgb: Sequence[float] | None = None) -> tf.data.Dataset:
    """One shuffled, augmented pass over the training split (Section 4.1), in complete batches.

    Yields (images float32 [batch_size, image_size, image_size, 3], labels int32 [batch_size]); the last partial
    batch is dropped. Per image: a random image_size crop of the stored image, minus the same window of the mean
    (`mean`: 'image', 'channel' or 'none'; statistics from `stats_path`, else `<data_dir>/stats.npz`, else the
    ImageNet defaults; `mean_rgb`, R, G, B on 0-255, overrides the per-channel mean), plus PCA colour noise,
    mirrored with p=0.5, in `channel_order`. Each iteration reshuffles and redraws the augmentation. With `seed`
    the stream of iterations is repeatable, batch for batch if also `deterministic` (else tf.data may reorder
    elements for speed). `stored_size` is for unprepared sources (default 256); `threads` gives the pipeline a
    private thread pool of that size.
    """
    _check_options(batch_size, mean, channel_order)
    kind = _source_kind(data_dir)
    stored_size = _stored_size(data_dir, kind, stored_size, image_size)
    if kind == "prepared" and num_examples(data_dir, TRAIN) < batch_size:
        raise ValueError(f"{data_dir}: {num_examples(data_dir, TRAIN)} training examples make no complete "
                         f"batch of {batch_size}")
    stats = _stats(data_dir, kind, stats_path, stored_size, needed=pca_noise or _needs_stats(mean, mean_rgb))
    decode_window = _window_decoder(kind, stored_size)
    mean_image = _mean_image(mean, stats, mean_rgb)
    eigval, eigvec = tf.constant(stats.eigval), tf.constant(stats.eigvec)

    def decode(record: tuple[tf.Tensor, tf.Tensor], draws: tf.Tensor) -> tuple[tf.Tensor, ...]:
        encoded, label = record
        offset, mirror = augment.random_crop_and_mirror(draws[0], stored_size, image_size)
        return decode_window(encoded, offset, image_size), offset, mirror, draws, tf.cast(label, tf.int32)

    def finish(crops, offsets, mirror, draws, labels) -> tuple[tf.Tensor, tf.Tensor]:
        count = tf.shape(crops)[0]
        # One noise seed per batch: the first example's pair of draws.
        rgb_shifts = augment.pca_color_shifts(eigval, eigvec, draws[0], count) if pca_noise else tf.zeros([count, 3])
        return augment.finish_crops(crops, mean_image, offsets, rgb_shifts, mirror, channel_order == "BGR"), labels

    records = _encoded_records(data_dir, kind, TRAIN, training=True, seed=seed, deterministic=deterministic,
                               val_labels=None)
    if kind != "ilsvrc":
        records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # Two random integers per example, drawn afresh each iteration: the augmentation of an example is then
    # independent of the order in which parallel map calls run.
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    dataset = tf.data.Dataset.zip(records, draws).map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                                                      deterministic=deterministic)
    if kind != "prepared":
        dataset = dataset.ignore_errors(log_warning=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if kind == "prepared":
        # A known length lets Keras size its epochs and progress bar instead of running out of data.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_examples(data_dir, TRAIN) // batch_size))
    dataset = dataset.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return _with_options(dataset, deterministic, threads)


def make_eval_transform(data_dir: str | None, *, image_size: int = IMAGENET_CROP_SIZE, ten_crop: bool = False,
                        mean: str = "image", stats_path: str | None = None, channel_order: str = "RGB",
                        stored_size: int | None = None, mean_rgb: Sequence[float] | None = None,
                        any_image: bool = False) -> Callable[[tf.Tensor], tf.Tensor]:
    """fn(encoded image, tf.string scalar) -> its test-time input as `make_eval_dataset` yields it (Section 4.1).

    The input is float32 [image_size, image_size, 3], or [10, image_size, image_size, 3] with `ten_crop`. Stored
    size and statistics are `data_dir`'s as in `make_eval_dataset`; `data_dir` None: `stored_size` (default 256)
    and `stats_path` or the ImageNet defaults. `any_image`: the bytes are an image of any size and format (a
    serving request), decoded and rescaled to the stored size as an ILSVRC folder's are, not a prepared data
    set's stored JPEG. An undecodable image raises tf.errors.InvalidArgumentError when the transform runs.
    """
    _check_options(None, mean, channel_order)
    kind = None if data_dir is None else _source_kind(data_dir)
    stored_size = _stored_size(data_dir, kind, stored_size, image_size)
    stats = _stats(data_dir, kind, stats_path, stored_size, needed=_needs_stats(mean, mean_rgb))
    decode_window = _window_decoder(None if any_image else kind, stored_size)
    mean_image = _mean_image(mean, stats, mean_rgb)
    margin = (stored_size - image_size) // 2  # The centre offset of augment.central_crop.
    window_offset, window_size = ((0, 0), stored_size) if ten_crop else ((margin, margin), image_size)

    def transform(encoded: tf.Tensor) -> tf.Tensor:
        offset = tf.constant(window_offset, tf.int32)
        window = decode_window(encoded, offset, window_size)
        image = augment.finish_crops(window[tf.newaxis], mean_image, offset[tf.newaxis], tf.zeros([1, 3]),
                                     tf.zeros([1], tf.bool), channel_order == "BGR")[0]
        return augment.ten_crops(image, image_size) if ten_crop else image
    return transform


def make_eval_dataset(data_dir: str, batch_size: int, *, image_size: int = IMAGENET_CROP_SIZE,
                      ten_crop: bool = False, split: str = VALIDATION, mean: str = "image",
                      stats_path: str | None = None, channel_order: str = "RGB", stored_size: int | None = None,
                      val_labels: str | None = None, threads: int | None = None,
                      mean_rgb: Sequence[float] | None = None) -> tf.data.Dataset:
    """Every example of `split`, in order, last partial batch kept (Section 4.1, test time).

    Yields (images float32 [B, image_size, image_size, 3], labels int32 [B]): the centre crop of the stored
    image; with `ten_crop`, images are [B, 10, image_size, image_size, 3] in `augment.ten_crops` order. Mean,
    statistics and channel order as in `make_train_dataset`; `val_labels` labels a flat ILSVRC val/ folder.
    """
    _check_options(batch_size, mean, channel_order)
    kind = _source_kind(data_dir)
    transform = make_eval_transform(data_dir, image_size=image_size, ten_crop=ten_crop, mean=mean,
                                    stats_path=stats_path, channel_order=channel_order, stored_size=stored_size,
                                    mean_rgb=mean_rgb)
    records = _encoded_records(data_dir, kind, split, training=False, seed=None, deterministic=True,
                               val_labels=val_labels)
    dataset = records.map(lambda encoded, label: (transform(encoded), tf.cast(label, tf.int32)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if kind != "prepared":
        dataset = dataset.ignore_errors(log_warning=True)
    dataset = dataset.batch(batch_size)
    if kind == "prepared":
        batches = -(-num_examples(data_dir, split) // batch_size)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return _with_options(dataset, True, threads)

