"""The three kinds of data set the pipeline reads, behind one `Source` interface.

`open_source(data_dir)` picks the kind from `data_dir`:
  * a directory prepared by `python tools/prepare_imagenet.py` (`PreparedSource`, the fast path; format in
    records.py): JPEGs stored as the paper stored them, decoded and cropped in one fused step;
  * `tfds:<name>` (`TfdsSource`), a TensorFlow Datasets image-classification data set already built in TFDS's data
    dir ($TFDS_DATA_DIR, default ~/tensorflow_datasets; `prepare_tfds` builds one, e.g. imagenet2012 from its tars);
  * a directory in ILSVRC layout (`IlsvrcSource`, see ilsvrc.py).
The last two are decoded and rescaled to the stored size on the fly (slow; files that fail to decode are logged
and skipped by the pipeline); for real training prepare them first.

Labels are int64 class indices in sorted-wnid order (n01440764 -> 0 for ImageNet).
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable

import tensorflow as tf

from alexnet_tf import files
from alexnet_tf.data import augment, ilsvrc, records, stats as stats_lib
from alexnet_tf.errors import DataError

TFDS_PREFIX = "tfds:"
WindowDecoder = Callable[[tf.Tensor, tf.Tensor, int], tf.Tensor]


def decode_any_window(stored_size: int) -> WindowDecoder:
    """fn(encoded, offset, size) for images of any size and format: decoded, rescaled as in Section 2, cropped."""
    def decode(encoded: tf.Tensor, offset: tf.Tensor, size: int) -> tf.Tensor:
        image = augment.decode_bounded(encoded)  # An image whose header claims too many pixels is skipped.
        window = augment.crop(augment.resize_shorter_and_centre_crop(image, stored_size), offset, size)
        return tf.ensure_shape(window, [size, size, 3])
    return decode


class Source(abc.ABC):
    """A data set: its classes, splits and (encoded image, int64 label) records.

    `stored_size` is the side (px) of the stored square images, None where the caller chooses it (images are
    rescaled on the fly). `prepared`: records are counted and known to decode, so datasets have a known length
    and need no error skipping.
    """

    data_dir: str
    stored_size: int | None = None
    prepared: bool = False
    shuffles_whole: bool = False  # `encoded(training=True)` is already shuffled whole: no shuffle buffer needed.

    @abc.abstractmethod
    def labels(self) -> list[tuple[str, str]]:
        """(wnid, display name) per class, in index order."""

    @property
    def num_classes(self) -> int:
        return len(self.labels())

    def class_names(self) -> list[str]:
        return [name for _, name in self.labels()]

    @abc.abstractmethod
    def num_examples(self, split: str) -> int | None:
        """Examples of `split`, None if unknown; DataError if the source has no such split."""

    @abc.abstractmethod
    def has_split(self, split: str) -> bool:
        """Whether the source holds `split`."""

    @abc.abstractmethod
    def encoded(self, split: str, *, training: bool, seed: int | None = None,
                deterministic: bool = True) -> tf.data.Dataset:
        """(encoded image bytes, int64 label) pairs of `split`; shuffled by file when `training`."""

    def window_decoder(self, stored_size: int) -> WindowDecoder:
        """fn(encoded, offset (y, x) int32 [2], size) -> uint8 [size, size, 3], a window of the stored image."""
        return decode_any_window(stored_size)

    def stats_path(self) -> str | None:
        """The statistics file the source carries, if any."""
        return None

    def _missing_split(self, split: str, present: list[str]) -> DataError:
        return DataError(f"{self.data_dir}: no {split} split (has {sorted(present)})")


class PreparedSource(Source):
    prepared = True

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.info = records.read_dataset_info(data_dir)
        self.stored_size = int(self.info["stored_size"])
        self._labels = records.read_labels(data_dir)

    def labels(self) -> list[tuple[str, str]]:
        return list(self._labels)

    def has_split(self, split: str) -> bool:
        return split in self.info["splits"]

    def num_examples(self, split: str) -> int:
        if not self.has_split(split):
            raise self._missing_split(split, list(self.info["splits"]))
        return int(self.info["splits"][split]["num_examples"])

    def encoded(self, split, *, training, seed=None, deterministic=True):
        self.num_examples(split)  # A clear error for a missing split.
        num_shards = self.info["splits"][split].get("num_shards")
        if num_shards is None:  # Written before num_shards was recorded: every shard of the split.
            shards = sorted(tf.io.gfile.glob(files.join(self.data_dir, records.shard_pattern(split))))
        else:
            shards = records.shard_files(self.data_dir, split, int(num_shards))
        if training:
            serialized = tf.data.Dataset.from_tensor_slices(shards).shuffle(len(shards), seed=seed).interleave(
                tf.data.TFRecordDataset, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        else:
            serialized = tf.data.TFRecordDataset(shards)
        return serialized.map(records.parse_example, num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=deterministic)

    def window_decoder(self, stored_size: int) -> WindowDecoder:
        return augment.decode_and_crop

    def stats_path(self) -> str | None:
        path = files.join(self.data_dir, stats_lib.STATS_FILENAME)
        return path if tf.io.gfile.exists(path) else None


class IlsvrcSource(Source):
    shuffles_whole = True

    def __init__(self, data_dir: str, *, names_file: str | None = None, val_labels: str | None = None):
        self.data_dir, self.names_file, self.val_labels = data_dir, names_file, val_labels
        self._wnids = ilsvrc.wnids(data_dir)

    def labels(self) -> list[tuple[str, str]]:
        names = ilsvrc.read_names_file(self.names_file) if self.names_file else {}
        return [(wnid, names.get(wnid, wnid)) for wnid in self._wnids]

    def has_split(self, split: str) -> bool:
        return split in ilsvrc.SPLIT_DIRS and ilsvrc.isdir(files.join(self.data_dir, ilsvrc.SPLIT_DIRS[split]))

    @functools.lru_cache(maxsize=None)
    def listing(self, split: str) -> ilsvrc.Listing:
        if not self.has_split(split):
            raise self._missing_split(split, [s for s in ilsvrc.SPLIT_DIRS if self.has_split(s)])
        return ilsvrc.list_split(self.data_dir, split, val_labels=self.val_labels)

    def num_examples(self, split: str) -> int:
        return len(self.listing(split).paths)

    def encoded(self, split, *, training, seed=None, deterministic=True):
        listing = self.listing(split)
        paths = [ilsvrc.fs_path(path) for path in listing.paths]
        records_ = tf.data.Dataset.from_tensor_slices((paths, tf.constant(listing.labels, tf.int64)))
        if training:  # A list of paths shuffles whole, so no record shuffle buffer is needed after it.
            records_ = records_.shuffle(len(paths), seed=seed)
        return records_.map(lambda path, label: (tf.io.read_file(path), label),
                            num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


class TfdsSource(Source):
    def __init__(self, data_dir: str, *, names_file: str | None = None):
        import tensorflow_datasets as tfds  # Imported lazily: slow to import, and only this source needs it.

        self.data_dir, self.names_file = data_dir, names_file
        self.name = data_dir[len(TFDS_PREFIX):]
        try:
            self.builder = tfds.builder(self.name)
        except Exception as error:  # TFDS raises DatasetNotFoundError and others with long messages.
            raise DataError(f"{data_dir}: not a TFDS data set ({str(error).splitlines()[0]})") from None

    def labels(self) -> list[tuple[str, str]]:
        wnids = self.builder.info.features["label"].names
        names = ilsvrc.read_names_file(self.names_file) if self.names_file else {}
        return [(wnid, names.get(wnid, wnid)) for wnid in wnids]

    def has_split(self, split: str) -> bool:
        splits = self.builder.info.splits
        return not splits or split in splits  # Not built yet (or mocked): let TFDS say.

    def num_examples(self, split: str) -> int | None:
        splits = self.builder.info.splits
        if not splits:
            return None
        if split not in splits:
            raise self._missing_split(split, list(splits))
        return int(splits[split].num_examples)

    def default_manual_dir(self) -> str:
        """Where TFDS looks for manually downloaded files: $TFDS_DATA_DIR/downloads/manual."""
        return str(self.builder.data_dir_root / "downloads" / "manual")

    def build(self, manual_dir: str | None = None) -> None:
        """Builds the data set in TFDS's data dir unless it is built (imagenet2012: from the ILSVRC2012 tars in
        `manual_dir`, default `default_manual_dir()`), offline. DataError in one line if the files are missing."""
        import tensorflow_datasets as tfds

        manual_dir = manual_dir or self.default_manual_dir()
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        try:
            self.builder.download_and_prepare(download_config=config)
        except AssertionError as error:  # TFDS's way of saying the manual files are missing.
            needs = " ".join(" ".join((self.builder.MANUAL_DOWNLOAD_INSTRUCTIONS or "").split()).split(". ")[:1])
            raise DataError(f"{self.data_dir}: TFDS cannot build it from {manual_dir} "
                            f"({' '.join(str(error).split()[:8])} ...): {needs}; put them there or pass "
                            "--manual_dir") from None

    def encoded(self, split, *, training, seed=None, deterministic=True):
        import tensorflow_datasets as tfds

        try:
            dataset = self.builder.as_dataset(split=split, as_supervised=True, shuffle_files=training,
                                              decoders={"image": tfds.decode.SkipDecoding()},
                                              read_config=tfds.ReadConfig(shuffle_seed=seed))
        except AssertionError as error:  # TFDS's "Dataset not found" when it is not built.
            raise DataError(f"{self.data_dir}: {str(error).splitlines()[0]} Build it with: "
                            f"{records.prepare_command('DST')}") from None
        return dataset.map(lambda image, label: (image, tf.cast(label, tf.int64)))


def open_source(data_dir: str, *, names_file: str | None = None, val_labels: str | None = None) -> Source:
    """The Source `data_dir` names; DataError (with the command to prepare one) if it names none.

    `names_file` (`wnid name` lines) names the classes of unprepared sources; `val_labels` labels a flat
    ILSVRC val/ folder (see ilsvrc.read_val_labels).
    """
    if data_dir.startswith(TFDS_PREFIX):
        return TfdsSource(data_dir, names_file=names_file)
    if not tf.io.gfile.isdir(data_dir):
        raise records.not_prepared(data_dir, "no such directory")
    if records.is_prepared(data_dir):
        return PreparedSource(data_dir)
    if any(ilsvrc.isdir(files.join(data_dir, d)) for d in ilsvrc.SPLIT_DIRS.values()):
        return IlsvrcSource(data_dir, names_file=names_file, val_labels=val_labels)
    raise records.not_prepared(data_dir, f"neither a prepared data set (no {records.DATASET_INFO_FILENAME}; an "
                                         "interrupted preparation resumes when rerun) nor an ILSVRC folder (no "
                                         "train/ or val/)")
