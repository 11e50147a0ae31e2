"""A narrow AlexNet with constructed weights whose answers are known, and solid-colour images for it.

The network classifies a solid-colour image x = (r, g, b) (0-255, no mean subtracted) by the nearest of
six prototype colours p_c:

    logit_c = (2 p_c . x - |p_c|^2) / scale = (|x|^2 - |x - p_c|^2) / scale,

so the classes rank by the distance from x to their prototypes. The weights, in the bvlc_alexnet.npy layout
so that every variant of `build_alexnet` reads them: conv1 averages each of R, G, B over its 11x11 window
into channels 0-2, every later layer copies channels 0-2 through the centre tap of its kernel (so padding
never matters), fc8 computes the logits above; every other weight and bias is zero. Inputs must be >= 0
(the ReLUs), the network has no LRN (`lrn=False`).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from alexnet_tf.data import prepare
from alexnet_tf.model import build_alexnet
from alexnet_tf.model.npy_weights import npy_weights

PROTOTYPES = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)],
                      np.float32)
NAMES = ("red", "green", "blue", "yellow", "cyan", "magenta")
WIDTH = 0.125
IMAGE_SIZE = 67  # conv1 VALID; pool5 is 1x1.
STORED_SIZE = 72
SCALE = 1000.0
# The flags that build the network the .npy file fits, and feed it raw colours.
# A .npy file is read as the bvlc_alexnet preset unless told otherwise: this one is of the paper's network (RGB).
FLAGS = ["--preset=paper", f"--width={WIDTH}", f"--image_size={IMAGE_SIZE}", "--towers=1", "--groups=2", "--nolrn",
         "--mean=none"]
RED, GREEN, CYAN = 0, 1, 4
# The evaluation set: each class's own colour, then a red image labelled green (from red, green is the 4th or
# 5th nearest prototype: a top-1 error only) and one labelled cyan (the farthest: a top-1 and top-5 error).
VALIDATION = [(c, c) for c in range(len(NAMES))] + [(GREEN, RED), (CYAN, RED)]
TOP1_ERROR, TOP5_ERROR = 2 / 8, 1 / 8


def weights(scale: float = SCALE) -> dict[str, list[np.ndarray]]:
    """The network's weights in the bvlc_alexnet.npy layout."""
    shapes = build_alexnet(num_classes=len(NAMES), towers=1, groups=2, width=WIDTH, image_size=IMAGE_SIZE, lrn=False)
    out = {name: [np.zeros_like(kernel), np.zeros_like(bias)] for name, (kernel, bias) in npy_weights(shapes).items()}
    rgb = [0, 1, 2]
    out["conv1"][0][:, :, rgb, rgb] = 1.0 / (11 * 11)
    for name in ("conv2", "conv3", "conv4", "conv5"):
        centre = out[name][0].shape[0] // 2
        out[name][0][centre, centre, rgb, rgb] = 1.0
    for name in ("fc6", "fc7"):
        out[name][0][rgb, rgb] = 1.0
    out["fc8"][0][:3] = 2 * PROTOTYPES.T / scale
    out["fc8"][1][:] = -(PROTOTYPES**2).sum(axis=1) / scale
    return out


def logits(colours: np.ndarray, scale: float = SCALE) -> np.ndarray:
    """The network's logits [N, 6] for solid colours [N, 3] (the closed form of the module docstring)."""
    colours = np.asarray(colours, np.float64)
    return (2 * colours @ PROTOTYPES.T - (PROTOTYPES**2).sum(axis=1)) / scale


def save_npy(path: str, scale: float = SCALE) -> str:
    np.save(path, weights(scale), allow_pickle=True)
    return path


def wnid(label: int) -> str:
    return f"n{label:08d}"


def write_ilsvrc(root: str, examples: list[tuple[int, int]] = VALIDATION, size: int = 80) -> None:
    """val/<wnid>/*.png of solid colours, (label, colour index) per image, and synset_words.txt naming the classes."""
    for i, (label, colour) in enumerate(examples):
        folder = os.path.join(root, "val", wnid(label))
        os.makedirs(folder, exist_ok=True)
        image = np.broadcast_to(PROTOTYPES[colour].astype(np.uint8), (size, size, 3))
        Image.fromarray(np.ascontiguousarray(image)).save(os.path.join(folder, f"{i}.png"))
    with open(os.path.join(root, "synset_words.txt"), "w") as f:
        f.writelines(f"{wnid(c)} {name}\n" for c, name in enumerate(NAMES))


def prepared_dataset(directory: str, examples: list[tuple[int, int]] = VALIDATION) -> str:
    """`examples` (see `write_ilsvrc`) prepared into `directory`/prepared; the classes named by NAMES."""
    raw, out = os.path.join(directory, "raw"), os.path.join(directory, "prepared")
    write_ilsvrc(raw, examples)
    prepare.prepare(raw, out, stored_size=STORED_SIZE, names_file=os.path.join(raw, "synset_words.txt"))
    return out
