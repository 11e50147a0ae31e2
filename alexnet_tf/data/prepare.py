"""Writes a prepared data set: TFRecord shards of images stored as the paper stored them, and labels.txt.

Section 2: each image is rescaled so its shorter side is `stored_size` (256 for ImageNet) and its central
`stored_size` square is kept, here re-encoded as JPEG so training can decode and crop it in one fused step.

Any input Pillow reads comes through as 3-channel RGB: grayscale and CMYK JPEGs, PNGs named .JPEG, images
smaller than `stored_size` (upscaled, as the paper's rescaling implies). EXIF orientation is ignored, as TF's
decoders ignore it. No image is lost or duplicated silently: a file is skipped only with its path and the reason
(it cannot be decoded, it is truncated, it is over `max_file_bytes`, its header claims over MAX_IMAGE_PIXELS
pixels, its class is not among train/'s), logged, listed at the end and kept in dataset_info.json.

The format of `output_dir` is records.py's; training examples are in a fixed pseudo-random order (`seed`), so
every shard mixes classes; validation examples in sorted path order. `_progress/` holds the settings, a digest of
the input (relative names and sizes of its files) and one summary per finished shard. The last step computes the
training set's statistics (stats.npz, dataset_stats.py), as the paper did.

Everything is written through tf.io.gfile (local, gs://, ram://). Shards are written under a temporary name and
renamed when complete; a rerun of the same command skips every shard whose summary exists, so an interrupted
preparation resumes where it stopped. If the input changed meanwhile, the preparation starts over: the stale
shards are removed first, so shards of two runs never lie side by side.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import io
import itertools
import os
import random
import threading
from collections.abc import Iterator

import tensorflow as tf
import tqdm
from absl import logging
from PIL import Image, ImageFile

from alexnet_tf import files
from alexnet_tf.data import dataset_stats, ilsvrc, records, sources, stats as stats_lib
from alexnet_tf.errors import ConfigError, DataError

DEFAULT_JPEG_QUALITY = 95
DEFAULT_IMAGES_PER_SHARD = 1024
DEFAULT_SHUFFLE_SEED = 0
# Files over this are skipped unread (ILSVRC2012's largest photo is about 15 MB): a multi-gigabyte file would
# otherwise end the preparation in a MemoryError that names no file.
DEFAULT_MAX_FILE_BYTES = 100 * 2**20
# Images whose header claims more pixels are skipped: Pillow's decompression-bomb limit. A corrupt header claiming
# 13000x13000 would otherwise decode (with libjpeg's warning only) to a flat grey image.
MAX_IMAGE_PIXELS = 89_478_485
PROGRESS_DIR = "_progress"
_SETTINGS_FILENAME = "settings.json"
# Pillow raises these for unreadable, truncated or absurd files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # A truncated file is an error, never an image padded with grey.


class RejectedImage(ValueError):
    """An image prepare will not store; the message is the reason for the skip report."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One input image: `data` holds its bytes, or is None to read them from `path`."""

    path: str
    label: int
    data: bytes | None = None
    size: int | None = None  # Bytes of the file, if known before reading it.


@dataclasses.dataclass
class SplitReport:
    """One split's result: examples written, shards, and {path: reason} of each file skipped."""

    num_examples: int = 0
    num_shards: int = 0
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)


