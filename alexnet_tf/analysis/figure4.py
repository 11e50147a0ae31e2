"""Figure 4 of the paper: predictions with their top-5 bars, and nearest neighbours in fc7's feature space.

Section 6.1: "Figure 4 (left): Eight ILSVRC-2010 test images and the five labels considered most probable by our
model. The correct label is written under each image, and the probability assigned to the correct label is also
shown with a red bar (if it happens to be in the top 5)." "(Right): Five ILSVRC-2010 test images in the first
column. The remaining columns show the six training images that produce feature vectors in the last hidden layer
with the smallest Euclidean distance from the feature vector for the test image."

- `fc7_features`: the last hidden layer's activations (fc7, after its ReLU; dropout is off at inference), one
  4096-d vector per image for the paper's width.
- `nearest_neighbours`: for each query, the k training images nearest in Euclidean distance.
- `neighbour_agreement`: over every query, the fraction of its k=6 neighbours that share its class: how well
  the feature space groups images by class (1/num_classes for unrelated features, 1 for a perfect one).
- `predictions_figure`, `neighbours_figure`: the two panels as RGB arrays, images shown as people see them (the
  mean added back and the channel order undone: the caller passes display images decoded without either).
- `Embedding`: the same fc7 features of up to EMBEDDED_IMAGES validation images, with their labels, predictions and
  thumbnails (`sprite_image` lays them out), for TensorBoard's projector: section 6.1's space, explored by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from alexnet_tf import files
from alexnet_tf.errors import DataError
from alexnet_tf.metrics import TOP_K
from alexnet_tf.data import pipeline, records, sources

NEIGHBOURS = 6  # Section 6.1: "the six training images".
PREDICTION_IMAGES = 8  # Figure 4 (left): eight test images.
NEIGHBOUR_QUERIES = 5  # Figure 4 (right): five test images.
TILE = 128  # Pixels of each image in the figures.
# Training images whose features are searched: ImageNet's 1.28 million at 4096 floats would need 21 GB, so a
# sample (prepared shards are shuffled, so the first images are a random sample). The demo's 3,000 all fit.
MAX_TRAIN_IMAGES = 20_000
# Validation images whose fc7 features go to the projector: two of each ImageNet class (spread_indices), 32 MB of
# float32 features at the paper's width; the demo's 500 all fit.
EMBEDDED_IMAGES = 2_000
SPRITE_TILE = 32  # Pixels of each thumbnail in the projector's sprite.
PREDICTION_COLUMN = TILE + 40  # Pixels of each image's column in the predictions panel.
_FONT = ImageFont.load_default(size=13)
_CORRECT, _OTHER, _TEXT, _BACKGROUND = (200, 30, 30), (70, 110, 190), (20, 20, 20), (255, 255, 255)


@dataclasses.dataclass
class Embedding:
    """fc7 features of validation images for the projector: row i is validation image `indices[i]`.

    features float32 [n, units]; labels, predicted int [n] (class indices; predicted is the top-1 class);
    thumbnails uint8 [n, SPRITE_TILE, SPRITE_TILE, 3] as people see the images; class_names a name per class.
    """

    features: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    thumbnails: np.ndarray
    indices: np.ndarray
    class_names: list[str]


@dataclasses.dataclass
class Figure4:
    """Both panels (uint8 RGB arrays), the agreement of the validation images' fc7 neighbours, and the fc7
    embedding of (a class-balanced sample of) the validation images."""

    predictions: np.ndarray
    neighbours: np.ndarray
    fc7_neighbour_agreement: float
    num_queries: int
    num_train_images: int
    embedding: Embedding


@dataclasses.dataclass
class _Fc7:
    """fc7 features of the validation split (queries) and of the training pool, and the neighbours between them."""

    query_features: np.ndarray
    probabilities: np.ndarray
    query_labels: np.ndarray
    pool_labels: np.ndarray
    neighbours: np.ndarray

    @property
    def agreement(self) -> float:
        return neighbour_agreement(self.neighbours, self.query_labels, self.pool_labels)


def _fc7_of_splits(model: keras.Model, data: pipeline.DataConfig, image_size: int, max_train_images: int,
                   batch_size: int, source: sources.Source) -> _Fc7:
    val = pipeline.make_eval_dataset(data, batch_size, image_size, source=source)
    train = pipeline.make_eval_dataset(data, batch_size, image_size, split=records.TRAIN, source=source)
    train = train.unbatch().take(max_train_images).batch(batch_size)
    predict = fc7_predict(model)  # Traced once for both splits.
    query_features, probabilities, query_labels = fc7_features(predict, val)
    pool_features, _, pool_labels = fc7_features(predict, train)
    return _Fc7(query_features, probabilities, query_labels, pool_labels,
                nearest_neighbours(query_features, pool_features))


def fc7_neighbour_agreement(model: keras.Model, data: pipeline.DataConfig, image_size: int, *,
                            max_train_images: int = MAX_TRAIN_IMAGES, batch_size: int = 64,
                            source: sources.Source | None = None) -> float:
    """Figure 4's `fc7_neighbour_agreement` alone, without drawing anything (e.g. of the initial weights)."""
    return _fc7_of_splits(model, data, image_size, max_train_images, batch_size, source or data.source()).agreement


