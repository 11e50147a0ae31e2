"""The statistics (stats.py) of a data set's training split, computed from its stored images (Sections 2, 4.1).

Reads each stored image once, whole, through the evaluation pipeline with nothing subtracted, so the statistics
are those of the pixels the training pipeline crops: for a prepared data set, its stored JPEGs as decoded.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from alexnet_tf.data import pipeline, stats as stats_lib

DEFAULT_BATCH_SIZE = 64


def stored_image_batches(data_dir: str, *, batch_size: int = DEFAULT_BATCH_SIZE, max_images: int = 0,
                         stored_size: int | None = None, names_file: str | None = None) -> Iterator[np.ndarray]:
    """Batches of whole stored training images, float32 [B, S, S, 3], 0-255, RGB, nothing subtracted.

    `max_images` > 0 takes the first ones only (a random sample of a prepared set, whose training shards are in
    shuffled order; an ILSVRC folder lists its images class by class). `stored_size` is for unprepared sources.
    """
    config = pipeline.DataConfig(data_dir, mean="none", pca_noise=False, stored_size=stored_size,
                                 names_file=names_file)
    source = config.source()
    size = source.stored_size or stored_size or pipeline.IMAGENET_STORED_SIZE
    # The centre crop of the stored size is the whole stored image.
    images = pipeline.make_eval_dataset(config, batch_size, size, split=pipeline.TRAIN, source=source)
    images = images.map(lambda x, _: x)
    if max_images:
        images = images.unbatch().take(max_images).batch(batch_size)
    return images.as_numpy_iterator()


def compute_dataset_stats(data_dir: str, **kwargs) -> stats_lib.Stats:
    """The mean image and RGB eigen-decomposition of `data_dir`'s training images (see stored_image_batches)."""
    return stats_lib.compute_stats(stored_image_batches(data_dir, **kwargs))
