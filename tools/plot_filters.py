"""Writes the conv1 filters of a checkpoint as one PNG grid, like Figure 3 of the paper.

  python tools/plot_filters.py --checkpoint=MODEL_DIR/model.keras --out=conv1.png [--scale=4]
  python -m tools.plot_filters ...                                  (the same, from the repository root)

--checkpoint is a `.keras` model written by training (any variant: the kernel is found by
`alexnet_tf.model.conv1_kernel`, towers concatenated) or a bvlc_alexnet-layout `.npy` weights file
({'conv1': [W (11, 11, 3, 96), b], ...}). The grid is `alexnet_tf.summaries.filter_grid` (each filter
normalised to its own min-max range, first tower on top), the same image TensorBoard shows under
`conv1/filters`, upscaled --scale times with nearest-neighbour sampling.
"""

import os
import pickle
import sys

if __package__ in (None, ""):  # Run as `python tools/plot_filters.py`: make the repository importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

from alexnet_tf import model as model_lib  # noqa: E402
from alexnet_tf import summaries  # noqa: E402

CHECKPOINT_SUFFIXES = (".keras", ".npy")
DEFAULT_SCALE = 4
FLAGS = flags.FLAGS


def define_flags() -> None:
    """Declares the tool's flags.

    Called only when run as a program, so that tests importing this module share absl's global flag
    registry with the training binaries (which also define --checkpoint) without a clash.
    """
    flags.DEFINE_string("checkpoint", None, "A .keras model written by training, or a bvlc_alexnet-layout "
                        ".npy weights file.", required=True)
    flags.DEFINE_string("out", None, "PNG file to write (its folder is created).", required=True)
    flags.DEFINE_integer("scale", DEFAULT_SCALE, "Nearest-neighbour upscaling factor of the grid, >= 1.")
    flags.register_validator("checkpoint", lambda v: v is None or (v.endswith(CHECKPOINT_SUFFIXES) and
                             os.path.isfile(v)), "--checkpoint must be an existing .keras or .npy file")
    flags.register_validator("out", lambda v: v is None or v.lower().endswith(".png"),
                             "--out must name a .png file")
    flags.register_validator("scale", lambda v: v >= 1, "--scale must be >= 1")


def load_conv1_kernel(path: str) -> np.ndarray:
    """The conv1 kernel [11, 11, 3, filters] of a `.keras` model or a bvlc_alexnet-layout `.npy` file."""
    if path.endswith(".npy"):
        # Caffe-converted weight files are pickled Python 2 dicts, hence pickle and latin1.
        weights = np.load(path, allow_pickle=True, encoding="latin1").item()
        if "conv1" not in weights:
            raise ValueError(f"{path} has no 'conv1' entry (it has {sorted(weights)}).")
        return np.asarray(weights["conv1"][0])
    return model_lib.conv1_kernel(keras.models.load_model(path, compile=False))


def write_filter_png(kernel: np.ndarray, out: str, scale: int = DEFAULT_SCALE) -> tuple[int, int]:
    """Writes the upscaled filter grid of `kernel` to the PNG file `out`; returns its (height, width)."""
    image = summaries.upscale(summaries.filter_grid(kernel), scale)
    directory = os.path.dirname(out)
    if directory:
        os.makedirs(directory, exist_ok=True)
    Image.fromarray(image).save(out, format="PNG")
    return image.shape[:2]


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        kernel = load_conv1_kernel(FLAGS.checkpoint)
    except (OSError, ValueError, pickle.UnpicklingError) as error:
        sys.exit(f"plot_filters: cannot read conv1 from --checkpoint={FLAGS.checkpoint}: {error}")
    height, width = write_filter_png(kernel, FLAGS.out, FLAGS.scale)
    print(f"Wrote {kernel.shape[-1]} conv1 filters {kernel.shape[:2]} as a {width}x{height} grid to {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
