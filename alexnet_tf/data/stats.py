"""Training-set statistics: the mean image and the RGB eigen-decomposition.

Units and conventions:
  * `mean_image` is float32 [S, S, 3], RGB, on the 0-255 pixel scale, where S is the stored image size of the
    prepared data set (256 for ImageNet, Section 2 of the paper). Its spatial mean is the per-channel mean.
  * `eigval`/`eigvec` decompose the 3x3 covariance of RGB pixel values scaled to [0, 1] (the convention of
    the widely used values below): `eigval` float32 [3], descending; `eigvec` float32 [3, 3] with one unit
    eigenvector per column. PCA colour noise (Section 4.1) on 0-255 pixels adds
    `255 * eigvec @ (alpha * eigval)` with alpha ~ N(0, 0.1) per image.

A stats file is an .npz with exactly those three arrays. tools/prepare_imagenet.py writes the training set's as
its last step to the prepared directory's `stats.npz`, where the input pipeline finds it; `python
tools/compute_stats.py` computes it for other sources. The published ImageNet values below are used only when
asked for by name (`PUBLISHED`).

The PCA noise follows fb.resnet.torch's convention: eigenvalues of the covariance of [0, 1] pixels, times 255.
On ImageNet the first component's shift then has a standard deviation of 255 * 0.1 * 0.2175 = 5.5 grey levels,
about 2.2 times weaker than the noise of cuda-convnet2 (see docs/data.md).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable

import numpy as np
import tensorflow as tf

from alexnet_tf import files
from alexnet_tf.errors import ConfigError, DataError

STATS_FILENAME = "stats.npz"
# The name (as a stats_path) of the published ImageNet values below: asked for by name, never a silent default.
PUBLISHED = "imagenet"

# Per-channel ImageNet training-set means on the 0-255 scale (R, G, B): the VGG / Caffe values
# (103.939, 116.779, 123.68 in Caffe's BGR order), used by Keras applications and most reproductions.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)

# Eigen-decomposition of the ImageNet RGB covariance on the [0, 1] scale, as published with
# fb.resnet.torch (datasets/imagenet.lua, `pca`) and reused by MXNet/Gluon, timm and others.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


@dataclasses.dataclass(frozen=True)
class Stats:
    """Training-set statistics; see the module docstring for units."""

    mean_image: np.ndarray  # float32 [S, S, 3], 0-255, RGB.
    eigval: np.ndarray  # float32 [3], covariance eigenvalues on the [0, 1] scale, descending.
    eigvec: np.ndarray  # float32 [3, 3], unit eigenvectors as columns.

    @property
    def stored_size(self) -> int:
        return int(self.mean_image.shape[0])

    @property
    def mean_rgb(self) -> np.ndarray:
        """Per-channel mean, float32 [3], 0-255."""
        return self.mean_image.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)


def default_stats(stored_size: int) -> Stats:
    """The published ImageNet values; the mean image is the constant image of the per-channel means."""
    mean_image = np.broadcast_to(np.asarray(IMAGENET_MEAN_RGB, np.float32), (stored_size, stored_size, 3))
    return Stats(
        mean_image=np.ascontiguousarray(mean_image),
        eigval=np.asarray(IMAGENET_EIGVAL, np.float32),
        eigvec=np.asarray(IMAGENET_EIGVEC, np.float32),
    )


def save_stats(path: str, stats: Stats) -> None:
    """Writes `stats` to an .npz file atomically (temporary name, then rename), on any tf.io.gfile file system."""
    buffer = io.BytesIO()
    np.savez(buffer, mean_image=stats.mean_image, eigval=stats.eigval, eigvec=stats.eigvec)
    files.write_bytes(path, buffer.getvalue())


def load_stats(path: str) -> Stats:
    """Reads a stats file written by `save_stats`, checking shapes; DataError if it is missing or malformed."""
    if not tf.io.gfile.exists(path):
        raise DataError(f"{path}: no such stats file")
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        with np.load(io.BytesIO(data)) as arrays:
            stats = Stats(
                mean_image=arrays["mean_image"].astype(np.float32),
                eigval=arrays["eigval"].astype(np.float32),
                eigvec=arrays["eigvec"].astype(np.float32),
            )
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{path}: not a stats file ({error})") from None
    size = stats.mean_image.shape[0]
    if stats.mean_image.shape != (size, size, 3) or stats.eigval.shape != (3,) or stats.eigvec.shape != (3, 3):
        raise DataError(f"{path}: malformed stats file (mean_image {stats.mean_image.shape}, "
                        f"eigval {stats.eigval.shape}, eigvec {stats.eigvec.shape})")
    return stats


def compute_command(data_dir: str) -> str:
    """The command that writes `data_dir`'s statistics (a tfds: source is no folder: the file goes elsewhere)."""
    if "://" not in data_dir and data_dir.startswith("tfds:"):
        return f"python tools/compute_stats.py --data_dir={data_dir} --output=PATH, then pass stats_path=PATH"
    return f"python tools/compute_stats.py --data_dir={data_dir}"