def figure4(model: keras.Model, data: pipeline.DataConfig, image_size: int, *,
            max_train_images: int = MAX_TRAIN_IMAGES, batch_size: int = 64,
            source: sources.Source | None = None, embedded_images: int = EMBEDDED_IMAGES) -> Figure4:
    """Figure 4 for `model` on `data`'s validation split (queries) and training split (the neighbour pool),
    centre crops as evaluation takes them; the agreement is over the whole validation split; the embedding holds
    `embedded_images` validation images spread over the classes (all of them if there are fewer). `source`:
    `data`'s data set, already opened (None opens it)."""
    source = source or data.source()
    fc7 = _fc7_of_splits(model, data, image_size, max_train_images, batch_size, source)
    labels, neighbours = fc7.query_labels, fc7.neighbours
    names = source.class_names()
    # As people see them: the stored image's centre crop, no mean subtracted, in RGB.
    shown = dataclasses.replace(data, mean="none", mean_rgb=None, channel_order="RGB")
    predicted = spread_indices(labels, PREDICTION_IMAGES)
    queried = spread_indices(labels, NEIGHBOUR_QUERIES)
    embedded = sorted(spread_indices(labels, embedded_images))
    # One pass over the validation images: the figures' at TILE pixels, the others only as thumbnails.
    sizes = {**{i: SPRITE_TILE for i in embedded}, **{i: TILE for i in predicted + queried}}
    val_images = _images_at(pipeline.make_eval_dataset(shown, batch_size, image_size, source=source), sizes)
    wanted = {int(i): TILE for q in queried for i in neighbours[q]}
    train_images = _images_at(pipeline.make_eval_dataset(shown, batch_size, image_size, split=records.TRAIN,
                                                        source=source),
                              wanted, limit=max_train_images)
    embedding = Embedding(
        features=fc7.query_features[embedded], labels=labels[embedded],
        predicted=np.argmax(fc7.probabilities[embedded], axis=-1), indices=np.asarray(embedded, np.int64),
        thumbnails=np.stack([_resized(val_images[i], SPRITE_TILE) for i in embedded]), class_names=names)
    return Figure4(
        predictions=predictions_figure(np.stack([val_images[i] for i in predicted]), fc7.probabilities[predicted],
                                       labels[predicted], names),
        neighbours=neighbours_figure(np.stack([val_images[q] for q in queried]),
                                     np.stack([[train_images[int(i)] for i in neighbours[q]] for q in queried])),
        fc7_neighbour_agreement=fc7.agreement, num_queries=len(labels), num_train_images=len(fc7.pool_labels),
        embedding=embedding)


def write_figure4(figure: Figure4, directory: str) -> dict[str, Any]:
    """predictions.png and neighbours.png in `directory` (any tf.io.gfile path); returns their paths and the
    agreement, for a results JSON."""
    paths = {f"{name}_png": files.write_png(image, files.join(directory, f"{name}.png"))
             for name, image in (("predictions", figure.predictions), ("neighbours", figure.neighbours))}
    return {**paths, "fc7_neighbour_agreement": figure.fc7_neighbour_agreement,
            "fc7_neighbour_pool": figure.num_train_images}


