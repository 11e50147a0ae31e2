"""A tiny ILSVRC-layout folder with the odd files real ImageNet has, for the data tests.

train/<wnid>/ holds smooth RGB JPEGs plus, in the first class, a grayscale JPEG, a CMYK JPEG, a PNG named .JPEG,
an image much smaller than the stored size, and a truncated JPEG that no decoder accepts.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850")
NAMES = ("tench", "goldfish", "great white shark")


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 [height, width, 3]: a random colour gradient plus mild noise (JPEG-friendly, all pixels distinct)."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = rng.uniform(40, 200, 3) + rng.uniform(-60, 60, 3) * x[..., None] + rng.uniform(-60, 60, 3) * y[..., None]
    return np.clip(base + rng.normal(0, 4, (height, width, 3)), 0, 255).astype(np.uint8)


def _jpeg(image: Image.Image) -> bytes:
    output = io.BytesIO()
    image.save(output, format="JPEG", quality=95)
    return output.getvalue()


def write_ilsvrc(root: str, *, per_class: int = 4, val_per_class: int = 2, size: tuple[int, int] = (40, 52),
                 seed: int = 0) -> dict[str, str]:
    """Writes the folder; returns the path of each odd file by kind, and 'names' (a `wnid name` file)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for wnid in WNIDS:
            folder = os.path.join(root, split, wnid)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                Image.fromarray(smooth_image(rng, *size)).save(os.path.join(folder, f"{wnid}_{i}.JPEG"), quality=95)
    folder = os.path.join(root, "train", WNIDS[0])
    odd = {
        "grayscale": Image.fromarray(smooth_image(rng, *size)).convert("L"),
        "cmyk": Image.fromarray(smooth_image(rng, *size)).convert("CMYK"),
        "small": Image.fromarray(smooth_image(rng, 12, 20)),
    }
    paths = {}
    for kind, image in odd.items():
        paths[kind] = os.path.join(folder, f"{kind}.JPEG")
        with open(paths[kind], "wb") as f:
            f.write(_jpeg(image))
    paths["png"] = os.path.join(folder, "png.JPEG")
    Image.fromarray(smooth_image(rng, *size)).save(paths["png"], format="PNG")
    paths["truncated"] = os.path.join(folder, "truncated.JPEG")
    data = _jpeg(Image.fromarray(smooth_image(rng, *size)))
    with open(paths["truncated"], "wb") as f:
        f.write(data[: len(data) // 3])
    paths["names"] = os.path.join(root, "synset_words.txt")
    with open(paths["names"], "w") as f:
        f.writelines(f"{wnid} {name}\n" for wnid, name in zip(WNIDS, NAMES))
    return paths
