"""Reads and writes weights in the widely shared `bvlc_alexnet.npy` layout, without running code.

The layout (Caffe's bvlc_alexnet converted to numpy) is `np.save` of a dict
`{"conv1": [W, b], ..., "conv5": [W, b], "fc6": [W, b], "fc7": [W, b], "fc8": [W, b]}`:

- conv W is (kh, kw, in_channels / groups, out_channels), Keras' own kernel layout. conv2, conv4
  and conv5 are grouped (groups=2); group 0 holds the first half of the output channels and
  reads the first half of the input channels. Group 0 is the paper's tower a (the first GPU).
- fc W is (in, out). fc6's rows are in (6, 6, 256) height-width-channel order, channels 0-127
  coming from tower a: the order of Keras' `Flatten` after concatenating [a, b].

Into the three variants of `build_alexnet` (read from the model's `AlexNetConfig`):
- `towers=1, groups=2` (Caffe's network): every array as it is.
- `towers=2`: each conv layer's output channels split in half, the first half to tower a. This
  includes conv3, whose two halves each read all 256 channels.
- `towers=1, groups=1`: the grouped kernels of conv2, conv4 and conv5 become block-diagonal dense
  kernels (zeros where a group does not read), which computes exactly the grouped function.

Such a file is a pickle, and unpickling runs whatever callables the pickle names (`np.load` with
`allow_pickle=True` runs any code a file holds). `read_npy` therefore reads the numpy header
itself and unpickles the rest with an unpickler that builds only what the layout holds: dicts,
lists, strings and numpy arrays (as `torch.load(weights_only=True)` does for its format), and
refuses anything else before it is called. Files are read and written through `tf.io.gfile`, so
paths may be local, `gs://...` or `ram://...`.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, BinaryIO, Iterable, Mapping

import keras
import numpy as np
import tensorflow as tf
from numpy.lib import format as npy_format

from alexnet_tf import errors, files
from alexnet_tf.model.architecture import CONV_LAYERS, FC_LAYERS, AlexNetConfig, tower_layer_names
from alexnet_tf.model.alexnet import architecture_of, inner_layer

LAYERS = CONV_LAYERS + FC_LAYERS
GROUPED_LAYERS = ("conv2", "conv4", "conv5")  # groups=2 in Caffe's bvlc_alexnet.
# The only callables a pickled dict of numpy arrays names: numpy's array reconstructor (module
# numpy.core before numpy 2, numpy._core since), the array and dtype classes, and the codec that
# Python 3 pickles bytes with at protocol 2. Each builds data and nothing else.
SAFE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
})


class _RefusedGlobal(pickle.UnpicklingError):
    """A global outside `SAFE_GLOBALS`; the message is its dotted name."""


class _WeightsUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `SAFE_GLOBALS`; any other global is refused unloaded."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise _RefusedGlobal(f"{module}.{name}")


def read_npy(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Reads a bvlc_alexnet-layout `.npy` file (saved from Python 2 or 3) into a dict, safely.

    Returns:
        {layer: [kernel, bias]} for every layer of `LAYERS` (float arrays, the layout's shapes);
        other entries of the file are dropped.

    Raises:
        errors.ModelFileError: the file is missing, a directory, not a `.npy` file, names any
            callable but numpy's array builders (it is never called), or is not the layout
            (a layer missing, non-float values, wrong dimensions). One line, naming the file.
    """
    path = os.fspath(path)
    if tf.io.gfile.isdir(path):
        raise errors.ModelFileError(f"{path} is a directory, not a bvlc_alexnet-layout .npy file")
    try:
        # Streamed, not read whole first: the published file is 233 MB.
        with tf.io.gfile.GFile(path, "rb") as f:
            weights = _unpickle_npy(path, f)
    except tf.errors.NotFoundError:
        raise errors.ModelFileError(f"{path}: no such file") from None
    except tf.errors.OpError as error:
        raise errors.ModelFileError(f"{path}: cannot read it ({error.message})") from None
    return _check_layout(path, weights)


def _unpickle_npy(path: str, stream: BinaryIO) -> Any:
    """The object pickled in a `.npy` stream: the header read by numpy, the payload restricted."""
    if stream.read(len(files.ZIP_MAGIC)) == files.ZIP_MAGIC:
        raise errors.ModelFileError(f"{path} is a zip archive (.npz or .keras), not a bvlc_alexnet-layout .npy file")
    stream.seek(0)
    try:
        version = npy_format.read_magic(stream)
        read_header = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"format version {version}")
        shape, _, dtype = read_header[version](stream)
    except ValueError as error:
        raise errors.ModelFileError(f"{path} is not a .npy file numpy writes ({error})") from None
    if dtype != np.dtype(object) or shape != ():
        raise errors.ModelFileError(
            f"{path} holds a {dtype} array of shape {shape}, not the bvlc_alexnet dict {{layer: [W, b]}}"
        )
    try:
        # latin1 reads Python 2's str as numpy's array data, as np.load(encoding="latin1") does.
        array = _WeightsUnpickler(stream, encoding="latin1").load()
    except _RefusedGlobal as error:
        raise errors.ModelFileError(
            f"{path} is refused: its pickle calls {error}, and a weights file may hold only dicts, lists and "
            "numeric arrays"
        ) from None
    except tf.errors.OpError:
        raise  # A read error, reported by read_npy.
    except Exception as error:  # noqa: BLE001 - a corrupt pickle fails in many ways, all one line.
        raise errors.ModelFileError(f"{path} is corrupt: {type(error).__name__}: {error}") from None
    return array.item() if isinstance(array, np.ndarray) and array.dtype == object and array.shape == () else array