def encode_stored_image(data: bytes, stored_size: int, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Decodes any image Pillow reads and returns the JPEG of its stored form: RGB, stored_size square.

    Raises one of Pillow's decode errors (OSError, ValueError, ...) for an undecodable or truncated file, and
    RejectedImage for a header claiming over MAX_IMAGE_PIXELS pixels.
    """
    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise RejectedImage(f"its header claims {image.width}x{image.height} pixels, over the limit of "
                                f"{MAX_IMAGE_PIXELS} (a corrupt header or a decompression bomb)")
        # JPEG only: decode at the largest DCT scale (1/2, 1/4, 1/8) that keeps both sides >= stored_size,
        # several times faster on large photos and then resampled anyway.
        image.draft("RGB", (stored_size, stored_size))
        image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    # Resampling the central square box is the same as rescaling the shorter side, then centre cropping.
    # Bilinear with Pillow's antialiasing, like the on-the-fly path (augment.resize_shorter_and_centre_crop).
    image = image.resize((stored_size, stored_size), Image.Resampling.BILINEAR, box=box)
    output = io.BytesIO()
    image.save(output, format="JPEG", quality=jpeg_quality)
    return output.getvalue()


def _read(example: Example, max_file_bytes: int) -> bytes:
    """The bytes of `example`; RejectedImage for a file over `max_file_bytes`, checked before reading it."""
    if example.data is not None:
        return example.data
    path = ilsvrc.fs_path(example.path)
    size = example.size if example.size is not None else tf.io.gfile.stat(path).length
    if size > max_file_bytes:
        raise RejectedImage(f"{size} bytes, over the limit of {max_file_bytes} (max_file_bytes)")
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def _write_shard(examples: list[Example], output_dir: str, name: str, stored_size: int, jpeg_quality: int,
                 max_file_bytes: int, progress: tqdm.tqdm) -> dict:
    """Writes one shard atomically, then its summary {'num_examples', 'skipped'} (the resume marker)."""
    skipped = {}
    shard_path = files.join(output_dir, name)
    with tf.io.TFRecordWriter(files.partial_path(shard_path)) as writer:
        for example in examples:
            try:
                jpeg = encode_stored_image(_read(example, max_file_bytes), stored_size, jpeg_quality)
                writer.write(records.serialize_example(jpeg, example.label, ilsvrc.fs_path(example.path)))
            except RejectedImage as error:
                skipped[example.path] = str(error)
            except _DECODE_ERRORS as error:
                skipped[example.path] = f"cannot decode it ({error})"
            if example.path in skipped:
                logging.warning("Skipping %s: %s", example.path, skipped[example.path])
            progress.update()
    tf.io.gfile.rename(files.partial_path(shard_path), shard_path, overwrite=True)
    summary = {"num_examples": len(examples) - len(skipped), "skipped": skipped}
    files.write_json(_progress_path(output_dir, name + ".json"), summary)
    return summary


def _progress_path(output_dir: str, name: str) -> str:
    return files.join(output_dir, PROGRESS_DIR, name)


def write_split(examples: Iterator[Example], num_examples: int, output_dir: str, split: str, *,
                stored_size: int, jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                images_per_shard: int = DEFAULT_IMAGES_PER_SHARD, num_threads: int | None = None,
                max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> SplitReport:
    """Writes `examples` (`num_examples` of them, consumed once, in order) as the shards of `split`.

    Shards are written in parallel, one per thread (Pillow and TF release the GIL while decoding, resampling and
    encoding); at most two shards per thread are read ahead. Finished shards are skipped, their examples still
    consumed so every shard keeps its content.
    """
    num_shards = max(1, -(-num_examples // images_per_shard))
    num_threads = num_threads or os.cpu_count() or 1
    report = SplitReport(num_shards=num_shards)
    progress = tqdm.tqdm(total=num_examples, desc=split, unit="img", mininterval=2.0)
    in_flight = threading.BoundedSemaphore(2 * num_threads)

    def finish(summary: dict) -> None:
        report.num_examples += summary["num_examples"]
        skipped = summary["skipped"]  # A list of paths in summaries written before reasons were recorded.
        report.skipped.update(skipped if isinstance(skipped, dict) else dict.fromkeys(skipped, "cannot decode it"))

    pending = set()

    def collect(futures: set) -> None:  # Raises a shard's error, stopping the preparation.
        for future in futures:
            finish(future.result())
        pending.difference_update(futures)

    executor = concurrent.futures.ThreadPoolExecutor(num_threads)
    try:
        for index in range(num_shards):
            shard = list(itertools.islice(examples, images_per_shard))
            name = records.shard_filename(split, index, num_shards)
            summary_path = _progress_path(output_dir, name + ".json")
            if tf.io.gfile.exists(summary_path):
                finish(records.read_json(summary_path))
                progress.update(len(shard))
                continue
            in_flight.acquire()
            collect({future for future in pending if future.done()})
            future = executor.submit(_write_shard, shard, output_dir, name, stored_size, jpeg_quality,
                                     max_file_bytes, progress)
            future.add_done_callback(lambda _: in_flight.release())
            pending.add(future)
        collect(set(concurrent.futures.wait(pending).done))
    finally:
        # On an error or an interrupt, shards being written are finished (each is atomic), queued ones dropped.
        executor.shutdown(wait=True, cancel_futures=True)
        progress.close()
    report.skipped = dict(sorted(report.skipped.items()))
    return report


@dataclasses.dataclass
class _Input:
    """What a preparation reads: labels, per split (examples, count) makers, the digest of its files, and
    {path: reason} of files the listing already left out."""

    labels: list[tuple[str, str]]
    splits: dict[str, object]
    digest: str
    skipped: dict[str, dict[str, str]]


def _ilsvrc_input(source: sources.IlsvrcSource, seed: int) -> _Input:
    splits, skipped, digest = {}, {}, hashlib.sha256()
    for split in records.SPLITS:
        if not source.has_split(split):
            continue
        listing = source.listing(split)
        examples = [Example(path, label, size=size)
                    for path, label, size in zip(listing.paths, listing.labels, listing.sizes)]
        for path, label, size in zip(listing.paths, listing.labels, listing.sizes):
            relative = ilsvrc.fs_path(path[len(source.data_dir):].lstrip("/"))
            digest.update(b"%s\0%s\0%d\0%d\n" % (split.encode(), relative, label, size))
        if split == records.TRAIN:  # Mixes classes within every shard; fixed seed, so resuming is exact.
            random.Random(seed).shuffle(examples)
        splits[split] = (lambda examples=examples: (iter(examples), len(examples)))
        skipped[split] = listing.skipped
        if listing.skipped:
            logging.warning("%s: %d files left out:\n  %s", split, len(listing.skipped),
                            "\n  ".join(f"{p}: {r}" for p, r in listing.skipped.items()))
    return _Input(source.labels(), splits, digest.hexdigest(), skipped)


def _tfds_input(source: sources.TfdsSource, manual_dir: str | None) -> _Input:
    source.build(manual_dir)

    def examples(split: str) -> tuple[Iterator[Example], int]:
        dataset = source.encoded(split, training=False)
        count = source.num_examples(split)
        if count is None:  # A mocked builder: count them.
            count = sum(1 for _ in dataset)
        return (Example(f"{source.name}/{split}/{i}", int(label), bytes(data))
                for i, (data, label) in enumerate(dataset.as_numpy_iterator())), count

    # TFDS data sets are immutable per version: the version and split sizes identify the input.
    present = [s for s in records.SPLITS if source.has_split(s)]
    digest = f"{source.name}:{source.builder.info.version}:" + ",".join(
        f"{s}={source.num_examples(s)}" for s in present)
    return _Input(source.labels(), {s: functools.partial(examples, s) for s in present}, digest,
                  {s: {} for s in present})


def _remove_stale(output_dir: str) -> None:
    """Removes every shard, progress summary and result of an earlier preparation in `output_dir`."""
    stale = [path for split in records.SPLITS
             for pattern in (records.shard_pattern(split), files.PARTIAL_PREFIX + records.shard_pattern(split))
             for path in tf.io.gfile.glob(files.join(output_dir, pattern))]
    stale += tf.io.gfile.glob(_progress_path(output_dir, "*.json"))
    stale += [files.join(output_dir, name) for name in (records.DATASET_INFO_FILENAME, records.LABELS_FILENAME,
                                                          stats_lib.STATS_FILENAME)]
    for path in stale:
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)


def _check_settings(output_dir: str, settings: dict, digest: str) -> None:
    """Records the settings and input digest of a new preparation; refuses to resume one made with other settings;
    starts over cleanly (stale shards removed) if the same input changed."""
    path = _progress_path(output_dir, _SETTINGS_FILENAME)
    if tf.io.gfile.exists(path):
        previous = records.read_json(path)
        previous_digest = previous.pop("input_digest", None)
        if previous != settings:
            raise ConfigError(f"{output_dir} holds a preparation with other settings ({previous}); "
                              "use another --output_dir or delete it")
        if previous_digest == digest:
            return
        logging.warning("%s: the input changed since this preparation started (files added, removed or resized): "
                        "starting over, stale shards removed", output_dir)
    _remove_stale(output_dir)
    files.write_json(path, {**settings, "input_digest": digest})


def prepare(input_dir: str, output_dir: str, *, stored_size: int = records.IMAGENET_STORED_SIZE,
            jpeg_quality: int = DEFAULT_JPEG_QUALITY, images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
            num_threads: int | None = None, val_labels: str | None = None, names_file: str | None = None,
            seed: int = DEFAULT_SHUFFLE_SEED, manual_dir: str | None = None,
            max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> dict[str, SplitReport]:
    """Prepares `input_dir` (ILSVRC folder or `tfds:NAME`) into `output_dir`; resumable. Returns per-split reports.

    `val_labels` labels a flat ILSVRC val/ folder (see ilsvrc.read_val_labels); `names_file` gives human-readable
    class names (see ilsvrc.read_names_file; TFDS's imagenet2012 names its classes by wnid only); `seed` fixes the
    training shard order; `manual_dir` is where TFDS finds manually downloaded files (imagenet2012's tars;
    default $TFDS_DATA_DIR/downloads/manual). Nothing is written to `output_dir` before the input is known good.
    """
    source = sources.open_source(input_dir, names_file=names_file, val_labels=val_labels)
    if isinstance(source, sources.TfdsSource):
        inputs = _tfds_input(source, manual_dir)
    elif isinstance(source, sources.IlsvrcSource):
        inputs = _ilsvrc_input(source, seed)
    else:
        raise DataError(f"{input_dir}: already a prepared data set, not an ILSVRC folder or tfds:NAME")
    if not inputs.splits:
        raise DataError(f"{input_dir}: no train/ or val/ folder to prepare")
    tf.io.gfile.makedirs(files.join(output_dir, PROGRESS_DIR))
    settings = {"input_dir": os.path.abspath(input_dir) if ilsvrc.isdir(input_dir) and "://" not in input_dir
                else input_dir, "stored_size": stored_size, "jpeg_quality": jpeg_quality,
                "images_per_shard": images_per_shard, "seed": seed, "val_labels": val_labels}
    _check_settings(output_dir, settings, inputs.digest)
    records.write_labels(output_dir, inputs.labels)
    reports = {}
    for split, make_examples in inputs.splits.items():
        examples, count = make_examples()
        reports[split] = write_split(examples, count, output_dir, split, stored_size=stored_size,
                                     jpeg_quality=jpeg_quality, images_per_shard=images_per_shard,
                                     num_threads=num_threads, max_file_bytes=max_file_bytes)
        reports[split].skipped = dict(sorted({**inputs.skipped[split], **reports[split].skipped}.items()))
        if reports[split].skipped:
            logging.warning("%s: skipped %d files:\n  %s", split, len(reports[split].skipped),
                            "\n  ".join(f"{p}: {r}" for p, r in reports[split].skipped.items()))
    info = {"stored_size": stored_size, "num_classes": len(inputs.labels), "jpeg_quality": jpeg_quality,
            "splits": {split: dataclasses.asdict(report) for split, report in reports.items()}}
    records.write_dataset_info(output_dir, info)
    stats_path = files.join(output_dir, stats_lib.STATS_FILENAME)
    if records.TRAIN in reports and reports[records.TRAIN].num_examples and not tf.io.gfile.exists(stats_path):
        logging.info("Computing the training set's mean image and RGB eigenvectors (%s)", stats_path)
        stats_lib.save_stats(stats_path, dataset_stats.compute_dataset_stats(output_dir))
    return reports
