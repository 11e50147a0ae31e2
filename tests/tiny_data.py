"""A tiny dataset for tests: coloured, noisy squares in ILSVRC layout, then prepared."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from alexnet_tf.data import prepare

STORED_SIZE = 72
# A two-tower network of the paper's topology at 1/16 of its width, on 64-pixel crops: trains in seconds.
TINY_FLAGS = ("--width=0.0625", "--image_size=64", "--batch_size=8", "--seed=1")
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (200, 200, 40)]


def write_ilsvrc(root: str, per_class: int = 12, val_per_class: int = 4, size: int = 80, seed: int = 0) -> None:
    """Class c is a square of colour COLOURS[c] on grey noise, at a random place."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for label, colour in enumerate(COLOURS):
            wnid = f"n0000000{label}"
            folder = os.path.join(root, split, wnid)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                image = rng.integers(80, 160, (size, size, 3)).astype(np.uint8)
                x, y = rng.integers(0, size // 2, 2)
                image[y : y + size // 2, x : x + size // 2] = colour
                Image.fromarray(image).save(os.path.join(folder, f"{wnid}_{i}.JPEG"), quality=95)


def prepared_dataset(directory: str, **kwargs) -> str:
    """An ILSVRC folder under `directory`/raw prepared into `directory`/prepared."""
    raw, out = os.path.join(directory, "raw"), os.path.join(directory, "prepared")
    write_ilsvrc(raw, **kwargs)
    prepare.prepare(raw, out, stored_size=STORED_SIZE, images_per_shard=16)
    return out
