"""Tests for alexnet_tf/pipeline.py on a tiny ILSVRC-like folder, prepared here."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf.data import pipeline, prepare, stats
from tests import imagenet_like

STORED, CROP, BATCH = 32, 24, 4
NUM_TRAIN, NUM_VAL = 16, 6  # 3 classes x 4 images + 4 decodable odd files; 3 classes x 2.


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(raw ILSVRC folder, prepared folder, odd file paths)."""
    root = tmp_path_factory.mktemp("data")
    raw, prepared = str(root / "raw"), str(root / "prepared")
    odd = imagenet_like.write_ilsvrc(raw)
    prepare.prepare(raw, prepared, stored_size=STORED, images_per_shard=5, names_file=odd["names"])
    return raw, prepared, odd


def _stored_images(prepared: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The decoded stored images [N, STORED, STORED, 3] uint8 and labels of a split, in file order."""
    files = sorted(tf.io.gfile.glob(os.path.join(prepared, f"{split}-*.tfrecord")))
    pairs = [(tf.io.decode_jpeg(encoded, channels=3).numpy(), label) for encoded, label in
             tf.data.TFRecordDataset(files).map(pipeline._parse_record).as_numpy_iterator()]
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def _batches(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*dataset.as_numpy_iterator())
    return np.concatenate(images), np.concatenate(labels)


def _plain_train(prepared: str, **kwargs) -> tf.data.Dataset:
    """Training batches with nothing but the crop and the mirror: raw pixel values."""
    return pipeline.make_train_dataset(prepared, BATCH, image_size=CROP, mean="none", pca_noise=False,
                                             **kwargs)


def test_train_batches_shapes_dtypes_labels_and_ranges(data):
    _, prepared, _ = data
    batches = list(pipeline.make_train_dataset(prepared, BATCH, image_size=CROP).as_numpy_iterator())
    assert len(batches) == NUM_TRAIN // BATCH
    for images, labels in batches:
        assert images.shape == (BATCH, CROP, CROP, 3) and images.dtype == np.float32
        assert labels.shape == (BATCH,) and labels.dtype == np.int32
    images, labels = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    assert sorted(labels.tolist()) == sorted(_stored_images(prepared, "train")[1].tolist())
    # Mean-subtracted pixels: centred near zero, within +-255 plus the PCA shift.
    assert -300 < images.min() < 0 < images.max() < 300 and abs(images.mean()) < 40
    plain, _ = _batches(_plain_train(prepared))
    assert plain.min() >= 0 and plain.max() <= 255 and np.array_equal(plain, np.round(plain))


def test_every_crop_lies_inside_its_stored_image_and_mirrors_occur(data):
    _, prepared, _ = data
    stored, stored_labels = _stored_images(prepared, "train")
    images, labels = _batches(_plain_train(prepared, seed=0, deterministic=True))
    mirrored = 0
    for image, label in zip(images, labels):
        matches = []
        for source, source_label in zip(stored.astype(np.float32), stored_labels):
            for y in range(STORED - CROP + 1):
                for x in range(STORED - CROP + 1):
                    window = source[y:y + CROP, x:x + CROP]
                    for mirror, candidate in ((False, image), (True, image[:, ::-1])):
                        # Interior columns: see augment.decode_and_crop on the window's edge columns.
                        if np.array_equal(candidate[:, 1:-1], window[:, 1:-1]):
                            matches.append((source_label, mirror))
        assert matches and all(m == matches[0] for m in matches) and matches[0][0] == label
        mirrored += matches[0][1]
    assert 0 < mirrored < len(images)


def test_seed_makes_the_stream_repeatable_and_epochs_differ(data):
    _, prepared, _ = data

    def two_epochs(seed):
        dataset = pipeline.make_train_dataset(prepared, BATCH, image_size=CROP, seed=seed, deterministic=True)
        return [_batches(dataset) for _ in range(2)]

    first, again, other = two_epochs(7), two_epochs(7), two_epochs(8)
    for epoch in range(2):
        np.testing.assert_array_equal(first[epoch][0], again[epoch][0])
        np.testing.assert_array_equal(first[epoch][1], again[epoch][1])
    assert not np.array_equal(first[0][0], first[1][0])  # Each pass reshuffles and redraws the augmentation.
    assert not np.array_equal(first[0][0], other[0][0])


def test_pca_noise_shifts_every_pixel_of_an_image_by_one_rgb_vector(data):
    _, prepared, _ = data
    common = dict(image_size=CROP, seed=3, deterministic=True)
    noisy, noisy_labels = _batches(pipeline.make_train_dataset(prepared, BATCH, **common))
    clean, clean_labels = _batches(pipeline.make_train_dataset(prepared, BATCH, pca_noise=False, **common))
    np.testing.assert_array_equal(noisy_labels, clean_labels)  # Same crops and mirrors: only the noise differs.
    shifts = (noisy - clean).reshape(len(noisy), -1, 3)
    np.testing.assert_allclose(shifts, np.broadcast_to(shifts[:, :1], shifts.shape), atol=1e-3)
    per_image = shifts[:, 0]
    assert np.all(np.abs(per_image).max(axis=1) > 0.01) and len(np.unique(per_image.round(3), axis=0)) == len(noisy)
    # Along the first eigenvector the shift is 255 * alpha * 0.2175 with alpha ~ N(0, 0.1): |shift| < 25 here.
    assert np.abs(per_image).max() < 25


def test_eval_keeps_order_and_last_partial_batch_and_takes_the_centre(data, tmp_path):
    raw, prepared, _ = data
    mean_image = np.random.default_rng(0).uniform(0, 255, (STORED, STORED, 3)).astype(np.float32)
    stats.save_stats(str(tmp_path / "stats.npz"), stats.Stats(mean_image, np.ones(3, np.float32),
                                                              np.eye(3, dtype=np.float32)))
    dataset = pipeline.make_eval_dataset(prepared, BATCH, image_size=CROP, stats_path=str(tmp_path / "stats.npz"))
    batches = list(dataset.as_numpy_iterator())
    assert [len(labels) for _, labels in batches] == [4, 2]
    images, labels = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    stored, stored_labels = _stored_images(prepared, "validation")
    assert labels.tolist() == stored_labels.tolist() == pipeline.list_ilsvrc(raw, "validation")[1]
    margin = (STORED - CROP) // 2
    expected = stored[:, margin:margin + CROP, margin:margin + CROP] - mean_image[margin:margin + CROP,
                                                                                  margin:margin + CROP]
    np.testing.assert_allclose(images[:, :, 1:-1], expected[:, :, 1:-1], atol=1e-4)


def test_ten_crops_channel_mean_and_bgr(data):
    _, prepared, _ = data
    common = dict(image_size=CROP, mean="channel")
    centre, _ = _batches(pipeline.make_eval_dataset(prepared, BATCH, **common))
    ten, labels = _batches(pipeline.make_eval_dataset(prepared, BATCH, ten_crop=True, **common))
    assert ten.shape == (NUM_VAL, 10, CROP, CROP, 3) and labels.shape == (NUM_VAL,)
    np.testing.assert_allclose(ten[:, 4, :, 1:-1], centre[:, :, 1:-1], atol=1e-4)
    np.testing.assert_array_equal(ten[:, 9], ten[:, 4, :, ::-1])
    stored, _ = _stored_images(prepared, "validation")
    # No stats file: the published ImageNet per-channel means.
    np.testing.assert_allclose(ten[:, 0], stored[:, :CROP, :CROP] - np.float32(stats.IMAGENET_MEAN_RGB), atol=1e-4)
    bgr, _ = _batches(pipeline.make_eval_dataset(prepared, BATCH, channel_order="BGR", **common))
    np.testing.assert_array_equal(bgr, centre[..., ::-1])


def test_labels_and_counts(data):
    raw, prepared, odd = data
    expected = list(zip(imagenet_like.WNIDS, imagenet_like.NAMES))
    assert pipeline.read_labels(prepared) == expected
    assert pipeline.read_labels(raw, names_file=odd["names"]) == expected
    assert pipeline.read_labels(raw) == [(w, w) for w in imagenet_like.WNIDS]
    assert pipeline.num_classes(prepared) == 3
    assert pipeline.num_examples(prepared, "train") == NUM_TRAIN
    assert pipeline.num_examples(prepared, "validation") == NUM_VAL
    assert pipeline.num_examples(raw, "train") == NUM_TRAIN + 1  # The truncated file is only listed.


def test_clear_errors(data, tmp_path):
    _, prepared, _ = data
    for missing in (str(tmp_path / "absent"), str(tmp_path)):
        with pytest.raises(FileNotFoundError, match="python tools/prepare_imagenet.py --input_dir="):
            pipeline.make_train_dataset(missing, BATCH)
    with pytest.raises(ValueError, match="image_size=40"):
        pipeline.make_train_dataset(prepared, BATCH, image_size=40)
    with pytest.raises(ValueError, match="no complete batch"):
        pipeline.make_train_dataset(prepared, NUM_TRAIN + 1, image_size=CROP)
    with pytest.raises(ValueError, match="mean="):
        pipeline.make_eval_dataset(prepared, BATCH, image_size=CROP, mean="pixel")
    with pytest.raises(FileNotFoundError, match="no test split"):
        pipeline.make_eval_dataset(prepared, BATCH, image_size=CROP, split="test")


def test_ilsvrc_folder_directly_skips_undecodable_files_and_matches_prepared(data):
    raw, prepared, _ = data
    train = pipeline.make_train_dataset(raw, BATCH, image_size=CROP, stored_size=STORED, seed=1)
    images, labels = _batches(train)
    assert images.shape == (NUM_TRAIN, CROP, CROP, 3)  # 17 files, the truncated one skipped: 4 full batches.
    direct, direct_labels = _batches(pipeline.make_eval_dataset(raw, BATCH, image_size=CROP, stored_size=STORED))
    stored, stored_labels = _batches(pipeline.make_eval_dataset(prepared, BATCH, image_size=CROP))
    np.testing.assert_array_equal(direct_labels, stored_labels)
    # Same geometry; they differ only by the prepared copy's JPEG re-encoding and resampler.
    assert np.abs(direct - stored).mean() < 3


def test_tfds_source():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        train = pipeline.make_train_dataset("tfds:imagenette", 2, image_size=CROP, stored_size=STORED)
        images, labels = _batches(train)
        assert images.shape == (6, CROP, CROP, 3) and labels.dtype == np.int32 and labels.max() < 10
        ten, _ = _batches(pipeline.make_eval_dataset("tfds:imagenette", 4, image_size=CROP,
                                                           stored_size=STORED, ten_crop=True))
        assert ten.shape == (6, 10, CROP, CROP, 3)
        assert len(pipeline.read_labels("tfds:imagenette")) == 10


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
