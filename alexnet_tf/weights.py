"""Reads and writes weights in the widely shared `bvlc_alexnet.npy` layout.

The layout (Caffe's bvlc_alexnet converted to numpy) is `np.save` of a dict
`{"conv1": [W, b], ..., "conv5": [W, b], "fc6": [W, b], "fc7": [W, b], "fc8": [W, b]}`:

- conv W is (kh, kw, in_channels / groups, out_channels), Keras' own kernel layout. conv2, conv4
  and conv5 are grouped (groups=2); group 0 holds the first half of the output channels and
  reads the first half of the input channels. Group 0 is the paper's tower a (the first GPU).
- fc W is (in, out). fc6's rows are in (6, 6, 256) height-width-channel order, channels 0-127
  coming from tower a: the order of Keras' `Flatten` after concatenating [a, b].

Into the three variants of `build_alexnet`:
- `towers=1, groups=2` (Caffe's network): every array as it is.
- `towers=2`: each conv layer's output channels split in half, the first half to tower a. This
  includes conv3, whose two halves each read all 256 channels.
- `towers=1, groups=1`: the grouped kernels of conv2, conv4 and conv5 become block-diagonal dense
  kernels (zeros where a group does not read), which computes exactly the grouped function.
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping

import keras
import numpy as np

from alexnet_tf.model import TOWER_SUFFIXES, inner_layer

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
GROUPED_LAYERS = ("conv2", "conv4", "conv5")  # groups=2 in Caffe's bvlc_alexnet.


def read_npy(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Reads a bvlc_alexnet-layout `.npy` file (saved from Python 2 or 3) into a dict."""
    weights = np.load(path, allow_pickle=True, encoding="latin1").item()
    if not isinstance(weights, dict):
        raise ValueError(f"{path}: expected a dict of layer name -> [W, b], got {type(weights)}")
    return {name: [np.asarray(a) for a in value] for name, value in weights.items()}


def load_npy_weights(
    model: keras.Model,
    weights: str | os.PathLike | Mapping[str, list[np.ndarray]],
    skip: Iterable[str] = (),
) -> None:
    """Assigns bvlc_alexnet-layout weights to a model from `build_alexnet`, any variant.

    Args:
        model: the model.
        weights: a path to a `.npy` file, or the dict itself.
        skip: layer names to leave as they are, e.g. ("fc8",) to fine-tune on new classes.

    Raises:
        ValueError: a layer is missing from the file, or an array's shape does not fit the
            model (the message names the layer and both shapes). Nothing is assigned then.
    """
    if not isinstance(weights, Mapping):
        weights = read_npy(weights)
    names = [n for n in LAYERS if n not in set(skip)]
    missing = [n for n in names if n not in weights]
    if missing:
        raise ValueError(f"the weights have no layer {', '.join(missing)}")
    # Check every shape before assigning anything, so a bad file leaves the model untouched.
    assignments = [
        (variable, array)
        for name in names
        for variable, array in _targets(model, name, *weights[name])
    ]
    for variable, array in assignments:
        variable.assign(array.astype(variable.dtype))


def npy_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """A model's weights in the bvlc_alexnet layout (the inverse of `load_npy_weights`).

    A dense single-stream model gives its dense kernels, which only a dense model reads back:
    a grouped layout cannot express them.
    """
    out = {}
    for name in LAYERS:
        split = name.startswith("conv") and _is_two_tower(model)
        layers = [inner_layer(model, name + s) for s in (TOWER_SUFFIXES if split else ("",))]
        out[name] = [
            np.concatenate([keras.ops.convert_to_numpy(getattr(l, attr)) for l in layers], -1)
            for attr in ("kernel", "bias")
        ]
    return out


def save_npy_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Writes `npy_weights(model)` to a `.npy` file."""
    np.save(path, npy_weights(model), allow_pickle=True)


def _is_two_tower(model: keras.Model) -> bool:
    return any(layer.name == "conv1a" for layer in model.layers)


def _targets(model: keras.Model, name: str, kernel: np.ndarray, bias: np.ndarray) -> list:
    """(variable, array) pairs that put one layer of the file into the model, shapes checked."""
    if name.startswith("conv") and _is_two_tower(model):
        layers = [inner_layer(model, name + s) for s in TOWER_SUFFIXES]
        shape = tuple(layers[0].kernel.shape)
        _check(name, kernel, shape[:-1] + (2 * shape[-1],))
        _check(name + " bias", bias, (2 * shape[-1],))
        halves = zip(layers, np.split(kernel, 2, axis=-1), np.split(bias, 2))
        return [pair for layer, k, b in halves for pair in ((layer.kernel, k), (layer.bias, b))]
    layer = inner_layer(model, name)
    if name in GROUPED_LAYERS and layer.groups == 1 and 2 * kernel.shape[2] == layer.kernel.shape[2]:
        kernel = _block_diagonal(kernel, groups=2)
    _check(name, kernel, tuple(layer.kernel.shape))
    _check(name + " bias", bias, tuple(layer.bias.shape))
    return [(layer.kernel, kernel), (layer.bias, bias)]


def _block_diagonal(kernel: np.ndarray, groups: int) -> np.ndarray:
    """A dense kernel (kh, kw, in * groups, out) computing the grouped convolution `kernel`."""
    kh, kw, group_in, out = kernel.shape
    group_out = out // groups
    dense = np.zeros((kh, kw, group_in * groups, out), kernel.dtype)
    for g in range(groups):
        outs = slice(g * group_out, (g + 1) * group_out)
        dense[:, :, g * group_in : (g + 1) * group_in, outs] = kernel[..., outs]
    return dense


def _check(name: str, array: np.ndarray, expected: tuple) -> None:
    if tuple(array.shape) != tuple(expected):
        raise ValueError(
            f"layer {name}: the weights have shape {tuple(array.shape)}, "
            f"the model expects {tuple(expected)}"
        )