def resolve_stats(data_dir: str | None, stats_path: str | None, found: str | None, stored_size: int) -> Stats:
    """The statistics a pipeline should use; never a silent fallback from the paper's recipe.

    `stats_path` if given (`PUBLISHED` = 'imagenet': ImageNet's published values, see `default_stats`); else
    `found`, the stats file the data set carries (DATA_DIR/stats.npz); else DataError naming the command that
    computes it (ConfigError if there is no data set either). The mean image must match `stored_size`.
    """
    if stats_path == PUBLISHED:
        return default_stats(stored_size)
    path = stats_path or found
    if path is None:
        if data_dir is None:
            raise ConfigError(f"no data set and no stats_path: give a stats file, or stats_path='{PUBLISHED}' "
                              "for ImageNet's published per-channel values")
        raise DataError(f"{data_dir}: no {STATS_FILENAME} (the training set's mean image and RGB eigenvectors, "
                        f"Sections 2 and 4.1): compute it with {compute_command(data_dir)}; or ask for ImageNet's "
                        f"published per-channel values with stats_path='{PUBLISHED}' (--stats_path={PUBLISHED})")
    stats = load_stats(path)
    if stats.stored_size != stored_size:
        raise DataError(f"{path}: mean image is {stats.stored_size} px but the images are stored at "
                        f"{stored_size} px; recompute it with tools/compute_stats.py")
    return stats


def compute_stats(batches: Iterable[np.ndarray]) -> Stats:
    """Computes the statistics from batches of RGB images [B, S, S, 3] on the 0-255 scale (one size S).

    Sums are accumulated in float64 so a full ImageNet pass (1.28M images) loses no precision.
    """
    image_sum = None
    pixel_sum = np.zeros(3, np.float64)
    outer_sum = np.zeros((3, 3), np.float64)
    num_images = 0
    for batch in batches:
        batch = np.asarray(batch, np.float64)
        if image_sum is None:
            image_sum = np.zeros(batch.shape[1:], np.float64)
        image_sum += batch.sum(axis=0)
        pixels = batch.reshape(-1, 3) / 255.0
        pixel_sum += pixels.sum(axis=0)
        outer_sum += pixels.T @ pixels
        num_images += batch.shape[0]
    if not num_images:
        raise DataError("compute_stats: no images")
    num_pixels = num_images * image_sum.shape[0] * image_sum.shape[1]
    pixel_mean = pixel_sum / num_pixels
    covariance = outer_sum / num_pixels - np.outer(pixel_mean, pixel_mean)
    eigval, eigvec = np.linalg.eigh(covariance)  # Ascending order.
    order = np.argsort(eigval)[::-1]
    return Stats(
        mean_image=(image_sum / num_images).astype(np.float32),
        eigval=eigval[order].astype(np.float32),
        eigvec=eigvec[:, order].astype(np.float32),
    )
