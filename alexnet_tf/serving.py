"""The SavedModel that TensorFlow Serving runs: `export_model` writes it, `make_archive` builds it.

    python -m alexnet_tf.export --data_dir=/data/imagenet --checkpoint=/runs/paper/checkpoints/epoch_090.keras \
        --export_dir=/models/alexnet/1
    python -m alexnet_tf.export --flagfile=flags/bvlc.cfg --data_dir=/data/imagenet \
        --pretrained=bvlc_alexnet.npy --export_dir=/models/bvlc_alexnet/1

The SavedModel holds only TensorFlow ops: `tf.saved_model.load` and TensorFlow Serving read it
without this package. It is written with Keras 3's `keras.export.ExportArchive` (not
`tf.saved_model.save` on the Keras model, keras issue 19458) and has two signatures:

- `serving_default`: `images`, tf.string [N], N >= 1, encoded images (JPEG, PNG, GIF, BMP or WebP; the first
  frame of an animation) of any size -> `classes` int64 [N, 5], `scores` float32 [N, 5] (softmax
  probabilities, descending) and `labels` tf.string [N, 5] (class names). Each image is decoded with 3
  channels, its shorter side rescaled to the stored size (the data set's, 256 for ImageNet, section 2) and
  centre-cropped, as evaluation does (`pipeline.make_eval_transform`, one transform for both): same crop, same
  mean (--mean, --mean_rgb, --stats_path or DATA_DIR/stats.npz), same channel order. Memory per image is
  bounded whatever the bytes claim: the size in the image's header is read before decoding and more than
  `augment.MAX_PIXELS` (50 megapixels) is refused; only the central square is resampled, so a 1 x 65000 image
  costs what its 65000 pixels do. At most DECODE_PARALLELISM images of a request are decoded at once. A request
  fails whole with TensorFlow's InvalidArgumentError naming the problem, never a made-up answer: no images
  ("serving_default: no images"), an image that is empty ("Input is empty"), of another format ("Unknown image
  file format"), too large ("The image is larger than 50000000 pixels"), truncated or corrupt ("Invalid PNG
  data", "Invalid JPEG data or crop window", ...).
- `predict_images`: `images`, float32 [N, S, S, 3], N >= 1, already preprocessed as the model was trained
  (S = the model's image size) -> `logits` and `probabilities`, float32 [N, num_classes]. Another size, an
  empty batch, or a NaN or infinite value fails with InvalidArgumentError, even from a caller that bypasses
  the signature's shape.

Neither signature holds an XLA-compiled function (no `_XlaMustCompile`), so TensorFlow Serving builds without
the XLA JIT run the SavedModel (tensorflow/serving issues 2214, 2217).

Class names come from the data set (DATA_DIR/labels.txt for a prepared one); without --data_dir
they are the class indices as strings. With fewer than 5 classes, the top-k outputs have
num_classes columns. A two-tower model is exported unplaced (placement matters only on GPUs).

Trying it with `saved_model_cli run`, and what each answer costs: docs/serving.md.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras
import tensorflow as tf

from alexnet_tf import errors
from alexnet_tf.model import alexnet
from alexnet_tf.data import pipeline, sources
from alexnet_tf.metrics import TOP_K

SERVING_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"
# Images of one serving_default request decoded at once: with augment.MAX_PIXELS, at most 4 x 150 MB of decoded
# pixels in flight per request.
DECODE_PARALLELISM = 4


def class_names(source: sources.Source | None, num_classes: int) -> list[str]:
    """The names the `labels` output gives: the data set's, else "0", "1", ..."""
    if source is None:
        return [str(i) for i in range(num_classes)]
    names = source.class_names()
    if len(names) != num_classes:
        raise errors.ConfigError(f"the model has {num_classes} classes, {source.data_dir} names {len(names)}")
    return names


def make_archive(model: keras.Model, preprocess: Callable[[tf.Tensor], tf.Tensor],
                 names: Sequence[str], top_k: int = TOP_K[-1]) -> keras.export.ExportArchive:
    """An ExportArchive with the two signatures of the module docstring.

    Args:
        model: images [N, S, S, 3] -> logits [N, num_classes].
        preprocess: fn(encoded image, tf.string scalar) -> float32 [S, S, 3], the model's input.
        names: one name per class.
        top_k: columns of the `serving_default` outputs (at most the number of classes).
    """
    size = alexnet.architecture_of(model).image_size
    k = min(top_k, len(names))
    name_table = tf.constant(list(names), tf.string)

    def predict_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        # A caller may bypass the signature's static shape (a flat call, a TF1 session feed); a wrong size
        # must fail, not compute logits of a differently cropped image. Assertions, not silent NaN logits.
        checks = [tf.debugging.assert_equal(tf.shape(images)[1:], tf.constant([size, size, 3]),
                                            message=f"{IMAGES_SIGNATURE}: images must be float32 [N, {size}, "
                                                    f"{size}, 3]"),
                  tf.debugging.assert_positive(tf.shape(images)[0], message=f"{IMAGES_SIGNATURE}: no images (N = 0)"),
                  tf.debugging.assert_all_finite(images, f"{IMAGES_SIGNATURE}: images hold NaN or Inf")]
        with tf.control_dependencies(checks):
            logits = tf.cast(model(tf.identity(images), training=False), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        # An empty batch would otherwise fail deep in the model ("Matrix size-incompatible").
        checks = [tf.debugging.assert_positive(tf.size(images), message=f"{SERVING_SIGNATURE}: no images (N = 0)")]
        with tf.control_dependencies(checks):
            batch = tf.map_fn(preprocess, images, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
                              parallel_iterations=DECODE_PARALLELISM)
        scores, classes = tf.math.top_k(predict_images(batch)["probabilities"], k)
        return {"classes": tf.cast(classes, tf.int64), "scores": scores, "labels": tf.gather(name_table, classes)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SERVING_SIGNATURE, serve, [tf.TensorSpec([None], tf.string, name="images")])
    archive.add_endpoint(IMAGES_SIGNATURE, predict_images,
                         [tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
    return archive


def export_model(model: keras.Model, data: pipeline.DataConfig, export_dir: str,
                 source: sources.Source | None = None) -> dict[str, Any]:
    """Writes `model`, unplaced, with the serving preprocessing of `data` to `export_dir` (any tf.io.gfile path).

    `source`: `data`'s data set, already opened (None opens it, if `data` names one)."""
    model = alexnet.without_placement(model)
    architecture = alexnet.architecture_of(model)
    if source is None and data.data_dir is not None:
        source = data.source()
    names = class_names(source, architecture.num_classes)
    preprocess = pipeline.make_eval_transform(data, architecture.image_size, any_image=True, source=source)
    make_archive(model, preprocess, names).write_out(export_dir, verbose=False)
    return {"export_dir": export_dir, "signatures": [SERVING_SIGNATURE, IMAGES_SIGNATURE],
            "image_size": architecture.image_size, "num_classes": len(names)}
