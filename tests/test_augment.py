"""Tests for alexnet_tf/augment.py: crop geometry, mirroring, PCA colour noise, rescaling."""

import sys

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import augment, stats


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


def test_central_crop_puts_the_odd_pixel_bottom_right():
    image = _numbered_image(7, 8)
    np.testing.assert_array_equal(augment.central_crop(tf.constant(image), 4).numpy(), image[1:5, 2:6])
    np.testing.assert_array_equal(augment.ten_crops(tf.constant(image), 4)[4].numpy(), image[1:5, 2:6])


def test_random_crop_offsets_cover_every_position_inside_the_image():
    offsets = np.array([augment.random_crop_offset(10, 7, _seed(i)).numpy() for i in range(300)])
    assert offsets.min() == 0 and offsets.max() == 3  # 10 - 7: the crop never leaves the image.
    assert len({tuple(o) for o in offsets}) == 16  # All 4 x 4 corners occur.
    np.testing.assert_array_equal(augment.random_crop_offset(10, 7, _seed(5)), augment.random_crop_offset(
        10, 7, _seed(5)))


def test_random_mirror_is_a_fair_coin():
    mirrors = [bool(augment.random_mirror(_seed(i))) for i in range(400)]
    assert 160 < sum(mirrors) < 240


def test_finish_crop_subtracts_the_mean_window_shifts_and_mirrors():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (10, 10, 3)).astype(np.uint8)
    mean_image = rng.uniform(0, 255, (10, 10, 3)).astype(np.float32)
    offset, shift = (2, 3), np.array([1.5, -2.0, 3.25], np.float32)
    crop = stored[2:8, 3:9]
    expected = crop.astype(np.float32) - mean_image[2:8, 3:9] + shift
    args = (tf.constant(crop), tf.constant(mean_image), tf.constant(offset), tf.constant(shift))
    np.testing.assert_allclose(augment.finish_crop(*args, tf.constant(False)), expected, rtol=1e-6)
    # The mirror flips the mean-subtracted crop: the mean is taken where each pixel was in the stored image.
    np.testing.assert_allclose(augment.finish_crop(*args, tf.constant(True)), expected[:, ::-1], rtol=1e-6)
    np.testing.assert_allclose(augment.finish_crop(*args, tf.constant(True), bgr=True), expected[:, ::-1, ::-1],
                               rtol=1e-6)


def test_pca_color_shift_follows_the_paper_formula_and_statistics():
    eigval = tf.constant(stats.IMAGENET_EIGVAL, tf.float32)
    eigvec = tf.constant(stats.IMAGENET_EIGVEC, tf.float32)
    alpha = tf.random.stateless_normal([3], _seed(1), stddev=augment.PCA_NOISE_STDDEV).numpy()
    expected = 255.0 * np.asarray(stats.IMAGENET_EIGVEC) @ (alpha * np.asarray(stats.IMAGENET_EIGVAL))
    np.testing.assert_allclose(augment.pca_color_shift(eigval, eigvec, _seed(1)), expected, rtol=1e-5)
    shifts = np.array([augment.pca_color_shift(eigval, eigvec, _seed(i)).numpy() for i in range(2000)])
    # Projected on the eigenvectors, the shifts have standard deviations 255 * 0.1 * eigval (to sampling error).
    projected = shifts @ np.asarray(stats.IMAGENET_EIGVEC)
    np.testing.assert_allclose(projected.std(axis=0), 25.5 * np.asarray(stats.IMAGENET_EIGVAL), rtol=0.08)
    np.testing.assert_allclose(projected.mean(axis=0), 0.0, atol=0.25)


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