def _images_at(dataset: tf.data.Dataset, sizes: dict[int, int], limit: int | None = None) -> dict[int, np.ndarray]:
    """{index: uint8 image resized to sizes[index] pixels square} of the dataset's images (in order) at the indices
    of `sizes`."""
    found, offset = {}, 0
    for images, _ in dataset:
        for i in range(images.shape[0]):
            if offset + i in sizes:
                image = np.clip(np.rint(images[i].numpy()), 0, 255).astype(np.uint8)
                found[offset + i] = _resized(image, sizes[offset + i])
        offset += images.shape[0]
        if len(found) == len(sizes) or (limit is not None and offset >= limit):
            break
    return found


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))


def sprite_image(thumbnails: np.ndarray) -> np.ndarray:
    """The projector's sprite: thumbnails uint8 [n, t, t, 3] row by row in a square grid of ceil(sqrt(n)) columns,
    white where the grid has no image; uint8 [rows * t, columns * t, 3]."""
    n, tile = len(thumbnails), thumbnails.shape[1]
    columns = int(np.ceil(np.sqrt(n)))
    rows = -(-n // columns)
    sprite = np.full((rows * tile, columns * tile, 3), 255, np.uint8)
    for i, thumbnail in enumerate(thumbnails):
        row, column = divmod(i, columns)
        sprite[row * tile:(row + 1) * tile, column * tile:(column + 1) * tile] = thumbnail
    return sprite


def fc7_predict(model: keras.Model) -> Callable:
    """images -> (fc7 features, logits), `fc7_model` in inference mode as one tf.function."""
    both = fc7_model(model)
    return tf.function(lambda images: both(images, training=False), reduce_retracing=True)


def fc7_model(model: keras.Model) -> keras.Model:
    """images -> (fc7 features after ReLU [N, units], logits [N, classes]) of a trained AlexNet."""
    return keras.Model(model.inputs, [model.get_layer("fc7").output, model.outputs[0]], name="fc7_and_logits")


def fc7_features(model: keras.Model | Callable, dataset: tf.data.Dataset
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features float32 [N, units], probabilities float32 [N, classes], labels int [N]) over `dataset`'s
    (images, labels) batches. `model`: an AlexNet, or `fc7_predict(model)` (one traced function for several data
    sets)."""
    predict = fc7_predict(model) if isinstance(model, keras.Model) else model
    features, probabilities, labels = [], [], []
    for images, batch_labels in dataset:
        fc7, logits = predict(images)
        features.append(np.asarray(fc7, np.float32))
        probabilities.append(np.asarray(tf.nn.softmax(tf.cast(logits, tf.float32))))
        labels.append(np.asarray(batch_labels))
    if not features:
        raise DataError("the data set holds no images")
    return np.concatenate(features), np.concatenate(probabilities), np.concatenate(labels)


def nearest_neighbours(queries: np.ndarray, pool: np.ndarray, k: int = NEIGHBOURS,
                       chunk: int = 1024) -> np.ndarray:
    """int [Q, k]: the indices into `pool` of each query's k nearest vectors (Euclidean), nearest first.

    Distances are computed in chunks of queries as |q|^2 - 2 q.p + |p|^2 in float64, so memory stays at
    chunk x len(pool) values.
    """
    if len(pool) < k:
        raise DataError(f"{len(pool)} training images cannot give {k} neighbours")
    pool = np.asarray(pool, np.float64)
    pool_norms = np.einsum("ij,ij->i", pool, pool)
    result = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk):
        q = np.asarray(queries[start:start + chunk], np.float64)
        distances = np.einsum("ij,ij->i", q, q)[:, None] - 2.0 * q @ pool.T + pool_norms[None, :]
        nearest = np.argpartition(distances, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(distances, nearest, axis=1).argsort(axis=1, kind="stable")
        result[start:start + chunk] = np.take_along_axis(nearest, order, axis=1)
    return result


def neighbour_agreement(neighbours: np.ndarray, query_labels: np.ndarray, pool_labels: np.ndarray) -> float:
    """The fraction of all queries' neighbours (`nearest_neighbours` output) that share the query's class."""
    return float(np.mean(np.asarray(pool_labels)[neighbours] == np.asarray(query_labels)[:, None]))


def spread_indices(labels: np.ndarray, count: int) -> list[int]:
    """`count` indices into `labels`: the first image of each of `count` classes spread evenly over the classes
    present (the classes repeat, with their next images, when there are fewer than `count`)."""
    labels = np.asarray(labels)
    chosen: list[int] = []
    by_class = {c: list(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    classes = list(by_class)
    picks = [classes[int(round(i))] for i in np.linspace(0, len(classes) - 1, num=min(count, len(classes)))]
    while len(chosen) < min(count, len(labels)):
        for cls in picks:
            if by_class[cls] and len(chosen) < count:
                chosen.append(int(by_class[cls].pop(0)))
        picks = [c for c in classes if by_class[c]]
    return chosen


def predictions_figure(images: np.ndarray, probabilities: np.ndarray, labels: np.ndarray,
                       names: Sequence[str]) -> np.ndarray:
    """Figure 4 (left): each image over its correct label and its top-5 labels as bars, the correct one red.

    Args:
      images: uint8 [N, S, S, 3] as people see them; probabilities: [N, classes]; labels: int [N];
      names: a display name per class.
    Returns: uint8 RGB [height, N * PREDICTION_COLUMN, 3].
    """
    column, line = PREDICTION_COLUMN, 16
    height = TILE + line * (TOP_K[-1] + 2) + 8
    canvas = Image.new("RGB", (column * len(images), height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, (image, p, label) in enumerate(zip(images, probabilities, labels)):
        left = i * column + 20
        canvas.paste(_tile(image), (left, 0))
        draw.text((left, TILE + 2), _fit(names[label], TILE), fill=_TEXT, font=_FONT)
        for rank, cls in enumerate(np.argsort(-p, kind="stable")[:TOP_K[-1]]):
            top = TILE + line * (rank + 1) + 6
            width = max(1, int(round(float(p[cls]) * TILE)))
            colour = _CORRECT if cls == label else _OTHER
            draw.rectangle([left, top, left + width, top + line - 3], fill=colour)
            draw.text((left + 2, top - 1), _fit(names[cls], TILE - 4), fill=_TEXT if width < TILE // 2 else
                      _BACKGROUND, font=_FONT)
    return np.asarray(canvas)


def prediction_columns(predictions: np.ndarray) -> np.ndarray:
    """The columns of `predictions_figure`'s panel, one image each: uint8 [N, height, PREDICTION_COLUMN, 3]. In
    TensorBoard they are the samples of one image tag, each shown near its own size (a card fits the whole panel,
    1,344 pixels wide for eight images, into about 300, where its labels cannot be read)."""
    return np.stack(np.split(predictions, predictions.shape[1] // PREDICTION_COLUMN, axis=1))


def neighbours_figure(queries: np.ndarray, neighbour_images: np.ndarray) -> np.ndarray:
    """Figure 4 (right): each query image in the first column, its nearest training images after it.

    Args: queries uint8 [Q, S, S, 3]; neighbour_images uint8 [Q, k, S, S, 3], nearest first.
    Returns: uint8 RGB [Q * (TILE + 4), (k + 1) * (TILE + 4) + 8, 3], a gap after the query column.
    """
    step, gap = TILE + 4, 8
    count = neighbour_images.shape[1]
    canvas = Image.new("RGB", ((count + 1) * step + gap, len(queries) * step), _BACKGROUND)
    for row, (query, row_images) in enumerate(zip(queries, neighbour_images)):
        canvas.paste(_tile(query), (0, row * step))
        for column, image in enumerate(row_images):
            canvas.paste(_tile(image), ((column + 1) * step + gap, row * step))
    return np.asarray(canvas)


def _tile(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(image, np.uint8)).resize((TILE, TILE), Image.Resampling.BICUBIC)


def _fit(text: str, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    text = text.split(",")[0]
    while text and _FONT.getlength(text) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text
