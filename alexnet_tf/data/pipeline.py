"""The paper's tf.data input pipelines (Sections 2 and 4.1), on any `sources.Source`.

Images leave the pipeline as float32 on the 0-255 scale with the mean subtracted, RGB (or BGR on request, for
Caffe-trained weights); labels are int32 class indices in sorted-wnid order (n01440764 -> 0 for ImageNet).
What to read and how to normalize it is a `DataConfig`; sizes are arguments of the functions. Each function takes
the data set already opened (`source=config.source()`, once per run), or opens it itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from alexnet_tf.data import augment, records, sources, stats as stats_lib
from alexnet_tf.data.records import IMAGENET_STORED_SIZE, TRAIN, VALIDATION  # noqa: F401 (re-exported)
from alexnet_tf.errors import ConfigError, DataError

IMAGENET_CROP_SIZE = 224  # Section 4.1: random 224x224 patches.
DEFAULT_SHUFFLE_BUFFER = 8192
MEAN_MODES = ("image", "channel", "none")
CHANNEL_ORDERS = ("RGB", "BGR")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the pipeline reads and how it normalizes it.

    data_dir: a prepared folder, `tfds:NAME` or an ILSVRC folder (see sources.py); None only for
      `make_eval_transform` of serving requests.
    mean: what is subtracted, on the 0-255 scale: 'image' (the training set's mean image, Section 2), 'channel'
      (its per-channel mean, or `mean_rgb`) or 'none'.
    mean_rgb: (R, G, B) per-channel mean on 0-255 to subtract, with mean='channel' (e.g. ImageNet's published
      123.68, 116.779, 103.939).
    stats_path: the statistics file (stats.py: mean image and RGB eigen-decomposition) to use instead of
      DATA_DIR/stats.npz; or 'imagenet' (stats.PUBLISHED) for ImageNet's published values: per-channel means as a
      constant mean image, fb.resnet.torch's eigenvectors. There is no silent fallback: a data set without stats
      (an ILSVRC folder, tfds:, a preparation older than the stats step) and mean='image', mean='channel' without
      mean_rgb, or pca_noise stops with a DataError naming tools/compute_stats.py, unless stats_path is given.
    channel_order: 'RGB', or 'BGR' for Caffe-trained weights.
    pca_noise: the PCA colour noise of Section 4.1 in training.
    shuffle_buffer: training examples shuffled across shards, examples.
    stored_size: side (px) of the stored square images for sources that are rescaled on the fly (ILSVRC folder,
      tfds:, serving), default 256; a prepared data set records its own, and a different value is refused.
    names_file, val_labels: for ILSVRC folders and tfds: sources (see sources.open_source).
    """

    data_dir: str | None
    mean: str = "image"
    mean_rgb: tuple[float, float, float] | None = None
    stats_path: str | None = None
    channel_order: str = "RGB"
    pca_noise: bool = True
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
    stored_size: int | None = None
    names_file: str | None = None
    val_labels: str | None = None

    def __post_init__(self):
        if self.mean not in MEAN_MODES:
            raise ConfigError(f"mean={self.mean!r} must be one of {MEAN_MODES}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"channel_order={self.channel_order!r} must be one of {CHANNEL_ORDERS}")
        if self.mean_rgb is not None:
            if self.mean != "channel" or len(self.mean_rgb) != 3:
                raise ConfigError(f"mean_rgb={self.mean_rgb} needs mean='channel' and three values (R, G, B)")
            object.__setattr__(self, "mean_rgb", tuple(float(v) for v in self.mean_rgb))
        if self.shuffle_buffer < 1:
            raise ConfigError(f"shuffle_buffer={self.shuffle_buffer} must be positive")
        if self.stored_size is not None and self.stored_size < 1:
            raise ConfigError(f"stored_size={self.stored_size} must be positive")

    def source(self) -> sources.Source:
        """Opens the data set (`sources.open_source`). Open it once per run and pass it down: opening an ILSVRC
        folder lists it."""
        if self.data_dir is None:
            raise ConfigError(f"--data_dir is required (prepare a data set with: "
                              f"{records.prepare_command('DATA_DIR')})")
        return sources.open_source(self.data_dir, names_file=self.names_file, val_labels=self.val_labels)


def _stored_size(config: DataConfig, source: sources.Source | None, image_size: int) -> int:
    stored_size = config.stored_size
    if source is not None and source.stored_size is not None:
        if stored_size not in (None, source.stored_size):
            raise ConfigError(f"{source.data_dir} stores {source.stored_size} px images, not "
                              f"stored_size={stored_size}")
        stored_size = source.stored_size
    stored_size = stored_size or IMAGENET_STORED_SIZE
    if not 0 < image_size <= stored_size:
        raise ConfigError(f"image_size={image_size} must be in [1, stored size {stored_size}]")
    return stored_size


def _stats(config: DataConfig, source: sources.Source | None, stored_size: int, pca_noise: bool) -> stats_lib.Stats:
    needed = pca_noise or config.mean == "image" or (config.mean == "channel" and config.mean_rgb is None)
    if not needed:  # Not even a stale stats file in data_dir should matter then.
        return stats_lib.default_stats(stored_size)
    return stats_lib.resolve_stats(config.data_dir, config.stats_path,
                                   None if source is None else source.stats_path(), stored_size)


def _mean_image(config: DataConfig, stats: stats_lib.Stats) -> tf.Tensor:
    """float32 [S, S, 3] to subtract: the mean image, or the constant image of the per-channel mean (`mean_rgb`,
    else the statistics'), or zeros."""
    if config.mean == "image":
        return tf.constant(stats.mean_image)
    if config.mean == "channel":
        value = stats.mean_rgb if config.mean_rgb is None else config.mean_rgb
    else:
        value = [0.0, 0.0, 0.0]
    return tf.constant(np.broadcast_to(np.asarray(value, np.float32), stats.mean_image.shape))


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be positive")


def _with_options(dataset: tf.data.Dataset, deterministic: bool, threads: int | None) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = deterministic
    if threads:
        options.threading.private_threadpool_size = threads
    return dataset.with_options(options)


def make_train_dataset(config: DataConfig, batch_size: int, image_size: int = IMAGENET_CROP_SIZE, *,
                       seed: int | None = None, deterministic: bool = False, threads: int | None = None,
                       source: sources.Source | None = None) -> tf.data.Dataset:
    """One shuffled, augmented pass over the training split (Section 4.1), in complete batches.

    Yields (images float32 [batch_size, image_size, image_size, 3], labels int32 [batch_size]); the last partial
    batch is dropped. Per image: a random image_size crop of the stored image, minus the same window of the mean
    (see DataConfig), plus PCA colour noise (`config.pca_noise`), mirrored with p=0.5, in `config.channel_order`.
    Each iteration reshuffles and redraws the augmentation. With `seed` the stream of iterations is repeatable,
    batch for batch if also `deterministic` (else tf.data may reorder elements for speed). `threads` gives the
    pipeline a private thread pool of that size.
    """
    _check_batch_size(batch_size)
    source = source or config.source()
    stored_size = _stored_size(config, source, image_size)
    count = source.num_examples(TRAIN)
    if source.prepared and count < batch_size:
        raise DataError(f"{config.data_dir}: {count} training examples make no complete batch of {batch_size}")
    stats = _stats(config, source, stored_size, config.pca_noise)
    decode_window = source.window_decoder(stored_size)
    mean_image = _mean_image(config, stats)
    eigval, eigvec = tf.constant(stats.eigval), tf.constant(stats.eigvec)
    pca_noise, bgr = config.pca_noise, config.channel_order == "BGR"

    def decode(record: tuple[tf.Tensor, tf.Tensor], draws: tf.Tensor) -> tuple[tf.Tensor, ...]:
        encoded, label = record
        offset, mirror = augment.random_crop_and_mirror(draws[0], stored_size, image_size)
        return decode_window(encoded, offset, image_size), offset, mirror, draws, tf.cast(label, tf.int32)

    def finish(crops, offsets, mirror, draws, labels) -> tuple[tf.Tensor, tf.Tensor]:
        count = tf.shape(crops)[0]
        # One noise seed per batch: the first example's pair of draws.
        rgb_shifts = augment.pca_color_shifts(eigval, eigvec, draws[0], count) if pca_noise else tf.zeros([count, 3])
        return augment.finish_crops(crops, mean_image, offsets, rgb_shifts, mirror, bgr), labels

    records = source.encoded(TRAIN, training=True, seed=seed, deterministic=deterministic)
    if not source.shuffles_whole:
        records = records.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # Two random integers per example, drawn afresh each iteration: the augmentation of an example is then
    # independent of the order in which parallel map calls run.
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    dataset = tf.data.Dataset.zip(records, draws).map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                                                      deterministic=deterministic)
    if not source.prepared:
        dataset = dataset.ignore_errors(log_warning=True)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    if source.prepared:
        # A known length lets Keras size its epochs and progress bar instead of running out of data.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(count // batch_size))
    dataset = dataset.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return _with_options(dataset, deterministic, threads)


