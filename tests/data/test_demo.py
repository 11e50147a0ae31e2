"""Tests of alexnet_tf.data.demo: layout, determinism, decodability and learnability of the demo data set."""

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_tf import errors
from alexnet_tf.data import demo, stats

SMALL = dict(num_classes=3, train_per_class=4, val_per_class=2, size=32, seed=1)


def _files(root):
    """{relative path: bytes} of every file under root."""
    contents = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                contents[os.path.relpath(path, root)] = f.read()
    return contents


def test_layout_counts_and_names(tmp_path):
    root = tmp_path / "demo"
    demo.generate(str(root), **SMALL)
    wnids = ["n90000000", "n90000001", "n90000002"]
    assert sorted(os.listdir(root)) == ["synset_words.txt", "train", "val"]
    for split, count in [("train", 4), ("val", 2)]:
        assert sorted(os.listdir(root / split)) == wnids
        for wnid in wnids:
            assert sorted(os.listdir(root / split / wnid)) == sorted(f"{wnid}_{i}.JPEG" for i in range(count))
    assert (root / "synset_words.txt").read_text().splitlines() == [
        "n90000000 vertical grating",
        "n90000001 horizontal grating",
        "n90000002 diagonal grating",
    ]
    assert not (tmp_path / "demo.partial").exists()


def test_the_transfer_task_holds_only_classes_the_demo_never_saw(tmp_path):
    assert set(demo.TRANSFER_CLASSES).isdisjoint(range(demo.DEFAULT_NUM_CLASSES))
    root = tmp_path / "transfer"
    demo.generate(str(root), **{**SMALL, "num_classes": len(demo.TRANSFER_CLASSES),
                                "first_class": demo.TRANSFER_CLASSES[0]})
    assert sorted(os.listdir(root / "train")) == [demo.wnid(c) for c in demo.TRANSFER_CLASSES]
    assert [line.split(" ", 1)[1] for line in (root / "synset_words.txt").read_text().splitlines()] == [
        "random dots", "polka dots", "triangle", "plaid", "square outline"]


def test_images_are_rgb_jpegs_of_the_requested_size(tmp_path):
    demo.generate(str(tmp_path / "demo"), **SMALL)
    paths = [p for p in _files(tmp_path / "demo") if p.endswith(".JPEG")]
    assert len(paths) == 3 * (4 + 2)
    for path in paths:
        with Image.open(tmp_path / "demo" / path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 32))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    demo.generate(str(tmp_path / "a"), **SMALL)
    demo.generate(str(tmp_path / "b"), **SMALL)
    demo.generate(str(tmp_path / "c"), **{**SMALL, "seed": 2})
    first, second, other = (_files(tmp_path / name) for name in "abc")
    assert first == second
    assert first.keys() == other.keys()
    assert all(first[p] != other[p] for p in first if p.endswith(".JPEG"))


def test_every_class_draws_varied_images_in_range():
    for class_index in range(len(demo.CLASS_NAMES)):
        images = [demo.draw(class_index, np.random.default_rng([7, i]), 40) for i in range(2)]
        assert images[0].shape == (40, 40, 3) and images[0].dtype == np.uint8
        assert not np.array_equal(images[0], images[1])
        assert images[0].std() > 10  # Not a flat image: there is a pattern, not only noise.


def test_existing_non_empty_root_is_refused_but_empty_root_is_filled(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(errors.ConfigError, match="full exists and is not empty"):
        demo.generate(str(tmp_path / "full"), **SMALL)
    (tmp_path / "empty").mkdir()
    demo.generate(str(tmp_path / "empty"), **SMALL)
    assert (tmp_path / "empty" / "synset_words.txt").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 1}, r"num_classes must be in \[2, 15\] from class 0, got 1"),
    ({"num_classes": 16}, r"num_classes must be in \[2, 15\] from class 0, got 16"),
    ({"num_classes": 6, "first_class": 10}, r"num_classes must be in \[2, 5\] from class 10, got 6"),
    ({"train_per_class": 0}, "images per class must be >= 1, got 0 and"),
    ({"val_per_class": 0}, "images per class must be >= 1, got .* and 0"),
    ({"size": 8}, "size must be >= 16 pixels, got 8"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(errors.ConfigError, match=message):
        demo.generate(str(tmp_path / "demo"), **{**SMALL, **kwargs})


def _load(root, split):
    images, labels = [], []
    for label, wnid in enumerate(sorted(os.listdir(root / split))):
        for name in sorted(os.listdir(root / split / wnid)):
            with Image.open(root / split / wnid / name) as image:
                images.append(np.asarray(image, np.float64))
            labels.append(label)
    return np.stack(images), np.array(labels)


def _spectrum_features(images):
    """Log share of the grey image's power in 8 radial x 8 orientation bins of its 2-D spectrum."""
    grey = images.mean(axis=-1)
    grey -= grey.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fftshift(np.fft.fft2(grey), axes=(1, 2))) ** 2
    size = grey.shape[1]
    fy, fx = np.mgrid[:size, :size] - size // 2
    radial = np.minimum((np.hypot(fx, fy) / (size / 2) * 8).astype(int), 7)
    orientation = (np.mod(np.arctan2(fy, fx), np.pi) / np.pi * 8).astype(int) % 8
    bins = (radial * 8 + orientation).ravel()
    energy = np.stack([np.bincount(bins, weights=p.ravel(), minlength=64) for p in power])
    return np.log(energy / energy.sum(axis=1, keepdims=True) + 1e-6)


