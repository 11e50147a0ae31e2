"""The paper's image transforms (Sections 2 and 4.1).

Conventions: images are HWC (or NHWC for batches), RGB, uint8 or float32 on the 0-255 scale. Randomness comes
from explicit draws (a random integer per image, a [2] seed per batch), so a seeded stream of draws gives a
repeatable augmentation stream whatever the order in which tf.data runs the work.

The per-image work is the JPEG decoding of the crop; the arithmetic (mean subtraction, PCA colour noise,
mirroring) runs once per batch in one XLA-fused pass, which as per-image TF ops cost as much as the decoding.
"""

from __future__ import annotations

import tensorflow as tf

PCA_NOISE_STDDEV = 0.1  # Section 4.1: alpha_i ~ N(0, 0.1).
PIXEL_SCALE = 255.0  # Eigenvalues are for RGB on [0, 1]; images are on 0-255 (see stats.py).


def random_crop_and_mirror(draw: tf.Tensor, stored_size: int, crop_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """A crop position and a mirror decision from one uniform random integer `draw` (int64, >= 0, >= 2^20 wide).

    Returns the top-left corner (y, x), int32 [2], uniform over the positions of a crop inside the stored image
    (Section 4.1), and a bool scalar, True with probability 1/2 (horizontal reflection, Section 4.1). Integer
    arithmetic on one draw, because this runs per image where every op adds overhead.
    """
    positions = stored_size - crop_size + 1
    y = tf.math.floormod(draw, positions)
    x = tf.math.floormod(draw // positions, positions)
    mirror = tf.math.floormod(draw // (positions * positions), 2) == 1
    return tf.cast(tf.stack([y, x]), tf.int32), mirror


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
    """The `crop_size` square of `image` [..., H, W, C] whose top-left corner is `offset` (y, x)."""
    return image[..., offset[0]:offset[0] + crop_size, offset[1]:offset[1] + crop_size, :]


def pca_color_shifts(eigval: tf.Tensor, eigvec: tf.Tensor, seed: tf.Tensor, batch_size: tf.Tensor,
                     stddev: float = PCA_NOISE_STDDEV) -> tf.Tensor:
    """The paper's PCA colour noise for `batch_size` images: float32 [B, 3], the RGB vector to add to every pixel.

    Section 4.1: [p1, p2, p3] [a1 l1, a2 l2, a3 l3]^T with a_i ~ N(0, stddev) drawn once per image; `eigval`
    [3] and `eigvec` [3, 3] (columns) are for RGB on [0, 1], so the shift is scaled to the 0-255 scale. `seed` is
    a [2] integer seed (see tf.random.stateless_normal).
    """
    alpha = tf.random.stateless_normal(tf.stack([batch_size, 3]), seed, stddev=stddev)
    return PIXEL_SCALE * tf.linalg.matmul(alpha * eigval, eigvec, transpose_b=True)


@tf.function(jit_compile=True)
def finish_crops(crops: tf.Tensor, mean_image: tf.Tensor, offsets: tf.Tensor, rgb_shifts: tf.Tensor,
                 mirror: tf.Tensor, bgr: bool = False) -> tf.Tensor:
    """The model input from uint8 crops [B, s, s, 3], crop b taken at `offsets[b]` (y, x) of its stored image.

    Returns float32 [B, s, s, 3]: crop - the same window of `mean_image` (float32 [S, S, 3], 0-255) +
    `rgb_shifts[b]` ([B, 3]), then mirrored left-right where `mirror` ([B] bool): as in Caffe, the mean is
    subtracted where the pixel was in the stored image. With `bgr`, the channels are then reversed.
    """
    size = crops.shape[1]
    # Gathers, not slices: XLA takes a slice's start as a compile-time constant and would compile one kernel per
    # crop position (1089 for 224 of 256).
    steps = tf.range(size)
    rows = tf.gather(mean_image, offsets[:, :1] + steps)  # [B, s, S, 3]
    windows = tf.gather(rows, offsets[:, 1:] + steps, axis=2, batch_dims=1)  # [B, s, s, 3]
    images = tf.cast(crops, tf.float32) - windows + rgb_shifts[:, tf.newaxis, tf.newaxis, :]
    images = tf.where(mirror[:, tf.newaxis, tf.newaxis, tf.newaxis], tf.reverse(images, axis=[2]), images)
    return tf.reverse(images, axis=[3]) if bgr else images


def central_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The centre `size` square of `image` [..., H, W, C]; odd margins put the extra pixel bottom/right."""
    height, width = tf.shape(image)[-3], tf.shape(image)[-2]
    return crop(image, tf.stack([(height - size) // 2, (width - size) // 2]), size)


def ten_crops(image: tf.Tensor, size: int) -> tf.Tensor:
    """The paper's ten test patches (Section 4.1) of `image` [..., H, W, C]: [..., 10, size, size, C].

    Order: top-left, top-right, bottom-left, bottom-right, centre; then the same five mirrored left-right.
    """
    height, width = tf.shape(image)[-3], tf.shape(image)[-2]
    bottom, right = height - size, width - size
    corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
    crops = tf.stack([crop(image, tf.stack(corner), size) for corner in corners], axis=-4)
    return tf.concat([crops, tf.reverse(crops, axis=[-2])], axis=-4)


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
