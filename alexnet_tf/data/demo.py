"""The offline demo's data set: procedurally drawn pattern classes, written as JPEG files in ILSVRC layout.

    root/train/<wnid>/<wnid>_<i>.JPEG
    root/val/<wnid>/<wnid>_<i>.JPEG
    root/synset_words.txt                 one `wnid name` line per class, like ILSVRC's

so that the demo is prepared by the same tools as ImageNet (`alexnet_tf.data.prepare`). The wnids are fake
ImageNet-style ids n90000000, n90000001, ... (class i is `n9000000i` for i < 10), sorted in class order.

Each class is a kind of pattern (gratings at three orientations, checkerboards, rings, blobs, edges, crosses,
zigzags, ...) drawn as a soft mask between two random colours (differing mostly in brightness, as across
photographs' edges: `_colour_pair`), with random frequency, phase, position, size and orientation jitter, then
additive Gaussian pixel noise. The colours are drawn independently of the class,
so neither the mean colour nor any single pixel tells the classes apart: the shape does. The oriented
gratings and edges are the kind of input whose first-layer filters become Gabor-like.

Every class is closed under horizontal reflection, because training flips images (section 4.1 of the
paper): a mirrored image must stay in its class. Hence one "diagonal grating" class holding both
diagonals (a rising and a falling class would swap labels under flipping), and no chiral patterns.

Deterministic: each image is drawn from its own generator seeded by (seed, split, class, index), and
encoded by Pillow with fixed settings, so the same arguments give the same bytes.

Geometry: patterns are drawn on coordinates x (right), y (down) in [-1, 1] across the image; lengths
below are in those units (2 = the image side) unless stated in pixels.
"""

from __future__ import annotations

import os
import shutil
from typing import Callable

import numpy as np
from PIL import Image

from alexnet_tf.data import stats
from alexnet_tf.errors import ConfigError, DataError

DEFAULT_NUM_CLASSES = 10
DEFAULT_TRAIN_PER_CLASS = 300
DEFAULT_VAL_PER_CLASS = 50
DEFAULT_SIZE = 72  # Image side in pixels: room for random 64-pixel training crops.
NAMES_FILE = "synset_words.txt"
# What `ensure_demo_data` finds in a demo data folder it made. The version changes whenever the drawing changes
# what the demo learns (2: colour pairs from ImageNet's covariance, crosses and zigzags instead of dots), so
# that a folder of older images is named, not silently trained on.
VERSION_FILE = "demo_version.json"
VERSION = 2
JPEG_QUALITY = 90
_WNID_BASE = 90_000_000  # Beyond ImageNet's n0... and n1... ids, so the fake ids never collide with real ones.
_SPLITS = ("train", "val")

_MIN_COLOUR_DISTANCE, _MAX_COLOUR_DISTANCE = 90.0, 200.0  # Between the two colours of an image, 0-255 scale.
_NOISE_STDDEV_RANGE = (4.0, 20.0)  # Additive Gaussian pixel noise, 0-255 scale.
_ORIENTATION_JITTER_DEGREES = 12.0  # Leaves the grating orientations 21 degrees apart at worst.

Mask = np.ndarray  # [size, size] float in [0, 1]: 0 = background colour, 1 = foreground colour.
_Drawer = Callable[[np.random.Generator, np.ndarray, np.ndarray, float], Mask]