def make_eval_transform(config: DataConfig, image_size: int = IMAGENET_CROP_SIZE, *, ten_crop: bool = False,
                        any_image: bool = False, source: sources.Source | None = None
                        ) -> Callable[[tf.Tensor], tf.Tensor]:
    """fn(encoded image, tf.string scalar) -> its test-time input as `make_eval_dataset` yields it (Section 4.1).

    The input is float32 [image_size, image_size, 3], or [10, image_size, image_size, 3] with `ten_crop`. Stored
    size and statistics are those of `config.data_dir`; with data_dir None, `config.stored_size` (default 256)
    and `config.stats_path` (or mean='none' / `mean_rgb`). `any_image`: the bytes are an image of any size and
    format (a serving request), decoded by `augment.decode_bounded` and rescaled to the stored size as an ILSVRC
    folder's are (`augment.resize_shorter_and_centre_crop`), not a prepared data set's stored JPEG. Memory per
    image is then bounded whatever the bytes claim: the header's size is checked before decoding (at most
    `augment.MAX_PIXELS`, 3 bytes each decoded), and only the central square is resampled. An image that is
    empty, undecodable, of another format or over the bound raises tf.errors.InvalidArgumentError when it runs.
    The transform holds no XLA-compiled function (`augment.finish_crops_ops`), so a SavedModel of it runs on
    TensorFlow Serving builds without XLA.
    """
    if source is None and config.data_dir is not None:
        source = config.source()
    return _eval_transform(config, source, image_size, ten_crop, any_image)


