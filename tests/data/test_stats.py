"""Tests for alexnet_tf/data/stats.py and tools/compute_stats.py."""

import os
import subprocess
import sys

import numpy as np
import pytest

from alexnet_tf.data import prepare, stats
from alexnet_tf.errors import ConfigError, DataError
from tests import imagenet_like

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_compute_stats_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 6, 6, 3)).astype(np.uint8)
    images[..., 1] = images[..., 0] // 2 + rng.integers(0, 100, (10, 6, 6))  # Correlated channels.
    result = stats.compute_stats([images[:4], images[4:]])
    np.testing.assert_allclose(result.mean_image, images.mean(axis=0), rtol=1e-6)
    covariance = np.cov(images.reshape(-1, 3).T / 255.0, bias=True)
    np.testing.assert_allclose(result.eigvec @ np.diag(result.eigval) @ result.eigvec.T, covariance, atol=1e-6)
    assert list(result.eigval) == sorted(result.eigval, reverse=True)
    np.testing.assert_allclose(result.eigvec.T @ result.eigvec, np.eye(3), atol=1e-6)
    with pytest.raises(DataError, match="no images"):
        stats.compute_stats([])


def test_default_stats_are_the_published_imagenet_values():
    default = stats.default_stats(8)
    assert default.mean_image.shape == (8, 8, 3)
    np.testing.assert_allclose(default.mean_rgb, [123.68, 116.779, 103.939], rtol=1e-7)
    vectors = np.asarray(stats.IMAGENET_EIGVEC)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=2e-3)  # Published to 4 decimals.


def test_save_load_and_resolution_order(tmp_path):
    custom = stats.Stats(np.full((8, 8, 3), 50, np.float32), np.array([3, 2, 1], np.float32),
                         np.eye(3, dtype=np.float32))
    explicit = tmp_path / "explicit.npz"
    stats.save_stats(str(explicit), custom)
    loaded = stats.load_stats(str(explicit))
    for field in ("mean_image", "eigval", "eigvec"):
        np.testing.assert_array_equal(getattr(loaded, field), getattr(custom, field))
    found = str(tmp_path / "found.npz")
    stats.save_stats(found, stats.Stats(np.full((8, 8, 3), 70, np.float32), custom.eigval, custom.eigvec))
    assert stats.resolve_stats("DIR", None, found, 8).mean_rgb[0] == 70
    assert stats.resolve_stats("DIR", str(explicit), found, 8).mean_rgb[0] == 50
    assert stats.resolve_stats("DIR", stats.PUBLISHED, found, 8).mean_rgb[0] == pytest.approx(123.68)
    with pytest.raises(DataError, match="recompute"):
        stats.resolve_stats("DIR", None, found, 16)
    # No silent fallback to the published values.
    with pytest.raises(DataError, match="DIR: no stats.npz .* python tools/compute_stats.py --data_dir=DIR;"):
        stats.resolve_stats("DIR", None, None, 8)
    with pytest.raises(ConfigError, match="no data set and no stats_path"):
        stats.resolve_stats(None, None, None, 8)
    with pytest.raises(DataError, match="no such stats file"):
        stats.load_stats(str(tmp_path / "absent.npz"))


def test_save_and_load_on_ram_filesystem():
    custom = stats.Stats(np.full((4, 4, 3), 9, np.float32), np.array([3, 2, 1], np.float32),
                         np.eye(3, dtype=np.float32))
    stats.save_stats("ram://stats_test/stats.npz", custom)
    np.testing.assert_array_equal(stats.load_stats("ram://stats_test/stats.npz").mean_image, custom.mean_image)


@pytest.mark.slow
def test_compute_stats_tool_writes_the_file_the_pipeline_reads(tmp_path):
    raw, prepared = str(tmp_path / "raw"), str(tmp_path / "prepared")
    imagenet_like.write_ilsvrc(raw)
    prepare.prepare(raw, prepared, stored_size=16, images_per_shard=8)
    os.remove(os.path.join(prepared, stats.STATS_FILENAME))  # Written by the preparation; the tool writes it again.
    result = subprocess.run([sys.executable, "tools/compute_stats.py", f"--data_dir={prepared}", "--max_images=10"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    written = stats.load_stats(os.path.join(prepared, stats.STATS_FILENAME))
    assert written.mean_image.shape == (16, 16, 3) and 40 < written.mean_rgb.mean() < 200
    assert written.eigval[0] > written.eigval[1] > written.eigval[2] > 0
    result = subprocess.run([sys.executable, "tools/compute_stats.py", f"--data_dir={tmp_path / 'absent'}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "--data_dir" in result.stderr and "Traceback" not in result.stderr
    # A tfds: source is no folder: the tool asks for --output instead of writing tfds:NAME/stats.npz.tmp.
    result = subprocess.run([sys.executable, "tools/compute_stats.py", "--data_dir=tfds:imagenette"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "compute_stats: error: --data_dir=tfds:imagenette is not a folder to write stats.npz to: give --output=PATH, "
        "then train with --stats_path=PATH")


def test_preparation_writes_the_training_sets_stats(tmp_path):
    raw, prepared = str(tmp_path / "raw"), str(tmp_path / "prepared")
    imagenet_like.write_ilsvrc(raw)
    prepare.prepare(raw, prepared, stored_size=16, images_per_shard=8)
    from alexnet_tf.data import dataset_stats

    written = stats.load_stats(os.path.join(prepared, stats.STATS_FILENAME))
    again = dataset_stats.compute_dataset_stats(prepared)
    np.testing.assert_allclose(written.mean_image, again.mean_image, atol=1e-4)
    np.testing.assert_allclose(written.eigval, again.eigval, rtol=1e-4)
    assert not np.allclose(written.mean_rgb, stats.IMAGENET_MEAN_RGB, atol=5)  # Its own, not ImageNet's.


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
