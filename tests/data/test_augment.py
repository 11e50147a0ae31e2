"""Tests for alexnet_tf/data/augment.py: crop geometry, mirroring, PCA colour noise, rescaling."""

import sys

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf.data import augment, stats


def _numbered_image(height: int, width: int) -> np.ndarray:
    """float32 [height, width, 3] whose every value is distinct, so any crop identifies its position."""
    return np.arange(height * width * 3, dtype=np.float32).reshape(height, width, 3)


def _seed(i: int) -> tf.Tensor:
    return tf.constant([i, 7], tf.int64)


def test_ten_crops_geometry_and_order():
    image = _numbered_image(9, 12)
    crops = augment.ten_crops(tf.constant(image), 5).numpy()
    expected = [image[:5, :5], image[:5, 7:], image[4:, :5], image[4:, 7:], image[2:7, 3:8]]
    assert crops.shape == (10, 5, 5, 3)
    for i, patch in enumerate(expected):
        np.testing.assert_array_equal(crops[i], patch)
        np.testing.assert_array_equal(crops[i + 5], patch[:, ::-1])
    batch = augment.ten_crops(tf.constant(np.stack([image, -image])), 5).numpy()  # Batches work alike.
    assert batch.shape == (2, 10, 5, 5, 3)
    np.testing.assert_array_equal(batch[0], crops)
    np.testing.assert_array_equal(batch[1], -crops)


def test_central_crop_puts_the_odd_pixel_bottom_right():
    image = _numbered_image(7, 8)
    np.testing.assert_array_equal(augment.central_crop(tf.constant(image), 4).numpy(), image[1:5, 2:6])
    np.testing.assert_array_equal(augment.ten_crops(tf.constant(image), 4)[4].numpy(), image[1:5, 2:6])


def test_random_crop_and_mirror_covers_every_position_inside_the_image_and_both_mirrors():
    # With 4 x 4 positions (crop 7 of 10), 32 consecutive draws give each (y, x, mirror) exactly once.
    results = [augment.random_crop_and_mirror(tf.constant(d, tf.int64), 10, 7) for d in range(1000, 1032)]
    combos = {(int(offset[0]), int(offset[1]), bool(mirror)) for offset, mirror in results}
    assert combos == {(y, x, m) for y in range(4) for x in range(4) for m in (False, True)}
    draws = np.random.default_rng(0).integers(0, 2**32, 2000)
    mirrors = [bool(augment.random_crop_and_mirror(tf.constant(d, tf.int64), 256, 224)[1]) for d in draws[:400]]
    assert 160 < sum(mirrors) < 240
    offsets = np.array([augment.random_crop_and_mirror(tf.constant(d, tf.int64), 256, 224)[0] for d in draws[:400]])
    assert offsets.min() >= 0 and offsets.max() <= 32  # The 224 crop never leaves the 256 image.


def test_finish_crops_subtracts_the_mean_window_shifts_and_mirrors():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (2, 10, 10, 3)).astype(np.uint8)
    mean_image = rng.uniform(0, 255, (10, 10, 3)).astype(np.float32)
    offsets = np.array([(2, 3), (4, 0)], np.int32)
    shifts = np.array([[1.5, -2.0, 3.25], [0.0, 10.0, -5.0]], np.float32)
    crops = np.stack([stored[b, y:y + 6, x:x + 6] for b, (y, x) in enumerate(offsets)])
    expected = np.stack([crops[b] - mean_image[y:y + 6, x:x + 6] + shifts[b] for b, (y, x) in enumerate(offsets)])
    args = (tf.constant(crops), tf.constant(mean_image), tf.constant(offsets), tf.constant(shifts))
    np.testing.assert_allclose(augment.finish_crops(*args, tf.constant([False, False])), expected, rtol=1e-6)
    # The mirror flips the mean-subtracted crop: the mean is taken where each pixel was in the stored image.
    mirrored = augment.finish_crops(*args, tf.constant([True, False])).numpy()
    np.testing.assert_allclose(mirrored[0], expected[0, :, ::-1], rtol=1e-6)
    np.testing.assert_allclose(mirrored[1], expected[1], rtol=1e-6)
    bgr = augment.finish_crops(*args, tf.constant([True, False]), bgr=True).numpy()
    np.testing.assert_array_equal(bgr, mirrored[..., ::-1])


def test_pca_color_shifts_follow_the_paper_formula_and_statistics():
    eigval = tf.constant(stats.IMAGENET_EIGVAL, tf.float32)
    eigvec = tf.constant(stats.IMAGENET_EIGVEC, tf.float32)
    shifts = augment.pca_color_shifts(eigval, eigvec, _seed(1), 4000).numpy()
    alpha = tf.random.stateless_normal([4000, 3], _seed(1), stddev=augment.PCA_NOISE_STDDEV).numpy()
    expected = 255.0 * (alpha * np.asarray(stats.IMAGENET_EIGVAL)) @ np.asarray(stats.IMAGENET_EIGVEC).T
    np.testing.assert_allclose(shifts, expected, rtol=1e-4, atol=1e-4)
    # Projected on the eigenvectors, the shifts have standard deviations 255 * 0.1 * eigval (to sampling error).
    projected = shifts @ np.asarray(stats.IMAGENET_EIGVEC)
    np.testing.assert_allclose(projected.std(axis=0), 25.5 * np.asarray(stats.IMAGENET_EIGVAL), rtol=0.06)
    np.testing.assert_allclose(projected.mean(axis=0), 0.0, atol=0.2)


@pytest.mark.parametrize("shape", [(12, 20), (40, 30), (64, 64)])
def test_resize_shorter_and_centre_crop(shape):
    height, width = shape
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = (250, 0, 0)  # Left half red, right half blue: the result must keep that.
    image[:, width // 2:] = (0, 0, 250)
    result = augment.resize_shorter_and_centre_crop(tf.constant(image), 16).numpy()
    assert result.shape == (16, 16, 3) and result.dtype == np.uint8
    np.testing.assert_array_equal(result[:, :6], np.broadcast_to([250, 0, 0], (16, 6, 3)))
    np.testing.assert_array_equal(result[:, -6:], np.broadcast_to([0, 0, 250], (16, 6, 3)))


@pytest.mark.parametrize("offset", [(7, 5), (8, 16), (0, 0)])
def test_decode_and_crop_matches_decoding_then_cropping(offset):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    jpeg = tf.io.encode_jpeg(tf.constant(image), quality=95)  # 4:2:0 chroma, as Pillow's default.
    fused = augment.decode_and_crop(jpeg, tf.constant(offset), 16).numpy()
    full = tf.io.decode_jpeg(jpeg, channels=3).numpy()[offset[0]:offset[0] + 16, offset[1]:offset[1] + 16]
    # Identical but for the first or last column of a window whose edge falls on an MCU boundary, where the
    # chroma upsampling of the cropped decoder lacks its neighbouring column.
    np.testing.assert_array_equal(fused[:, 1:-1], full[:, 1:-1])
    if offset == (7, 5):
        np.testing.assert_array_equal(fused, full)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