def _eval_transform(config: DataConfig, source: sources.Source | None, image_size: int, ten_crop: bool,
                    any_image: bool) -> Callable[[tf.Tensor], tf.Tensor]:
    stored_size = _stored_size(config, source, image_size)
    stats = _stats(config, source, stored_size, pca_noise=False)
    if any_image or source is None:
        decode_window = sources.decode_any_window(stored_size)
    else:
        decode_window = source.window_decoder(stored_size)
    mean_image = _mean_image(config, stats)
    bgr = config.channel_order == "BGR"
    margin = (stored_size - image_size) // 2  # The centre offset of augment.central_crop.
    window_offset, window_size = ((0, 0), stored_size) if ten_crop else ((margin, margin), image_size)

    def transform(encoded: tf.Tensor) -> tf.Tensor:
        offset = tf.constant(window_offset, tf.int32)
        window = decode_window(encoded, offset, window_size)
        # The XLA-free twin of training's batch pass: same arithmetic, nothing XLA-only in an exported graph.
        image = augment.finish_crops_ops(window[tf.newaxis], mean_image, offset[tf.newaxis], tf.zeros([1, 3]),
                                         tf.zeros([1], tf.bool), bgr)[0]
        return augment.ten_crops(image, image_size) if ten_crop else image
    return transform


def make_eval_dataset(config: DataConfig, batch_size: int, image_size: int = IMAGENET_CROP_SIZE, *,
                      ten_crop: bool = False, split: str = VALIDATION, threads: int | None = None,
                      val_labels: str | None = None, source: sources.Source | None = None) -> tf.data.Dataset:
    """Every example of `split`, in order, last partial batch kept (Section 4.1, test time).

    Yields (images float32 [B, image_size, image_size, 3], labels int32 [B]): the centre crop of the stored
    image; with `ten_crop`, images are [B, 10, image_size, image_size, 3] in `augment.ten_crops` order. Mean,
    statistics and channel order as in `make_train_dataset` (never PCA noise); `val_labels` (overriding
    `config.val_labels`) labels a flat ILSVRC val/ folder.
    """
    _check_batch_size(batch_size)
    if val_labels is not None:
        config = dataclasses.replace(config, val_labels=val_labels)
        source = None  # Labelled otherwise than the source opened.
    source = source or config.source()
    transform = _eval_transform(config, source, image_size, ten_crop, any_image=False)
    records = source.encoded(split, training=False)
    dataset = records.map(lambda encoded, label: (transform(encoded), tf.cast(label, tf.int32)),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if not source.prepared:
        dataset = dataset.ignore_errors(log_warning=True)
    dataset = dataset.batch(batch_size)
    if source.prepared:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-source.num_examples(split) // batch_size)))
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return _with_options(dataset, True, threads)
