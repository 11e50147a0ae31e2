"""Tests of tools/plot_filters.py on a bvlc-layout .npy file and on small .keras models."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from alexnet_tf import summaries
from tools import plot_filters

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _npy_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(11, 11, 3, 96)).astype(np.float32)
    weights = {"conv1": [kernel, np.zeros(96, np.float32)], "conv2": [np.zeros((5, 5, 48, 256)), np.zeros(256)]}
    path = str(tmp_path / "bvlc_alexnet.npy")
    np.save(path, weights, allow_pickle=True)
    return path, kernel


def _read_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_npy_checkpoint_gives_the_summary_grid(tmp_path):
    path, kernel = _npy_checkpoint(tmp_path)
    np.testing.assert_array_equal(plot_filters.load_conv1_kernel(path), kernel)
    out = str(tmp_path / "figures" / "conv1.png")
    assert plot_filters.write_filter_png(kernel, out, scale=3) == (3 * 95, 3 * 143)
    np.testing.assert_array_equal(_read_png(out), summaries.upscale(summaries.filter_grid(kernel), 3))


def test_keras_checkpoint_with_a_conv1_layer(tmp_path):
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 11, strides=4, name="conv1")])
    path = str(tmp_path / "model.keras")
    model.save(path)
    np.testing.assert_array_equal(plot_filters.load_conv1_kernel(path), model.get_layer("conv1").kernel.numpy())


def test_keras_checkpoint_with_two_towers_concatenates_a_then_b(tmp_path):
    inputs = keras.Input((32, 32, 3))
    towers = [keras.layers.Conv2D(4, 11, strides=4, name=f"conv1{s}")(inputs) for s in "ab"]
    model = keras.Model(inputs, keras.layers.Concatenate()(towers))
    path = str(tmp_path / "towers.keras")
    model.save(path)
    kernel = plot_filters.load_conv1_kernel(path)
    assert kernel.shape == (11, 11, 3, 8)
    np.testing.assert_array_equal(kernel[..., :4], model.get_layer("conv1a").kernel.numpy())
    np.testing.assert_array_equal(kernel[..., 4:], model.get_layer("conv1b").kernel.numpy())


def test_npy_without_conv1_is_refused(tmp_path):
    path = str(tmp_path / "other.npy")
    np.save(path, {"fc6": [np.zeros((2, 2)), np.zeros(2)]}, allow_pickle=True)
    with pytest.raises(ValueError, match="no 'conv1'"):
        plot_filters.load_conv1_kernel(path)


def _run(args, module):
    command = [sys.executable, "-m", "tools.plot_filters"] if module else [sys.executable, "tools/plot_filters.py"]
    return subprocess.run(command + args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_command_line_as_a_module(tmp_path):
    path, kernel = _npy_checkpoint(tmp_path)
    out = tmp_path / "conv1.png"
    result = _run([f"--checkpoint={path}", f"--out={out}", "--scale=2"], module=True)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    np.testing.assert_array_equal(_read_png(out), summaries.upscale(summaries.filter_grid(kernel), 2))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint=missing.npy", "--out=x.png"], "--checkpoint must be an existing .keras or .npy file"),
        (["--checkpoint=CHECKPOINT", "--out=x.png", "--scale=0"], "--scale must be >= 1"),
        (["--checkpoint=CHECKPOINT", "--out=x.jpg"], "--out must name a .png file"),
    ],
)
def test_bad_flags_give_one_line_and_no_traceback(tmp_path, args, message):
    path, _ = _npy_checkpoint(tmp_path)
    result = _run([a.replace("CHECKPOINT", path) for a in args], module=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
