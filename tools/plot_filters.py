"""Writes the conv1 filters of a checkpoint as one PNG grid, like Figure 3 of the paper.

  python tools/plot_filters.py --checkpoint=MODEL_DIR/model.keras --out=conv1.png [--scale=4]
  python -m tools.plot_filters ...                                  (the same, from the repository root)

--checkpoint is a `.keras` model written by training (any variant: its config says which) or a
bvlc_alexnet-layout `.npy` weights file ({'conv1': [W (11, 11, 3, 96), b], ...}, read as data only: see
`alexnet_tf.model.npy_weights.read_npy`). The image is `alexnet_tf.analysis.figure3.figure3` (each filter
normalised to its own min-max range; a two-tower model's tower a above tower b, labelled), the same image
TensorBoard shows under `filters/conv1`, upscaled --scale times with nearest-neighbour sampling.
"""

from alexnet_tf import cli, files  # First: it imports TensorFlow with its start-up notices held back.
from alexnet_tf.analysis import figure3
from alexnet_tf.model import alexnet, loading, npy_weights

import numpy as np
from absl import flags

CHECKPOINT_SUFFIXES = (".keras", ".npy")
FLAGS = flags.FLAGS


def define_flags() -> None:
    """Declares the tool's flags.

    Called only when run as a program, so that tests importing this module share absl's global flag
    registry with the training binaries (which also define --checkpoint) without a clash.
    """
    flags.DEFINE_string("checkpoint", None, "A .keras model written by training, or a bvlc_alexnet-layout "
                        ".npy weights file.", required=True)
    flags.DEFINE_string("out", None, "PNG file to write (its folder is created).", required=True)
    flags.DEFINE_integer("scale", figure3.DEFAULT_SCALE, "Nearest-neighbour upscaling factor of the grid.",
                         lower_bound=1)
    flags.register_validator("checkpoint", lambda v: v is None or v.endswith(CHECKPOINT_SUFFIXES),
                             "--checkpoint must be a .keras or .npy file")
    flags.register_validator("out", lambda v: v is None or v.lower().endswith(".png"),
                             "--out must name a .png file")


def load_conv1_kernel(path: str) -> tuple[np.ndarray, int]:
    """(conv1 kernel [11, 11, 3, filters], towers) of a `.keras` model or a bvlc_alexnet-layout `.npy` file
    (whose conv1 is one stream: Caffe's conv1 is not grouped)."""
    if path.endswith(".npy"):
        return np.asarray(npy_weights.read_npy(path)["conv1"][0]), 1
    model = loading.load_model(path)
    return alexnet.conv1_kernel(model), alexnet.architecture_of(model).towers


def write_filter_png(kernel: np.ndarray, out: str, towers: int = 1, scale: int = figure3.DEFAULT_SCALE
                     ) -> tuple[int, int]:
    """Writes Figure 3 of `kernel` to the PNG file `out` (any tf.io.gfile path); returns its (height, width)."""
    image = figure3.figure3(kernel, towers, scale)
    files.write_png(image, out)
    return image.shape[:2]


def plot(checkpoint: str, out: str, scale: int) -> str:
    kernel, towers = load_conv1_kernel(checkpoint)
    height, width = write_filter_png(kernel, out, towers, scale)
    return f"Wrote {kernel.shape[-1]} conv1 filters {kernel.shape[:2]} as a {width}x{height} image to {out}"


def main(argv: list[str]) -> None:
    print(cli.run_main("plot_filters", lambda: plot(FLAGS.checkpoint, FLAGS.out, FLAGS.scale), argv))


if __name__ == "__main__":
    define_flags()
    cli.quiet_main(main)
