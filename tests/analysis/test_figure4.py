"""Figure 4: nearest neighbours in fc7's space, their class agreement, and the two panels, on known cases."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_tf import errors
from alexnet_tf.analysis import figure4
from alexnet_tf.data import pipeline, prepare
from alexnet_tf.model import build_alexnet
from alexnet_tf.model.npy_weights import load_npy_weights
from tests import colour_classifier as cc


def test_nearest_neighbours_are_the_closest_in_euclidean_distance_nearest_first():
    pool = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 3.0], [1.0, 1.0], [5.0, 5.0], [-2.0, 0.0], [0.0, -4.0]])
    queries = np.array([[0.1, 0.0], [9.0, 1.0]])
    neighbours = figure4.nearest_neighbours(queries, pool, k=3, chunk=1)
    np.testing.assert_array_equal(neighbours, [[0, 3, 5], [1, 4, 3]])
    brute = np.argsort(((queries[:, None] - pool[None]) ** 2).sum(-1), axis=1)[:, :3]
    np.testing.assert_array_equal(neighbours, brute)


def test_neighbours_match_brute_force_on_random_features():
    rng = np.random.default_rng(0)
    pool, queries = rng.normal(size=(300, 16)), rng.normal(size=(70, 16))
    brute = np.argsort(((queries[:, None] - pool[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(figure4.nearest_neighbours(queries, pool, chunk=32), brute)
    with pytest.raises(errors.DataError, match="5 training images cannot give 6 neighbours"):
        figure4.nearest_neighbours(queries, pool[:5])


def test_agreement_counts_neighbours_of_the_query_class():
    neighbours = np.array([[0, 1, 2], [2, 3, 0]])
    pool_labels = np.array([7, 7, 8, 8])
    assert figure4.neighbour_agreement(neighbours, np.array([7, 8]), pool_labels) == pytest.approx((2 + 2) / 6)
    assert figure4.neighbour_agreement(neighbours, np.array([9, 9]), pool_labels) == 0.0


def test_spread_indices_picks_distinct_classes_across_the_set():
    labels = np.repeat(np.arange(10), 5)
    chosen = figure4.spread_indices(labels, 8)
    assert len(set(labels[chosen])) == 8 and chosen == sorted(chosen)
    assert figure4.spread_indices(np.array([0, 1, 0, 1, 1]), 4) == [0, 1, 2, 3]


def test_predictions_panel_marks_the_correct_label_red_only_in_the_top_5():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    probabilities = np.array([[0.7, 0.1, 0.1, 0.05, 0.03, 0.02, 0.0], [0.0, 0.3, 0.3, 0.2, 0.1, 0.1, 0.0]])
    panel = figure4.predictions_figure(images, probabilities, np.array([0, 6]), [f"c{i}" for i in range(7)])
    column = figure4.TILE + 40
    assert panel.shape == (figure4.TILE + 16 * 7 + 8, 2 * column, 3)
    red = np.all(panel == figure4._CORRECT, axis=-1)
    # Image 0: its label is the most probable, a red bar 0.7 of the tile wide; image 1's label is not in its top 5.
    assert red[:, :column].sum() > 0 and red[:, column:].sum() == 0
    bar_rows = slice(figure4.TILE + 16 + 6, figure4.TILE + 32 + 3)
    red_columns = np.flatnonzero(red[bar_rows].any(axis=0))
    assert (red_columns.min(), red_columns.max()) == (20, 20 + round(0.7 * figure4.TILE))


def test_neighbours_panel_puts_the_query_first_then_its_neighbours():
    colours = np.arange(2 * 4 * 3).reshape(2, 4, 3) * 10
    tiles = np.broadcast_to(colours[:, :, None, None, :], (2, 4, 8, 8, 3)).astype(np.uint8)
    panel = figure4.neighbours_figure(tiles[:, 0], tiles[:, 1:])
    step = figure4.TILE + 4
    assert panel.shape == (2 * step, 4 * step + 8, 3)
    for row in range(2):
        assert tuple(panel[row * step + 5, 5]) == tuple(colours[row, 0])
        for column in range(1, 4):
            assert tuple(panel[row * step + 5, column * step + 8 + 5]) == tuple(colours[row, column])


@pytest.fixture(scope="module")
def colours_dataset(tmp_path_factory):
    """Solid prototype colours: 6 training images per class, validation as the colour classifier's (two of them
    red images labelled otherwise)."""
    root = tmp_path_factory.mktemp("colours")
    raw = root / "raw"
    for split, examples in (("train", [(c, c) for c in range(len(cc.NAMES)) for _ in range(6)]),
                            ("val", cc.VALIDATION)):
        for i, (label, colour) in enumerate(examples):
            folder = raw / split / cc.wnid(label)
            folder.mkdir(parents=True, exist_ok=True)
            image = np.broadcast_to(cc.PROTOTYPES[colour].astype(np.uint8), (80, 80, 3))
            Image.fromarray(np.ascontiguousarray(image)).save(folder / f"{i}.png")
    (raw / "synset_words.txt").write_text("".join(f"{cc.wnid(c)} {n}\n" for c, n in enumerate(cc.NAMES)))
    out = str(root / "prepared")
    prepare.prepare(str(raw), out, stored_size=cc.STORED_SIZE, names_file=str(raw / "synset_words.txt"))
    return out


def test_figure4_of_the_colour_classifier(colours_dataset, tmp_path):
    """fc7 of the colour classifier is an image's mean colour: each validation image's six nearest training
    images are those of its colour, so 6 of the 8 queries (the two mislabelled red images excepted) agree."""
    model = build_alexnet(num_classes=len(cc.NAMES), towers=2, width=cc.WIDTH, image_size=cc.IMAGE_SIZE, lrn=False)
    load_npy_weights(model, cc.weights())
    data = pipeline.DataConfig(data_dir=colours_dataset, mean="none")
    figure = figure4.figure4(model, data, cc.IMAGE_SIZE, batch_size=5)
    assert figure.fc7_neighbour_agreement == pytest.approx(6 / 8)
    assert (figure.num_queries, figure.num_train_images) == (8, 36)
    written = figure4.write_figure4(figure, str(tmp_path / "figures"))
    assert written["fc7_neighbour_agreement"] == pytest.approx(0.75)
    predictions = np.asarray(Image.open(written["predictions_png"]))
    neighbours = np.asarray(Image.open(written["neighbours_png"]))
    assert predictions.shape == figure.predictions.shape and neighbours.shape == figure.neighbours.shape
    # Shown as people see them: the first neighbours row is the query's colour, unchanged by the pipeline.
    step = figure4.TILE + 4
    for row in range(figure4.NEIGHBOUR_QUERIES):
        query = neighbours[row * step + 60, 60]
        for column in range(1, figure4.NEIGHBOURS + 1):
            np.testing.assert_allclose(neighbours[row * step + 60, column * step + 8 + 60], query, atol=3)
    assert sorted(os.listdir(tmp_path / "figures")) == ["neighbours.png", "predictions.png"]
    # The projector's embedding: every validation image (fewer than EMBEDDED_IMAGES), its fc7 features (its mean
    # colour), its label, the class the model gives it (the two mislabelled red images: red) and its thumbnail.
    embedding = figure.embedding
    features, probabilities, labels = figure4.fc7_features(model, pipeline.make_eval_dataset(data, 5, cc.IMAGE_SIZE))
    assert list(embedding.indices) == list(range(8)) and list(embedding.labels) == list(labels)
    np.testing.assert_allclose(embedding.features, features, rtol=1e-6)
    assert list(embedding.predicted) == list(np.argmax(probabilities, axis=-1))
    assert sorted(zip(embedding.labels, embedding.predicted)) == sorted(cc.VALIDATION)  # (label, colour) pairs.
    assert embedding.thumbnails.shape == (8, figure4.SPRITE_TILE, figure4.SPRITE_TILE, 3)
    np.testing.assert_allclose(embedding.thumbnails[:, 16, 16], cc.PROTOTYPES[embedding.predicted], atol=3)
    # TensorBoard's predictions: the panel's eight columns, one image each.
    columns = figure4.prediction_columns(figure.predictions)
    assert columns.shape == (8, figure.predictions.shape[0], figure4.PREDICTION_COLUMN, 3)
    np.testing.assert_array_equal(columns[2], figure.predictions[:, 2 * figure4.PREDICTION_COLUMN:
                                                                  3 * figure4.PREDICTION_COLUMN])
    assert figure4.fc7_neighbour_agreement(model, data, cc.IMAGE_SIZE, batch_size=5) == pytest.approx(6 / 8)


def test_sprite_lays_the_thumbnails_out_row_by_row_in_a_square_grid():
    thumbnails = (np.arange(10)[:, None, None, None] * 20 + np.zeros((10, 4, 4, 3))).astype(np.uint8)
    sprite = figure4.sprite_image(thumbnails)
    assert sprite.shape == (3 * 4, 4 * 4, 3)  # ceil(sqrt(10)) = 4 columns, 3 rows.
    assert [sprite[row * 4, column * 4, 0] for row in range(3) for column in range(4)] == [
        0, 20, 40, 60, 80, 100, 120, 140, 160, 180, 255, 255]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
