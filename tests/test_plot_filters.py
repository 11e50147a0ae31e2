"""Tests of tools/plot_filters.py on a bvlc-layout .npy file and on .keras checkpoints of both layouts."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from alexnet_tf.analysis import figure3
from alexnet_tf.model import build_alexnet, conv1_kernel
from alexnet_tf.model.npy_weights import save_npy_weights
from tools import plot_filters

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """A narrow Caffe-layout network and its weights as a bvlc_alexnet-layout .npy file."""
    model = build_alexnet(num_classes=10, towers=1, groups=2, width=0.125, image_size=67, init="he", seed=0)
    path = str(tmp_path_factory.mktemp("npy") / "bvlc_alexnet.npy")
    save_npy_weights(model, path)
    return path, conv1_kernel(model)


def _read_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_npy_checkpoint_gives_one_block(grouped, tmp_path):
    path, kernel = grouped
    loaded, towers = plot_filters.load_conv1_kernel(path)
    np.testing.assert_array_equal(loaded, kernel)
    assert towers == 1
    out = str(tmp_path / "figures" / "conv1.png")
    assert plot_filters.write_filter_png(kernel, out, towers, scale=3) == (3 * 23, 3 * 71)
    np.testing.assert_array_equal(_read_png(out), figure3.upscale(figure3.filter_grid(kernel), 3))


def test_two_tower_checkpoint_is_laid_out_as_figure_3(tmp_path):
    model = build_alexnet(num_classes=10, towers=2, width=0.125, image_size=67, init="he", seed=0)
    path = str(tmp_path / "towers.keras")
    model.save(path)
    kernel, towers = plot_filters.load_conv1_kernel(path)
    assert towers == 2 and kernel.shape == (11, 11, 3, 12)
    out = str(tmp_path / "towers.png")
    plot_filters.write_filter_png(kernel, out, towers, scale=2)
    np.testing.assert_array_equal(_read_png(out), figure3.figure3(conv1_kernel(model), 2, 2))


def _run(args, module):
    command = [sys.executable, "-m", "tools.plot_filters"] if module else [sys.executable, "tools/plot_filters.py"]
    return subprocess.run(command + args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_command_line_as_a_module(grouped, tmp_path):
    path, kernel = grouped
    out = tmp_path / "conv1.png"
    result = _run([f"--checkpoint={path}", f"--out={out}", "--scale=2"], module=True)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    np.testing.assert_array_equal(_read_png(out), figure3.upscale(figure3.filter_grid(kernel), 2))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint=missing.npy", "--out=x.png"], "plot_filters: error: missing.npy"),
        (["--checkpoint=CHECKPOINT", "--out=x.png", "--scale=0"], "--scale=0: 0 is not a positive integer"),
        (["--checkpoint=CHECKPOINT", "--out=x.jpg"], "--out must name a .png file"),
    ],
)
@pytest.mark.slow
def test_bad_flags_give_one_line_and_no_traceback(grouped, args, message):
    result = _run([a.replace("CHECKPOINT", grouped[0]) for a in args], module=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
