"""Tests for tools/benchmark.py: the JSON it prints (its numbers are timings, so only their sanity is checked)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_tf import prepare
from tests import imagenet_like

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _benchmark(*args):
    return subprocess.run([sys.executable, "tools/benchmark.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def test_pipeline_subcommand_prints_one_json_line(tmp_path):
    raw, prepared, photos = tmp_path / "raw", tmp_path / "prepared", tmp_path / "photos"
    imagenet_like.write_ilsvrc(str(raw))
    prepare.prepare(str(raw), str(prepared), stored_size=32, images_per_shard=8)
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(imagenet_like.smooth_image(rng, 60, 90)).save(photos / f"photo_{i}.JPEG")
    result = _benchmark("pipeline", f"--data_dir={prepared}", f"--raw_dir={photos}", "--threads=1",
                        "--batch_size=4", "--image_size=24", "--num_batches=3", "--warmup_batches=1", "--repeats=2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["subcommand"] == "pipeline" and report["threads"] == 1 and report["batch_size"] == 4
    assert len(report["runs"]) == len(report["naive_runs"]) == 2
    assert report["images_per_sec"] == pytest.approx(float(np.median(report["runs"])), abs=0.1)
    assert report["images_per_sec_per_thread"] == report["images_per_sec"] > 0
    assert report["naive_images_per_sec"] > 0 and report["speedup_vs_naive"] > 0


def test_unknown_subcommand_and_missing_data_dir_fail_cleanly():
    for args, message in ((["nonsense"], "subcommand"), (["pipeline"], "--data_dir")):
        result = _benchmark(*args)
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