def generate(
    root: str,
    *,
    num_classes: int = DEFAULT_NUM_CLASSES,
    train_per_class: int = DEFAULT_TRAIN_PER_CLASS,
    val_per_class: int = DEFAULT_VAL_PER_CLASS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    first_class: int = 0,
) -> None:
    """Writes the demo data set under `root` (see the module docstring for the layout).

    The files are written to a temporary sibling folder renamed to `root` at the end, so `root` is either
    absent or complete: a caller can test `os.path.isdir(root)` to skip a finished generation.

    Args:
      root: output folder; must not exist, or be empty.
      num_classes: number of classes, those of `CLASS_NAMES` from `first_class` on, at least 2.
      train_per_class, val_per_class: images per class in each split, >= 1.
      size: image side in pixels, >= 16.
      seed: a non-negative integer; the data are a function of the seed and the other arguments.
      first_class: the index in `CLASS_NAMES` of the first class (`TRANSFER_CLASSES[0]` for the second task).
    """
    if not (0 <= first_class and 2 <= num_classes <= len(CLASS_NAMES) - first_class):
        raise ConfigError(f"num_classes must be in [2, {len(CLASS_NAMES) - first_class}] from class {first_class}, "
                          f"got {num_classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ConfigError(f"images per class must be >= 1, got {train_per_class} and {val_per_class}")
    if size < 16:
        raise ConfigError(f"size must be >= 16 pixels, got {size}")
    if os.path.exists(root) and os.listdir(root):
        raise ConfigError(f"{root} exists and is not empty: the demo data set is written to a new folder")
    staging = f"{root.rstrip(os.sep)}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # Left over by an interrupted generation.
    counts = {"train": train_per_class, "val": val_per_class}
    for split_index, split in enumerate(_SPLITS):
        for class_index in range(first_class, first_class + num_classes):
            folder = os.path.join(staging, split, wnid(class_index))
            os.makedirs(folder)
            for i in range(counts[split]):
                rng = np.random.default_rng([seed, split_index, class_index, i])
                image = draw(class_index, rng, size)
                path = os.path.join(folder, f"{wnid(class_index)}_{i}.JPEG")
                Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY)
    with open(os.path.join(staging, NAMES_FILE), "w") as f:
        f.writelines(f"{wnid(c)} {CLASS_NAMES[c]}\n" for c in range(first_class, first_class + num_classes))
    if os.path.isdir(root):
        os.rmdir(root)  # Empty (checked above); rename() cannot replace a folder on every platform.
    os.rename(staging, root)


def wnid(class_index: int) -> str:
    """The fake ImageNet-style id of a class: 'n90000000' for class 0."""
    return f"n{_WNID_BASE + class_index:08d}"


