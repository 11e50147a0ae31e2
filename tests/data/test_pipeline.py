"""Tests for alexnet_tf/data/pipeline.py and sources.py on a tiny ILSVRC-like folder, prepared here."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf.data import ilsvrc, pipeline, prepare, records, sources, stats
from alexnet_tf.data.pipeline import DataConfig
from alexnet_tf.errors import ConfigError, DataError
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
             tf.data.TFRecordDataset(files).map(records.parse_example).as_numpy_iterator()]
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def _batches(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zip(*dataset.as_numpy_iterator())
    return np.concatenate(images), np.concatenate(labels)


def _plain_train(prepared: str, **kwargs) -> tf.data.Dataset:
    """Training batches with nothing but the crop and the mirror: raw pixel values."""
    return pipeline.make_train_dataset(DataConfig(prepared, mean="none", pca_noise=False), BATCH, CROP, **kwargs)


def test_train_batches_shapes_dtypes_labels_and_ranges(data):
    _, prepared, _ = data
    batches = list(pipeline.make_train_dataset(DataConfig(prepared), BATCH, CROP).as_numpy_iterator())
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
        dataset = pipeline.make_train_dataset(DataConfig(prepared), BATCH, CROP, seed=seed, deterministic=True)
        return [_batches(dataset) for _ in range(2)]

    first, again, other = two_epochs(7), two_epochs(7), two_epochs(8)
    for epoch in range(2):
        np.testing.assert_array_equal(first[epoch][0], again[epoch][0])
        np.testing.assert_array_equal(first[epoch][1], again[epoch][1])
    assert not np.array_equal(first[0][0], first[1][0])  # Each pass reshuffles and redraws the augmentation.
    assert not np.array_equal(first[0][0], other[0][0])


def test_pca_noise_shifts_every_pixel_of_an_image_by_one_rgb_vector(data):
    _, prepared, _ = data
    common = dict(seed=3, deterministic=True)
    noisy, noisy_labels = _batches(pipeline.make_train_dataset(DataConfig(prepared), BATCH, CROP, **common))
    clean, clean_labels = _batches(pipeline.make_train_dataset(DataConfig(prepared, pca_noise=False), BATCH, CROP,
                                                               **common))
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
    dataset = pipeline.make_eval_dataset(DataConfig(prepared, stats_path=str(tmp_path / "stats.npz")), BATCH, CROP)
    batches = list(dataset.as_numpy_iterator())
    assert [len(labels) for _, labels in batches] == [4, 2]
    images, labels = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    stored, stored_labels = _stored_images(prepared, "validation")
    assert labels.tolist() == stored_labels.tolist() == ilsvrc.list_split(raw, "validation").labels
    margin = (STORED - CROP) // 2
    expected = stored[:, margin:margin + CROP, margin:margin + CROP] - mean_image[margin:margin + CROP,
                                                                                  margin:margin + CROP]
    np.testing.assert_allclose(images[:, :, 1:-1], expected[:, :, 1:-1], atol=1e-4)


def test_ten_crops_channel_mean_and_bgr(data):
    _, prepared, _ = data
    common = dict(mean="channel", stats_path=stats.PUBLISHED)
    centre, _ = _batches(pipeline.make_eval_dataset(DataConfig(prepared, **common), BATCH, CROP))
    ten, labels = _batches(pipeline.make_eval_dataset(DataConfig(prepared, **common), BATCH, CROP, ten_crop=True))
    assert ten.shape == (NUM_VAL, 10, CROP, CROP, 3) and labels.shape == (NUM_VAL,)
    np.testing.assert_allclose(ten[:, 4, :, 1:-1], centre[:, :, 1:-1], atol=1e-4)
    np.testing.assert_array_equal(ten[:, 9], ten[:, 4, :, ::-1])
    stored, _ = _stored_images(prepared, "validation")
    # Asked for by name: the published ImageNet per-channel means.
    np.testing.assert_allclose(ten[:, 0], stored[:, :CROP, :CROP] - np.float32(stats.IMAGENET_MEAN_RGB), atol=1e-4)
    bgr, _ = _batches(pipeline.make_eval_dataset(DataConfig(prepared, channel_order="BGR", **common), BATCH, CROP))
    np.testing.assert_array_equal(bgr, centre[..., ::-1])


def test_labels_and_counts(data):
    raw, prepared, odd = data
    expected = list(zip(imagenet_like.WNIDS, imagenet_like.NAMES))
    assert sources.open_source(prepared).labels() == expected
    assert sources.open_source(raw, names_file=odd["names"]).labels() == expected
    assert sources.open_source(raw).class_names() == list(imagenet_like.WNIDS)
    prepared_source = sources.open_source(prepared)
    assert isinstance(prepared_source, sources.PreparedSource) and prepared_source.stored_size == STORED
    assert prepared_source.num_classes == 3 and prepared_source.class_names() == list(imagenet_like.NAMES)
    assert prepared_source.num_examples("train") == NUM_TRAIN
    assert prepared_source.num_examples("validation") == NUM_VAL
    assert prepared_source.has_split("validation") and not prepared_source.has_split("test")
    raw_source = sources.open_source(raw)
    assert isinstance(raw_source, sources.IlsvrcSource) and raw_source.stored_size is None
    assert raw_source.num_examples("train") == NUM_TRAIN + 1  # The truncated file is only listed.


def test_clear_errors(data, tmp_path):
    _, prepared, _ = data
    for missing in (str(tmp_path / "absent"), str(tmp_path)):
        with pytest.raises(DataError, match="python tools/prepare_imagenet.py --input_dir="):
            pipeline.make_train_dataset(DataConfig(missing), BATCH)
    with pytest.raises(ConfigError, match="image_size=40"):
        pipeline.make_train_dataset(DataConfig(prepared), BATCH, 40)
    with pytest.raises(DataError, match="no complete batch"):
        pipeline.make_train_dataset(DataConfig(prepared), NUM_TRAIN + 1, CROP)
    with pytest.raises(ConfigError, match="mean="):
        DataConfig(prepared, mean="pixel")
    with pytest.raises(ConfigError, match="mean_rgb"):
        DataConfig(prepared, mean="image", mean_rgb=(1, 2, 3))
    with pytest.raises(ConfigError, match="channel_order"):
        DataConfig(prepared, channel_order="GBR")
    with pytest.raises(DataError, match="no test split"):
        pipeline.make_eval_dataset(DataConfig(prepared), BATCH, CROP, split="test")


def test_stats_are_the_prepared_sets_own_and_never_a_silent_fallback(data, tmp_path):
    raw, prepared, _ = data
    # Preparation's last step: the training set's mean image, as subtracted by the pipeline.
    own = stats.load_stats(os.path.join(prepared, stats.STATS_FILENAME))
    stored, _ = _stored_images(prepared, "train")
    np.testing.assert_allclose(own.mean_image, stored.astype(np.float64).mean(axis=0), atol=1e-3)
    centre, _ = _batches(pipeline.make_eval_dataset(DataConfig(prepared), BATCH, CROP))
    plain, _ = _batches(pipeline.make_eval_dataset(DataConfig(prepared, mean="none"), BATCH, CROP))
    margin = (STORED - CROP) // 2
    np.testing.assert_allclose(centre, plain - own.mean_image[margin:margin + CROP, margin:margin + CROP], atol=1e-3)
    # An ILSVRC folder has no stats: the paper's mean image or PCA noise stop with the command that computes them.
    raw_config = dict(stored_size=STORED)
    for config in (DataConfig(raw, **raw_config), DataConfig(raw, mean="none", **raw_config),
                   DataConfig(raw, mean="channel", pca_noise=False, **raw_config)):
        with pytest.raises(DataError, match=f"python tools/compute_stats.py --data_dir={raw}"):
            pipeline.make_train_dataset(config, BATCH, CROP)
    with pytest.raises(DataError, match="compute_stats.py"):
        pipeline.make_eval_dataset(DataConfig(raw, **raw_config), BATCH, CROP)
    with pytest.raises(ConfigError, match="stats_path"):
        pipeline.make_eval_transform(DataConfig(None), CROP)
    # Asked for by name, the published values; per-channel values need no stats at all.
    published, _ = _batches(pipeline.make_eval_dataset(DataConfig(raw, stats_path="imagenet", **raw_config),
                                                       BATCH, CROP))
    direct, _ = _batches(pipeline.make_eval_dataset(DataConfig(raw, mean="none", **raw_config), BATCH, CROP))
    np.testing.assert_allclose(published, direct - np.float32(stats.IMAGENET_MEAN_RGB), atol=1e-3)
    rgb, _ = _batches(pipeline.make_eval_dataset(DataConfig(raw, mean="channel", mean_rgb=(10, 20, 30),
                                                            **raw_config), BATCH, CROP))
    np.testing.assert_allclose(rgb, direct - np.float32([10, 20, 30]), atol=1e-3)


def test_only_the_shards_dataset_info_names_are_read(data, tmp_path):
    _, prepared, _ = data
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(prepared):
        if not os.path.isdir(os.path.join(prepared, name)):
            tf.io.gfile.copy(os.path.join(prepared, name), str(copy / name))
    # A shard of another run (another shard count) left beside this run's.
    tf.io.gfile.copy(str(copy / records.shard_filename("train", 0, 4)),
                     str(copy / records.shard_filename("train", 0, 9)))
    images, _ = _batches(pipeline.make_eval_dataset(DataConfig(str(copy)), BATCH, CROP, split="train"))
    assert len(images) == NUM_TRAIN
    os.remove(copy / records.shard_filename("train", 3, 4))
    with pytest.raises(DataError, match="names 4 train shards, 3 are there"):
        pipeline.make_eval_dataset(DataConfig(str(copy)), BATCH, CROP, split="train")


def test_ilsvrc_folder_directly_skips_undecodable_files_and_matches_prepared(data):
    raw, prepared, _ = data
    train = pipeline.make_train_dataset(DataConfig(raw, stored_size=STORED, stats_path=stats.PUBLISHED), BATCH, CROP,
                                        seed=1)
    images, labels = _batches(train)
    assert images.shape == (NUM_TRAIN, CROP, CROP, 3)  # 17 files, the truncated one skipped: 4 full batches.
    direct, direct_labels = _batches(pipeline.make_eval_dataset(DataConfig(raw, mean="none", stored_size=STORED),
                                                                BATCH, CROP))
    stored, stored_labels = _batches(pipeline.make_eval_dataset(DataConfig(prepared, mean="none"), BATCH, CROP))
    np.testing.assert_array_equal(direct_labels, stored_labels)
    # Same geometry; they differ only by the prepared copy's JPEG re-encoding and resampler.
    assert np.abs(direct - stored).mean() < 3


def test_tfds_source():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        config = DataConfig("tfds:imagenette", stored_size=STORED, stats_path=stats.PUBLISHED)
        images, labels = _batches(pipeline.make_train_dataset(config, 2, CROP))
        assert images.shape == (6, CROP, CROP, 3) and labels.dtype == np.int32 and labels.max() < 10
        ten, _ = _batches(pipeline.make_eval_dataset(config, 4, CROP, ten_crop=True))
        assert ten.shape == (6, 10, CROP, CROP, 3)
        assert sources.open_source("tfds:imagenette").num_classes == 10
        with pytest.raises(DataError, match="--data_dir=tfds:imagenette --output=PATH"):
            pipeline.make_train_dataset(DataConfig("tfds:imagenette", stored_size=STORED), 2, CROP)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