def _check_layout(path: str, weights: Any) -> dict[str, list[np.ndarray]]:
    """`weights` as {layer: [kernel, bias]}, or a ModelFileError saying how it is not the layout."""
    if not isinstance(weights, dict):
        raise errors.ModelFileError(f"{path}: expected a dict of layer name -> [W, b], got {type(weights).__name__}")
    missing = [name for name in LAYERS if name not in weights]
    if missing:
        raise errors.ModelFileError(f"{path} has no layer {', '.join(missing)}")
    out = {}
    for name in LAYERS:
        value = weights[name]
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(a, np.ndarray) for a in value)):
            raise errors.ModelFileError(f"{path}: layer {name} is not a pair [W, b] of arrays")
        kernel, bias = value
        if not all(np.issubdtype(a.dtype, np.floating) for a in value):
            raise errors.ModelFileError(f"{path}: layer {name} holds {kernel.dtype} and {bias.dtype}, not floats")
        dims = 4 if name in CONV_LAYERS else 2
        if kernel.ndim != dims or bias.shape != kernel.shape[-1:]:
            raise errors.ModelFileError(
                f"{path}: layer {name} has W {kernel.shape} and b {bias.shape}; expected a {dims}-dimensional W "
                "and a b of its last dimension"
            )
        out[name] = [kernel, bias]
    return out


def load_npy_weights(
    model: keras.Model,
    weights: str | os.PathLike | Mapping[str, list[np.ndarray]],
    skip: Iterable[str] = (),
) -> None:
    """Assigns bvlc_alexnet-layout weights to an `AlexNet`, any variant.

    Args:
        model: the model.
        weights: a path to a `.npy` file (read with `read_npy`), or the dict itself.
        skip: layer names to leave as they are, e.g. ("fc8",) to fine-tune on new classes.

    Raises:
        errors.ModelFileError: the file cannot be read safely (`read_npy`), a layer is missing,
            or an array's shape does not fit the model (the message names the file, the layer
            and both shapes). Nothing is assigned then.
    """
    where = ""
    if not isinstance(weights, Mapping):
        where = f"{os.fspath(weights)}: "
        weights = read_npy(weights)
    names = [n for n in LAYERS if n not in set(skip)]
    missing = [n for n in names if n not in weights]
    if missing:
        raise errors.ModelFileError(f"{where}the weights have no layer {', '.join(missing)}")
    # Check every shape before assigning anything, so a bad file leaves the model untouched.
    try:
        assignments = [
            (variable, array)
            for name in names
            for variable, array in _targets(model, name, *map(np.asarray, weights[name]))
        ]
    except errors.ModelFileError as error:
        raise errors.ModelFileError(f"{where}{error}") from None
    for variable, array in assignments:
        variable.assign(array.astype(variable.dtype))


def npy_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """An `AlexNet`'s weights in the bvlc_alexnet layout (the inverse of `load_npy_weights`).

    A dense single-stream model gives its dense kernels, which only a dense model reads back:
    a grouped layout cannot express them.
    """
    config = architecture_of(model)
    out = {}
    for name in LAYERS:
        layers = [inner_layer(model, n) for n in _names(config, name)]
        out[name] = [
            np.concatenate([keras.ops.convert_to_numpy(getattr(layer, attr)) for layer in layers], -1)
            for attr in ("kernel", "bias")
        ]
    return out


def save_npy_weights(model: keras.Model, path: str | os.PathLike) -> None:
    """Writes `npy_weights(model)` to a `.npy` file (any `tf.io.gfile` path)."""
    with tf.io.gfile.GFile(os.fspath(path), "wb") as f:
        np.save(f, npy_weights(model), allow_pickle=True)


def _names(config: AlexNetConfig, name: str) -> tuple[str, ...]:
    """The model's layers holding layer `name` of the file: both towers' for a two-tower conv."""
    return tower_layer_names(config, name) if name in CONV_LAYERS else (name,)


def _targets(model: keras.Model, name: str, kernel: np.ndarray, bias: np.ndarray) -> list:
    """(variable, array) pairs that put one layer of the file into the model, shapes checked."""
    config = architecture_of(model)
    layers = [inner_layer(model, n) for n in _names(config, name)]
    if len(layers) == 2:
        shape = tuple(layers[0].kernel.shape)
        _check(name, kernel, shape[:-1] + (2 * shape[-1],))
        _check(name + " bias", bias, (2 * shape[-1],))
        halves = zip(layers, np.split(kernel, 2, axis=-1), np.split(bias, 2))
        return [pair for layer, k, b in halves for pair in ((layer.kernel, k), (layer.bias, b))]
    (layer,) = layers
    grouped_file = kernel.ndim == 4 and 2 * kernel.shape[2] == layer.kernel.shape[2]
    if name in GROUPED_LAYERS and config.groups == 1 and grouped_file:
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
        raise errors.ModelFileError(
            f"layer {name}: the weights have shape {tuple(array.shape)}, "
            f"the model expects {tuple(expected)}"
        )
