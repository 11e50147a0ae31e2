"""Writes a prepared data set: TFRecord shards of images stored as the paper stored them, and labels.txt.

Section 2: each image is rescaled so its shorter side is `stored_size` (256 for ImageNet) and its central
`stored_size` square is kept, here re-encoded as JPEG so training can decode and crop it in one fused step.

Any input Pillow reads comes through as 3-channel RGB: grayscale and CMYK JPEGs, PNGs named .JPEG, images
smaller than `stored_size` (upscaled, as the paper's rescaling implies). EXIF orientation is ignored, as TF's
decoders ignore it. A file that cannot be decoded is logged with its path, skipped and listed at the end.

Layout of `output_dir` (see pipeline.py for the reader):
  <split>-NNNNN-of-NNNNN.tfrecord  tf.train.Examples: image/encoded (JPEG), image/class/label (int64, 0-based),
                                   image/filename; training examples in a fixed pseudo-random order, so every
                                   shard mixes classes; validation examples in sorted path order.
  labels.txt                       index<TAB>wnid<TAB>name, one line per class.
  dataset_info.json                stored_size, num_classes, per split num_examples/num_shards/skipped; written
                                   last: its presence means the preparation is complete.
  _progress/                       the settings and one summary per finished shard, for resuming.

Shards are written under a temporary name and renamed when complete; a rerun skips every shard whose summary
exists, so an interrupted preparation resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import itertools
import json
import os
import random
import threading
from collections.abc import Iterator

import tensorflow as tf
import tqdm
from absl import logging
from PIL import Image

from alexnet_tf.data import pipeline

DEFAULT_JPEG_QUALITY = 95
DEFAULT_IMAGES_PER_SHARD = 1024
DEFAULT_SHUFFLE_SEED = 0
PROGRESS_DIR = "_progress"
_SETTINGS_FILENAME = "settings.json"
# Pillow raises these for unreadable, truncated or absurd files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclasses.dataclass(frozen=True)
class Example:
    """One input image: `data` holds its bytes, or is None to read them from `path`."""

    path: str
    label: int
    data: bytes | None = None


@dataclasses.dataclass
class SplitReport:
    num_examples: int = 0
    num_shards: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)


def encode_stored_image(data: bytes, stored_size: int, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Decodes any image Pillow reads and returns the JPEG of its stored form: RGB, stored_size square.

    Raises one of Pillow's decode errors (OSError, ValueError, ...) for an undecodable file.
    """
    with Image.open(io.BytesIO(data)) as image:
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


