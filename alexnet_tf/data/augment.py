"""The paper's image transforms (Sections 2 and 4.1).

Conventions: images are HWC (or NHWC for batches), RGB, uint8 or float32 on the 0-255 scale. Randomness comes
from explicit draws (a random integer per image, a [2] seed per batch), so a seeded stream of draws gives a
repeatable augmentation stream whatever the order in which tf.data runs the work.

The per-image work is the JPEG decoding of the crop; the arithmetic (mean subtraction, PCA colour noise,
mirroring) runs once per batch in one XLA-fused pass, which as per-image TF ops cost as much as the decoding.
That pass (`finish_crops`) is for training only: evaluation and serving use its XLA-free twin
(`finish_crops_ops`), because a SavedModel holding a function marked `_XlaMustCompile` does not run on a
TensorFlow Serving build without the XLA JIT (tensorflow/serving issues 2214, 2217).

Images of any size and format (serving requests, ILSVRC folders) go through `decode_bounded`, which reads the
size the header claims before decoding and refuses more than MAX_PIXELS, and `resize_shorter_and_centre_crop`,
which resamples only the source pixels the central square needs: memory per image is bounded whatever the
bytes claim.
"""

from __future__ import annotations

import tensorflow as tf

PCA_NOISE_STDDEV = 0.1  # Section 4.1: alpha_i ~ N(0, 0.1).
PIXEL_SCALE = 255.0  # Eigenvalues are for RGB on [0, 1]; images are on 0-255 (see stats.py).
# The most pixels (height x width, as the header states) `decode_bounded` decodes: 50 MP covers the photos of
# today's cameras and phones (48-50 MP sensors); decoded, 150 MB as uint8 RGB.
MAX_PIXELS = 50_000_000
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")  # What `decode_bounded` reads the size of, and decodes.


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


