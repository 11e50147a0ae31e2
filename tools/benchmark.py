"""Throughput benchmarks; each prints one JSON line.

  python tools/benchmark.py pipeline --data_dir=DIR --threads=N [--raw_dir=PHOTOS]

Subcommands:
  pipeline  Training batches per second from `input_pipeline.make_train_dataset` (crop, flip, PCA noise, mean
            subtraction, batching) on a prepared data set, with the process pinned to --threads cores and
            tf.data given a private pool of --threads threads. With --raw_dir, a naive pipeline (decode the
            full JPEG, rescale, random crop, flip) over the photos in that folder is measured in the same run,
            alternating repeats, so machine load affects both alike. Reports medians over --repeats.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from alexnet_tf import input_pipeline  # noqa: E402

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Prepared data set (tools/prepare_imagenet.py output).")
_RAW_DIR = flags.DEFINE_string("raw_dir", None, "Optional folder of original photos (searched recursively) for "
                                                "the naive baseline, e.g. ../shared/imagenet-sample-100.")
_THREADS = flags.DEFINE_integer("threads", 1, "CPU cores to pin to and tf.data threads.", lower_bound=1,
                                upper_bound=len(os.sched_getaffinity(0)))
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Images per batch (128 in the paper, Section 5).",
                                   lower_bound=1)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", input_pipeline.IMAGENET_CROP_SIZE, "Training crop side.",
                                   lower_bound=1)
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 40, "Batches timed per repeat.", lower_bound=1)
_WARMUP_BATCHES = flags.DEFINE_integer("warmup_batches", 5, "Batches drawn before timing (autotuning, buffers).",
                                       lower_bound=0)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats; medians are reported.", lower_bound=1)

flags.register_validator("data_dir", lambda v: v is None or os.path.isdir(v), message="--data_dir: no such folder")
flags.register_validator("raw_dir", lambda v: v is None or os.path.isdir(v), message="--raw_dir: no such folder")


def naive_train_dataset(raw_dir: str, batch_size: int, image_size: int, threads: int) -> tf.data.Dataset:
    """The naive baseline: decode the whole photo, rescale its shorter side to 256, random crop, flip, batch."""
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(raw_dir) for f in files
                   if f.lower().endswith(input_pipeline.IMAGE_EXTENSIONS))
    if not paths:
        raise ValueError(f"--raw_dir={raw_dir}: no images")

    def transform(path: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        new_shape = tf.cast(tf.round(shape * input_pipeline.IMAGENET_STORED_SIZE / tf.reduce_min(shape)), tf.int32)
        image = tf.image.resize(image, tf.maximum(new_shape, input_pipeline.IMAGENET_STORED_SIZE))
        return tf.image.random_flip_left_right(tf.image.random_crop(image, [image_size, image_size, 3]))

    dataset = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths)).repeat()
    dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    return dataset.with_options(options)


def _measure(dataset: tf.data.Dataset, batch_size: int) -> float:
    """Images per second over --num_batches batches of a fresh iterator, after --warmup_batches.

    The iterator is dropped afterwards, so no idle pipeline keeps filling its buffers on the pinned cores while
    another is timed.
    """
    iterator = iter(dataset)
    for _ in range(_WARMUP_BATCHES.value):
        next(iterator)
    start = time.perf_counter()
    for _ in range(_NUM_BATCHES.value):
        next(iterator)
    elapsed = time.perf_counter() - start
    del iterator
    return _NUM_BATCHES.value * batch_size / elapsed


def run_pipeline() -> dict:
    """The `pipeline` subcommand."""
    if _DATA_DIR.value is None:
        raise app.UsageError("pipeline needs --data_dir")
    threads, batch_size = _THREADS.value, _BATCH_SIZE.value
    # Pinning makes images_per_sec_per_thread a per-core figure even when tf.data spawns helper threads.
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    datasets = {"images_per_sec": input_pipeline.make_train_dataset(
        _DATA_DIR.value, batch_size, image_size=_IMAGE_SIZE.value, threads=threads).repeat()}
    if _RAW_DIR.value:
        datasets["naive_images_per_sec"] = naive_train_dataset(_RAW_DIR.value, batch_size, _IMAGE_SIZE.value,
                                                               threads)
    runs = {name: [] for name in datasets}
    for _ in range(_REPEATS.value):
        for name, dataset in datasets.items():
            runs[name].append(round(_measure(dataset, batch_size), 1))
    result = {"subcommand": "pipeline", "data_dir": _DATA_DIR.value, "threads": threads, "batch_size": batch_size,
              "image_size": _IMAGE_SIZE.value, "num_batches": _NUM_BATCHES.value, "repeats": _REPEATS.value}
    for name, values in runs.items():
        result[name] = round(statistics.median(values), 1)
        result[name.replace("_per_sec", "_per_sec_per_thread")] = round(result[name] / threads, 1)
        result[name.replace("images_per_sec", "runs")] = values
    if _RAW_DIR.value:
        ratios = [fast / naive for fast, naive in zip(runs["images_per_sec"], runs["naive_images_per_sec"])]
        result["speedup_vs_naive"] = round(statistics.median(ratios), 2)
    return result


SUBCOMMANDS = {"pipeline": run_pipeline}


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
        raise app.UsageError(f"expected one subcommand of {sorted(SUBCOMMANDS)}, got {argv[1:]}")
    try:
        result = SUBCOMMANDS[argv[1]]()
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"benchmark: {error}")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