def draw(class_index: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One random image of class `class_index`: uint8 RGB [size, size, 3]."""
    pixel = 2.0 / size  # One pixel in pattern units.
    coordinates = (np.arange(size) + 0.5) * pixel - 1.0
    x, y = np.meshgrid(coordinates, coordinates)
    mask = _DRAWERS[class_index](rng, x, y, pixel)
    background, foreground = _colour_pair(rng)
    image = background + mask[..., np.newaxis] * (foreground - background)
    image += rng.normal(0.0, rng.uniform(*_NOISE_STDDEV_RANGE), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two RGB colours (0-255) whose difference has the colour statistics of photographs' pixels.

    An edge in a photograph is mostly a step in brightness with a smaller change of hue: ImageNet's RGB
    covariance (`stats.IMAGENET_EIGVEC`, `IMAGENET_EIGVAL`) has 90% of its variance on a near-grey first axis.
    The difference is drawn from a Gaussian with that covariance, rescaled to a length in
    [_MIN_COLOUR_DISTANCE, _MAX_COLOUR_DISTANCE]; the first colour is uniform, and both lie in the RGB cube.
    Why: with independent uniform colours (most differences chromatic) the demo's conv1 learned gratings whose
    phase differs from channel to channel, rainbow stripes that no single-colour Gabor fits (R^2 about 0.5).
    """
    axes = np.asarray(stats.IMAGENET_EIGVEC) * np.sqrt(stats.IMAGENET_EIGVAL)  # Columns: axis * stddev.
    while True:
        difference = axes @ rng.normal(size=3)  # Its sign is random: so is the colours' order.
        difference *= rng.uniform(_MIN_COLOUR_DISTANCE, _MAX_COLOUR_DISTANCE) / np.linalg.norm(difference)
        first = rng.uniform(0.0, 255.0, 3)
        second = first + difference
        if np.all((second >= 0.0) & (second <= 255.0)):
            return first, second


# Mask helpers.


def _soft_step(distance: np.ndarray, width: float) -> Mask:
    """0 below -width/2, 1 above +width/2, linear in between: an anti-aliased edge."""
    return np.clip(0.5 + distance / width, 0.0, 1.0)


def _soft_sign(signal: np.ndarray, sharpness: float) -> Mask:
    """Maps a signal in [-1, 1] to [0, 1]: about linearly for small sharpness, to nearly 0 or 1 for large.

    Applied to a sinusoid, it gives anything from a sine grating to square-wave stripes.
    """
    return 0.5 + 0.5 * np.tanh(sharpness * signal) / np.tanh(sharpness)


def _rotated(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along and across the direction `angle` (radians, from x towards y)."""
    c, s = np.cos(angle), np.sin(angle)
    return x * c + y * s, -x * s + y * c


def _jittered(degrees: float, rng: np.random.Generator) -> float:
    return np.deg2rad(degrees + rng.uniform(-_ORIENTATION_JITTER_DEGREES, _ORIENTATION_JITTER_DEGREES))


# The classes. Each drawer returns a mask; `pixel` is the size of one pixel in pattern units.


def _grating(*directions_degrees: float) -> _Drawer:
    """Stripes varying along one of `directions_degrees` (0: vertical stripes), period 5 to 14 px at 72."""

    def drawer(rng, x, y, pixel):
        along, _ = _rotated(x, y, _jittered(rng.choice(directions_degrees), rng))
        period = rng.uniform(0.14, 0.4)
        return _soft_sign(np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi)), rng.uniform(0.5, 4.0))

    return drawer


def _checkerboard(rng, x, y, pixel):
    along, across = _rotated(x, y, _jittered(0.0, rng))
    cell = rng.uniform(0.15, 0.35)
    product = np.sin(np.pi * along / cell + rng.uniform(0, 2 * np.pi)) * np.sin(
        np.pi * across / cell + rng.uniform(0, 2 * np.pi)
    )
    return _soft_sign(product, 6.0)


def _rings(rng, x, y, pixel):
    cx, cy = rng.uniform(-0.3, 0.3, 2)
    radius = np.hypot(x - cx, y - cy)
    phase = 2 * np.pi * radius / rng.uniform(0.15, 0.35) + rng.uniform(0, 2 * np.pi)
    return _soft_sign(np.sin(phase), rng.uniform(0.5, 4.0))


def _blob(rng, x, y, pixel):
    cx, cy = rng.uniform(-0.4, 0.4, 2)
    along, across = _rotated(x - cx, y - cy, rng.uniform(0, np.pi))
    sigma_along, sigma_across = rng.uniform(0.15, 0.35, 2)
    return np.exp(-0.5 * ((along / sigma_along) ** 2 + (across / sigma_across) ** 2))


def _edge(rng, x, y, pixel):
    along, _ = _rotated(x, y, rng.uniform(0, 2 * np.pi))
    return _soft_step(along - rng.uniform(-0.3, 0.3), pixel * rng.uniform(1.0, 4.0))


def _random_dots(rng, x, y, pixel):
    count = rng.integers(20, 60, endpoint=True)
    centres = rng.uniform(-1.0, 1.0, (count, 2))
    radii = pixel * rng.uniform(1.0, 2.5, count)
    distance = np.hypot(x - centres[:, 0, None, None], y - centres[:, 1, None, None]) - radii[:, None, None]
    return _soft_step(-distance.min(axis=0), pixel)


def _polka_dots(rng, x, y, pixel):
    along, across = _rotated(x, y, rng.uniform(0, np.pi / 2))
    spacing = rng.uniform(0.25, 0.45)
    offset_along, offset_across = rng.uniform(0, 1, 2)
    du = (along / spacing + offset_along) % 1.0 - 0.5
    dv = (across / spacing + offset_across) % 1.0 - 0.5
    distance = np.hypot(du, dv) * spacing
    return _soft_step(spacing * rng.uniform(0.2, 0.35) - distance, pixel)


def _spokes(rng, x, y, pixel):
    cx, cy = rng.uniform(-0.2, 0.2, 2)
    angle = np.arctan2(y - cy, x - cx)
    spokes = rng.integers(4, 8, endpoint=True)
    return _soft_sign(np.sin(spokes * angle + rng.uniform(0, 2 * np.pi)), rng.uniform(1.0, 4.0))


def _zigzag(rng, x, y, pixel):
    """Horizontal stripes bent into a triangle wave along x."""
    along, across = _rotated(x, y, _jittered(0.0, rng))
    bend_period, stripe_period = rng.uniform(0.3, 0.5), rng.uniform(0.2, 0.35)
    triangle = 2.0 / np.pi * np.arcsin(np.sin(2 * np.pi * along / bend_period + rng.uniform(0, 2 * np.pi)))
    bent = across + rng.uniform(0.06, 0.12) * triangle
    return _soft_sign(np.sin(2 * np.pi * bent / stripe_period + rng.uniform(0, 2 * np.pi)), rng.uniform(1.0, 4.0))


def _cross(rng, x, y, pixel):
    along, across = _rotated(x - rng.uniform(-0.3, 0.3), y - rng.uniform(-0.3, 0.3), _jittered(0.0, rng))
    half_width, half_length = rng.uniform(0.06, 0.14), rng.uniform(0.45, 0.8)
    bar_along = np.minimum(half_width - np.abs(across), half_length - np.abs(along))
    bar_across = np.minimum(half_width - np.abs(along), half_length - np.abs(across))
    return _soft_step(np.maximum(bar_along, bar_across), pixel)


def _triangle(rng, x, y, pixel):
    """A filled upright triangle: point up, base down (a mirror of it is one too)."""
    along, across = _rotated(x - rng.uniform(-0.25, 0.25), y - rng.uniform(-0.25, 0.25), _jittered(0.0, rng))
    height = rng.uniform(0.6, 1.2)
    # Inside when below the apex's two sides and above the base: y runs down.
    base, apex = height / 2, -height / 2
    half_width_at = (across - apex) * rng.uniform(0.5, 0.7)
    return _soft_step(np.minimum(base - across, half_width_at - np.abs(along)), pixel)


def _plaid(rng, x, y, pixel):
    """Both diagonal gratings at once: a lattice of diamonds."""
    angle, period = _jittered(45.0, rng), rng.uniform(0.2, 0.4)
    phases = rng.uniform(0, 2 * np.pi, 2)
    first, _ = _rotated(x, y, angle)
    second, _ = _rotated(x, y, np.pi - angle)
    total = np.sin(2 * np.pi * first / period + phases[0]) + np.sin(2 * np.pi * second / period + phases[1])
    return _soft_sign(total / 2, rng.uniform(1.0, 4.0))


def _square_outline(rng, x, y, pixel):
    """The outline of a square, a few pixels thick."""
    along, across = _rotated(x - rng.uniform(-0.2, 0.2), y - rng.uniform(-0.2, 0.2), _jittered(0.0, rng))
    half_side, thickness = rng.uniform(0.3, 0.7), pixel * rng.uniform(2.0, 4.0)
    distance = np.abs(np.maximum(np.abs(along), np.abs(across)) - half_side)
    return _soft_step(thickness / 2 - distance, pixel)


_CLASSES: tuple[tuple[str, _Drawer], ...] = (
    ("vertical grating", _grating(0.0)),
    ("horizontal grating", _grating(90.0)),
    ("diagonal grating", _grating(45.0, 135.0)),
    ("checkerboard", _checkerboard),
    ("concentric rings", _rings),
    ("blob", _blob),
    ("edge", _edge),
    ("cross", _cross),
    ("zigzag", _zigzag),
    ("radial spokes", _spokes),
    # After the demo's 10, so that the demo leaves them out: dots teach conv1 centre-surround filters, which no
    # Gabor fits, where photographs teach mostly oriented edges (docs/benchmarks.md, "The demo").
    ("random dots", _random_dots),
    ("polka dots", _polka_dots),
    # With the dots, TRANSFER_CLASSES: a second task of classes the demo never saw, to fine-tune its network on.
    ("triangle", _triangle),
    ("plaid", _plaid),
    ("square outline", _square_outline),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in _CLASSES)
# The second task's classes (indices into CLASS_NAMES): none of them is among the demo's DEFAULT_NUM_CLASSES.
TRANSFER_CLASSES = tuple(range(DEFAULT_NUM_CLASSES, len(CLASS_NAMES)))
_DRAWERS: tuple[_Drawer, ...] = tuple(drawer for _, drawer in _CLASSES)


def ensure_demo_data(data_dir: str) -> None:
    """Generates the demo's raw images (in `data_dir`/raw) and prepares them in `data_dir`, unless prepared.

    `data_dir` may be on any tf.io.gfile file system; the raw images are then drawn in a local temporary folder
    (the same one every time, so an interrupted preparation resumes like any other). The last step writes
    VERSION_FILE; a prepared `data_dir` without this module's VERSION in it is a DataError.
    """
    import tempfile  # Imported here, with the preparation, to keep this module's imports those of drawing.

    from alexnet_tf import files
    from alexnet_tf.data import prepare, records

    version_path = files.join(data_dir, VERSION_FILE)
    if records.is_prepared(data_dir):
        found = (files.read_json(version_path) or {}).get("version")
        if found != VERSION:
            raise DataError(f"{data_dir} holds the demo data of an older alexnet_tf (version {found}, this "
                                   f"one draws version {VERSION}): delete it, or give another --data_dir")
        return
    local = "://" not in data_dir
    raw = os.path.join(data_dir, "raw") if local else os.path.join(
        tempfile.gettempdir(), f"alexnet_tf_demo_raw_v{VERSION}")
    if not os.path.isdir(raw):  # generate() writes the folder whole or not at all.
        generate(raw)
    prepare.prepare(raw, data_dir, stored_size=DEFAULT_SIZE, names_file=os.path.join(raw, NAMES_FILE))
    files.write_json(version_path, {"version": VERSION})