def _nearest_class_mean_accuracy(train_features, train_labels, val_features, val_labels):
    mean, std = train_features.mean(axis=0), train_features.std(axis=0) + 1e-9
    train_features, val_features = (train_features - mean) / std, (val_features - mean) / std
    centres = np.stack([train_features[train_labels == c].mean(axis=0) for c in np.unique(train_labels)])
    distances = ((val_features[:, np.newaxis] - centres[np.newaxis]) ** 2).sum(axis=-1)
    return float(np.mean(np.argmin(distances, axis=1) == val_labels))


def test_colour_pairs_differ_mostly_in_brightness_as_in_photographs():
    # ImageNet's first RGB eigenvector carries 90% of the pixel variance; uniformly drawn pairs put only
    # about a third of their difference on it, and conv1 then learned rainbow stripes no Gabor fits.
    rng = np.random.default_rng(0)
    pairs = np.array([demo._colour_pair(rng) for _ in range(2000)])
    assert pairs.min() >= 0.0 and pairs.max() <= 255.0
    difference = pairs[:, 1] - pairs[:, 0]
    length = np.linalg.norm(difference, axis=1)
    assert length.min() >= demo._MIN_COLOUR_DISTANCE and length.max() <= demo._MAX_COLOUR_DISTANCE
    first_axis = np.asarray(stats.IMAGENET_EIGVEC)[:, 0]
    share = np.mean((difference @ first_axis) ** 2) / np.mean(length**2)
    assert 0.6 < share < 0.95, share
    # Neither colour comes first on purpose: the difference along the axis is symmetric about 0.
    assert abs(np.mean(np.sign(difference @ first_axis))) < 0.1


def test_classes_differ_by_pattern_not_by_colour(tmp_path):
    root = tmp_path / "demo"
    demo.generate(str(root), num_classes=10, train_per_class=40, val_per_class=20, size=48, seed=0)
    train_images, train_labels = _load(root, "train")
    val_images, val_labels = _load(root, "val")
    # Chance is 0.1. A nearest-class-mean on the coarse spectrum separates many classes, though not all:
    # the diagonal class has two modes, and an edge, a blob and a cross differ by shape more than spectrum...
    spectral = _nearest_class_mean_accuracy(
        _spectrum_features(train_images), train_labels, _spectrum_features(val_images), val_labels
    )
    assert spectral > 0.45
    # ...while the mean colour of an image says next to nothing about its class.
    colour = _nearest_class_mean_accuracy(
        train_images.mean(axis=(1, 2)), train_labels, val_images.mean(axis=(1, 2)), val_labels
    )
    assert colour < 0.2


@pytest.mark.slow
def test_ensure_demo_data_generates_and_prepares_once(tmp_path, monkeypatch):
    from alexnet_tf.data import prepare, sources

    small = {k: v for k, v in SMALL.items() if k != "seed"}
    original = demo.generate
    monkeypatch.setattr(demo, "generate", lambda root: original(root, **small))
    data_dir = str(tmp_path / "demo")
    demo.ensure_demo_data(data_dir)
    source = sources.open_source(data_dir)
    assert isinstance(source, sources.PreparedSource) and source.stored_size == demo.DEFAULT_SIZE
    assert source.class_names() == list(demo.CLASS_NAMES[:3]) and source.num_examples("train") == 12
    assert os.path.exists(os.path.join(data_dir, "stats.npz"))
    monkeypatch.setattr(prepare, "prepare", lambda *a, **k: pytest.fail("prepared again"))
    demo.ensure_demo_data(data_dir)  # Already prepared: nothing to do.
    # Images of an older drawing are named, not trained on: the demo's numbers are this drawing's.
    with open(os.path.join(data_dir, demo.VERSION_FILE), "w") as f:
        json.dump({"version": demo.VERSION - 1}, f)
    with pytest.raises(errors.DataError, match=f"older alexnet_tf \\(version {demo.VERSION - 1}, this one draws "
                                               f"version {demo.VERSION}\\): delete it"):
        demo.ensure_demo_data(data_dir)
    os.remove(os.path.join(data_dir, demo.VERSION_FILE))  # As in every folder written before the version.
    with pytest.raises(errors.DataError, match="version None"):
        demo.ensure_demo_data(data_dir)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
