"""The paper's image transforms (Sections 2 and 4.1), on single images.

Conventions: images are HWC, RGB; uint8 or float32 on the 0-255 scale. Randomness is stateless: every random
transform takes a `seed`, an int32/int64 tensor of shape [2] (see `tf.random.stateless_uniform`), so a fixed
seed stream gives a repeatable augmentation stream whatever the order in which tf.data runs the work.
"""

from __future__ import annotations

import tensorflow as tf

PCA_NOISE_STDDEV = 0.1  # Section 4.1: alpha_i ~ N(0, 0.1).
PIXEL_SCALE = 255.0  # Eigenvalues are for RGB on [0, 1]; images are on 0-255 (see stats.py).
NUM_TEN_CROPS = 10  # Section 4.1: four corners and the centre, and their horizontal reflections.


def random_crop_offset(stored_size: int, crop_size: int, seed: tf.Tensor) -> tf.Tensor:
    """A uniformly random top-left corner (y, x), int32 [2], of a crop lying inside the stored image."""
    return tf.random.stateless_uniform([2], seed, minval=0, maxval=stored_size - crop_size + 1, dtype=tf.int32)


def decode_and_crop(jpeg: tf.Tensor, offset: tf.Tensor, crop_size: int) -> tf.Tensor:
    """Decodes only the `crop_size` square at `offset` (y, x) of a JPEG: uint8 [crop_size, crop_size, 3].

    The fused op skips the colour conversion and upsampling of everything outside the window, which is the
    bulk of the per-image cost of the training pipeline. Pixels equal those of decoding then cropping, except
    in a first or last column lying on a JPEG block boundary, whose chroma is upsampled without its neighbour.
    """
    window = tf.stack([offset[0], offset[1], crop_size, crop_size])
    image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
    return tf.ensure_shape(image, [crop_size, crop_size, 3])


def crop(image: tf.Tensor, offset: tf.Tensor, crop_size: int) -> tf.Tensor:
    """The `crop_size` square of `image` [H, W, C] whose top-left corner is `offset` (y, x)."""
    return tf.slice(image, tf.stack([offset[0], offset[1], 0]), [crop_size, crop_size, -1])


def random_mirror(seed: tf.Tensor) -> tf.Tensor:
    """Whether to mirror an image left-right: a bool scalar, True with probability 0.5 (Section 4.1)."""
    return tf.random.stateless_uniform([], seed) < 0.5


# XLA fuses the cast, window read, subtraction, addition and mirroring into one pass over the pixels; as
# separate TF ops they cost more than the JPEG decoding (measured: 1.3k -> 2.1k images/s per core).
@tf.function(jit_compile=True)
def finish_crop(crop: tf.Tensor, mean_image: tf.Tensor, offset: tf.Tensor, rgb_shift: tf.Tensor,
                mirror: tf.Tensor, bgr: bool = False) -> tf.Tensor:
    """The model input from a uint8 crop [s, s, 3] taken at `offset` (y, x) of the stored image.

    Returns float32 [s, s, 3] = crop - the same window of `mean_image` (float32 [S, S, 3], 0-255) + `rgb_shift`
    ([3]), then mirrored left-right if `mirror` (bool scalar): as in Caffe, the mean is subtracted where the
    pixel was in the stored image. With `bgr`, the channels are then reversed.
    """
    size = crop.shape[0]
    window = tf.slice(mean_image, tf.stack([offset[0], offset[1], 0]), [size, size, 3])
    image = tf.cast(crop, tf.float32) - window + rgb_shift
    image = tf.where(mirror, tf.reverse(image, axis=[1]), image)
    return tf.reverse(image, axis=[2]) if bgr else image


def pca_color_shift(eigval: tf.Tensor, eigvec: tf.Tensor, seed: tf.Tensor,
                    stddev: float = PCA_NOISE_STDDEV) -> tf.Tensor:
    """The paper's PCA colour noise for one image: the RGB vector float32 [3] to add to every pixel.

    Section 4.1: [p1, p2, p3] [a1 l1, a2 l2, a3 l3]^T with a_i ~ N(0, stddev), drawn once per image; `eigval`
    [3] and `eigvec` [3, 3] (columns) are for RGB on [0, 1], so the shift is scaled to the 0-255 scale.
    """
    alpha = tf.random.stateless_normal([3], seed, stddev=stddev)
    return PIXEL_SCALE * tf.linalg.matvec(eigvec, alpha * eigval)


def central_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The centre `size` square of `image` [H, W, C]; odd margins put the extra pixel bottom/right."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    offset = tf.stack([(height - size) // 2, (width - size) // 2])
    return crop(image, offset, size)


def ten_crops(image: tf.Tensor, size: int) -> tf.Tensor:
    """The paper's ten test patches of `image` [H, W, C] (Section 4.1): [10, size, size, C].

    Order: top-left, top-right, bottom-left, bottom-right, centre; then the same five mirrored left-right.
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    bottom, right = height - size, width - size
    offsets = [(0, 0), (0, right), (bottom, 0), (bottom, right), ((height - size) // 2, (width - size) // 2)]
    crops = tf.stack([crop(image, tf.stack(offset), size) for offset in offsets])
    return tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)


def resize_shorter_and_centre_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Section 2: rescale so the shorter side is `size`, then take the central `size` square.

    `image` is uint8 [H, W, 3] of any size; the result is uint8 [size, size, 3]. Antialiased bilinear
    resampling, so downscaling a large photo does not alias.
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    resized = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
    return tf.ensure_shape(tf.saturate_cast(tf.round(central_crop(resized, size)), tf.uint8), [size, size, 3])