def _tf_example(jpeg: bytes, label: int, path: str) -> bytes:
    feature = {
        pipeline.ENCODED_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        pipeline.LABEL_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        pipeline.FILENAME_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_json(path: str, value: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


def _write_shard(examples: list[Example], output_dir: str, name: str, stored_size: int, jpeg_quality: int,
                 progress: tqdm.tqdm) -> dict:
    """Writes one shard atomically, then its summary {'num_examples', 'skipped'} (the resume marker)."""
    skipped = []
    tmp_path = os.path.join(output_dir, name + ".tmp")
    with tf.io.TFRecordWriter(tmp_path) as writer:
        for example in examples:
            try:
                data = example.data
                if data is None:
                    with open(example.path, "rb") as f:
                        data = f.read()
                writer.write(_tf_example(encode_stored_image(data, stored_size, jpeg_quality), example.label,
                                         example.path))
            except _DECODE_ERRORS as error:
                logging.warning("Skipping %s: cannot decode it (%s)", example.path, error)
                skipped.append(example.path)
            progress.update()
    os.replace(tmp_path, os.path.join(output_dir, name))
    summary = {"num_examples": len(examples) - len(skipped), "skipped": skipped}
    _write_json(os.path.join(output_dir, PROGRESS_DIR, name + ".json"), summary)
    return summary


def write_split(examples: Iterator[Example], num_examples: int, output_dir: str, split: str, *,
                stored_size: int, jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                images_per_shard: int = DEFAULT_IMAGES_PER_SHARD, num_threads: int | None = None) -> SplitReport:
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
        report.skipped.extend(summary["skipped"])

    pending = set()

    def collect(futures: set) -> None:  # Raises a shard's error, stopping the preparation.
        for future in futures:
            finish(future.result())
        pending.difference_update(futures)

    executor = concurrent.futures.ThreadPoolExecutor(num_threads)
    try:
        for index in range(num_shards):
            shard = list(itertools.islice(examples, images_per_shard))
            name = pipeline.shard_filename(split, index, num_shards)
            summary_path = os.path.join(output_dir, PROGRESS_DIR, name + ".json")
            if os.path.isfile(summary_path):
                with open(summary_path) as f:
                    finish(json.load(f))
                progress.update(len(shard))
                continue
            in_flight.acquire()
            collect({future for future in pending if future.done()})
            future = executor.submit(_write_shard, shard, output_dir, name, stored_size, jpeg_quality, progress)
            future.add_done_callback(lambda _: in_flight.release())
            pending.add(future)
        collect(set(concurrent.futures.wait(pending).done))
    finally:
        # On an error or an interrupt, shards being written are finished (each is atomic), queued ones dropped.
        executor.shutdown(wait=True, cancel_futures=True)
        progress.close()
    report.skipped.sort()
    return report


def _ilsvrc_examples(input_dir: str, split: str, val_labels: str | None, seed: int) -> tuple[list[Example], int]:
    paths, labels = pipeline.list_ilsvrc(input_dir, split, val_labels=val_labels)
    examples = [Example(path, label) for path, label in zip(paths, labels)]
    if split == pipeline.TRAIN:  # Mixes classes within every shard; fixed seed, so resuming is exact.
        random.Random(seed).shuffle(examples)
    return examples, len(examples)


def _tfds_examples(input_dir: str, split: str) -> tuple[Iterator[Example], int]:
    dataset = pipeline.tfds_encoded(input_dir, split)
    count = int(dataset.cardinality())
    if count < 0:
        count = sum(1 for _ in dataset)
    name = input_dir[len(pipeline.TFDS_PREFIX):]
    examples = (Example(f"{name}/{split}/{i}", int(label), bytes(data))
                for i, (data, label) in enumerate(dataset.as_numpy_iterator()))
    return examples, count


def _available_splits(input_dir: str) -> list[str]:
    if input_dir.startswith(pipeline.TFDS_PREFIX):
        import tensorflow_datasets as tfds  # Slow to import; only this source needs it.
        names = set(tfds.builder(input_dir[len(pipeline.TFDS_PREFIX):]).info.splits.keys())
        # A mocked or not yet generated builder lists no splits: try both and let TFDS report the error.
        return [s for s in (pipeline.TRAIN, pipeline.VALIDATION) if not names or s in names]
    return [split for split, folder in pipeline.ILSVRC_SPLIT_DIRS.items()
            if os.path.isdir(os.path.join(input_dir, folder))]


def _check_settings(output_dir: str, settings: dict) -> None:
    """Records the settings of a new preparation; refuses to resume one made with other settings."""
    path = os.path.join(output_dir, PROGRESS_DIR, _SETTINGS_FILENAME)
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        if previous != settings:
            raise ValueError(f"{output_dir} holds a preparation with other settings ({previous}); "
                             "use another --output_dir or delete it")
    else:
        _write_json(path, settings)


def prepare(input_dir: str, output_dir: str, *, stored_size: int = pipeline.IMAGENET_STORED_SIZE,
            jpeg_quality: int = DEFAULT_JPEG_QUALITY, images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
            num_threads: int | None = None, val_labels: str | None = None, names_file: str | None = None,
            seed: int = DEFAULT_SHUFFLE_SEED) -> dict[str, SplitReport]:
    """Prepares `input_dir` (ILSVRC folder or `tfds:NAME`) into `output_dir`; resumable. Returns per-split reports.

    `val_labels` labels a flat ILSVRC val/ folder (see pipeline.read_val_labels); `names_file` gives
    human-readable class names (see pipeline.read_names_file); `seed` fixes the training shard order.
    """
    splits = _available_splits(input_dir)
    if not splits:
        raise FileNotFoundError(f"{input_dir}: no train/ or val/ folder to prepare")
    os.makedirs(os.path.join(output_dir, PROGRESS_DIR), exist_ok=True)
    settings = {"input_dir": os.path.abspath(input_dir) if os.path.isdir(input_dir) else input_dir,
                "stored_size": stored_size, "jpeg_quality": jpeg_quality, "images_per_shard": images_per_shard,
                "seed": seed, "val_labels": val_labels}
    _check_settings(output_dir, settings)
    labels = pipeline.read_labels(input_dir, names_file=names_file)
    with open(os.path.join(output_dir, pipeline.LABELS_FILENAME), "w") as f:
        f.writelines(f"{i}\t{wnid}\t{name}\n" for i, (wnid, name) in enumerate(labels))
    reports = {}
    for split in splits:
        if input_dir.startswith(pipeline.TFDS_PREFIX):
            examples, count = _tfds_examples(input_dir, split)
        else:
            examples, count = _ilsvrc_examples(input_dir, split, val_labels, seed)
        reports[split] = write_split(iter(examples), count, output_dir, split, stored_size=stored_size,
                                     jpeg_quality=jpeg_quality, images_per_shard=images_per_shard,
                                     num_threads=num_threads)
        if reports[split].skipped:
            logging.warning("%s: skipped %d undecodable files:\n  %s", split, len(reports[split].skipped),
                            "\n  ".join(reports[split].skipped))
    info = {"stored_size": stored_size, "num_classes": len(labels), "jpeg_quality": jpeg_quality,
            "splits": {split: dataclasses.asdict(report) for split, report in reports.items()}}
    _write_json(os.path.join(output_dir, pipeline.DATASET_INFO_FILENAME), info)
    return reports