def finish_crops_ops(crops: tf.Tensor, mean_image: tf.Tensor, offsets: tf.Tensor, rgb_shifts: tf.Tensor,
                     mirror: tf.Tensor, bgr: bool = False) -> tf.Tensor:
    """The model input from uint8 crops [B, s, s, 3], crop b taken at `offsets[b]` (y, x) of its stored image.

    Returns float32 [B, s, s, 3]: crop - the same window of `mean_image` (float32 [S, S, 3], 0-255) +
    `rgb_shifts[b]` ([B, 3]), then mirrored left-right where `mirror` ([B] bool): as in Caffe, the mean is
    subtracted where the pixel was in the stored image. With `bgr`, the channels are then reversed.

    Plain TensorFlow ops, traced into the caller's graph: the twin that evaluation and serving use.
    `finish_crops` is the same function compiled with XLA, for the training pipeline's batches.
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


# The training pipeline's batch pass, fused by XLA (see the module docstring); never in an exported graph.
finish_crops = tf.function(finish_crops_ops, jit_compile=True)


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
    resampling (TensorFlow's, `tf.image.resize(..., "bilinear", antialias=True)`), so downscaling a large photo
    does not alias. Only the source pixels under the central square's resampling kernels are resampled (the
    square of the shorter side, plus the kernel's reach of one output pixel on each side), with the scale and
    offset that resizing the whole image would use: the result is that of resizing the whole image then
    cropping (the pixels agree to float rounding, at most one level apart in a few pixels), at a cost that does
    not grow with the longer side. A 1 x 65000 image is its centre pixel, spread over the square, not a
    256 x 16640000 intermediate.
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    # The sizes and scales of resizing the whole image, in float32 as TensorFlow computes them; the resized
    # size in int64, since it may exceed int32 (it is never allocated).
    resized = tf.maximum(tf.cast(tf.round(shape * (size / tf.reduce_min(shape))), tf.int64), size)
    scale = tf.cast(resized, tf.float32) / shape
    crop_start = (resized - size) // 2  # central_crop's offset in the resized image.
    # Source coordinates (pixel i spans [i, i + 1)) of the first and last output pixels' centres, and the
    # kernel's reach: the triangle of radius 1 output pixel, in source pixels max(1 / scale, 1).
    inverse = 1.0 / tf.cast(scale, tf.float64)
    first = (tf.cast(crop_start, tf.float64) + 0.5) * inverse
    last = (tf.cast(crop_start + size, tf.float64) - 0.5) * inverse
    reach = tf.maximum(inverse, 1.0)
    height_width = tf.cast(tf.shape(image)[:2], tf.int64)
    start = tf.maximum(tf.cast(tf.floor(first - reach), tf.int64) - 1, 0)  # One pixel spare against rounding.
    stop = tf.minimum(tf.cast(tf.math.ceil(last + reach), tf.int64) + 1, height_width)
    window = image[start[0]:stop[0], start[1]:stop[1]]
    # Output pixel j of the window samples at (j + 0.5 - t) / scale in window coordinates; t = start * scale -
    # crop_start makes that (crop_start + j + 0.5) / scale - start, where the whole resize samples.
    translation = tf.cast(tf.cast(start, tf.float64) * tf.cast(scale, tf.float64) - tf.cast(crop_start, tf.float64),
                          tf.float32)
    resampled = tf.raw_ops.ScaleAndTranslate(images=window[tf.newaxis], size=tf.constant([size, size]),
                                             scale=scale, translation=translation, kernel_type="triangle",
                                             antialias=True)[0]
    return tf.ensure_shape(tf.saturate_cast(tf.round(resampled), tf.uint8), [size, size, 3])


def _header_bytes(encoded: tf.Tensor, count: int) -> tf.Tensor:
    """The first `count` bytes of `encoded` as int64 [count], zero-padded past its end."""
    head = tf.strings.substr(encoded, 0, count)  # Shorter if the string is; pos 0 is always in range.
    padded = tf.strings.substr(tf.strings.join([head, tf.constant(b"\0" * count)]), 0, count)
    return tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)


def _little_endian(head: tf.Tensor, at: int, count: int) -> tf.Tensor:
    return sum(head[at + i] * (256 ** i) for i in range(count))


def _big_endian(head: tf.Tensor, at: int, count: int) -> tf.Tensor:
    return sum(head[at + i] * (256 ** (count - 1 - i)) for i in range(count))


def image_format_and_size(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The format of an encoded image and the size its header claims, read without decoding it.

    Returns (index into IMAGE_FORMATS, int32 scalar, or -1 for none of them; (height, width), int64 [2], the
    header's values, (0, 0) for unknown formats). Formats are recognised by the signatures tf.io.decode_image
    uses. Sizes: JPEG from its SOF marker (tf.image.extract_jpeg_shape, which fails on a JPEG without one);
    PNG from IHDR (big-endian, bytes 16-23); GIF from the logical screen (little-endian, bytes 6-9); BMP from
    BITMAPINFOHEADER (int32 little-endian, bytes 18-25, the height's sign being the row order); WebP from its
    first chunk (VP8: 14-bit fields at bytes 26 and 28; VP8L: two 14-bit fields less one from bit 8 of byte 21;
    VP8X: 24-bit canvas sizes less one at bytes 24 and 27).
    """
    head = _header_bytes(encoded, 32)

    def matches(at: int, signature: bytes) -> tf.Tensor:
        return tf.reduce_all(tf.equal(head[at:at + len(signature)], list(signature)))

    is_webp = tf.logical_and(matches(0, b"RIFF"), matches(8, b"WEBP"))
    kinds = [matches(0, b"\xff\xd8\xff"), matches(0, b"\x89PNG"), matches(0, b"GIF8"), matches(0, b"BM"), is_webp]
    index = tf.reduce_min(tf.where(tf.stack(kinds), tf.range(len(kinds)), len(kinds)))
    index = tf.where(index == len(kinds), -1, index)

    def jpeg():
        return tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64)

    def png():
        return tf.stack([_big_endian(head, 20, 4), _big_endian(head, 16, 4)])

    def gif():
        return tf.stack([_little_endian(head, 8, 2), _little_endian(head, 6, 2)])

    def bmp():
        def signed(at):
            value = _little_endian(head, at, 4)
            return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))
        return tf.stack([signed(22), signed(18)])

    def webp():
        vp8 = tf.stack([_little_endian(head, 28, 2), _little_endian(head, 26, 2)]) % (2 ** 14)
        bits = _little_endian(head, 21, 4)
        vp8l = tf.stack([(bits // 2 ** 14) % 2 ** 14, bits % 2 ** 14]) + 1
        vp8x = tf.stack([_little_endian(head, 27, 3), _little_endian(head, 24, 3)]) + 1
        chunk = head[15]  # "VP8 ", "VP8L", "VP8X": the fourth letter tells them apart.
        return tf.where(chunk == ord("L"), vp8l, tf.where(chunk == ord("X"), vp8x, vp8))

    size = tf.switch_case(index, [jpeg, png, gif, bmp, webp], default=lambda: tf.zeros([2], tf.int64))
    return tf.cast(index, tf.int32), size


def decode_bounded(encoded: tf.Tensor, max_pixels: int = MAX_PIXELS) -> tf.Tensor:
    """An encoded image of any size, decoded to uint8 [H, W, 3] (first frame), if its header allows.

    Before anything is decoded, the request fails with tf.errors.InvalidArgumentError if the bytes are empty
    ("Input is empty"), not one of IMAGE_FORMATS ("Unknown image file format", JPEG XL included) or claim more
    than `max_pixels` pixels (height x width as the header states; a decoder never makes a bigger image than
    its header says). The decoders then refuse bytes that do not hold what the header claims.
    """
    length = tf.strings.length(encoded)
    checks = [tf.debugging.assert_positive(length, message="Input is empty")]
    with tf.control_dependencies(checks):
        index, height_width = image_format_and_size(encoded)
    checks = [
        tf.debugging.assert_non_negative(index, message=f"Unknown image file format: an image must be one of "
                                                        f"{', '.join(IMAGE_FORMATS)}"),
        tf.debugging.Assert(height_width[0] * height_width[1] <= max_pixels,
                            [f"The image is larger than {max_pixels} pixels, the most decoded; (height, width) as "
                             f"its header states:", height_width])]
    with tf.control_dependencies(checks):
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])
