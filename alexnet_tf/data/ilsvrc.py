"""Listing an ILSVRC-layout folder: `train/<wnid>/*.JPEG`, and `val/<wnid>/*.JPEG` or a flat `val/` labelled by a
ground-truth file.

Classes are the sorted wnids of train/'s sub-folders (else val/'s): n01440764 -> 0 for ImageNet. Nothing is
dropped silently: a class folder with no image is refused (an empty folder, or a symlink back into train/, would
otherwise become a class no example has), and a val/ image of a class train/ lacks is listed in `Listing.skipped`
with the reason, for the skip report.

Paths are str; a local file name that is not UTF-8 comes through as os.listdir gives it (surrogate escapes), and
`fs_path` turns it back into the bytes the file system knows. Local folders are listed with os.scandir because
tf.io.gfile.listdir raises UnicodeDecodeError for a folder holding such a name; other file systems (gs://, ...) go
through tf.io.gfile.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from alexnet_tf import files
from alexnet_tf.data import records
from alexnet_tf.errors import DataError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
SPLIT_DIRS = {records.TRAIN: "train", records.VALIDATION: "val"}  # Split -> folder of an ILSVRC layout.


@dataclasses.dataclass(frozen=True)
class Listing:
    """One split: `paths` (sorted), their `labels` and `sizes` (bytes), and {path: reason} of files left out."""

    paths: list[str]
    labels: list[int]
    sizes: list[int]
    skipped: dict[str, str]


def fs_path(path: str) -> bytes:
    """The bytes naming `path` to the file system (undoes os.listdir's surrogate escapes)."""
    return os.fsencode(path)


def _is_url(path: str) -> bool:
    return "://" in path


def isdir(path: str) -> bool:
    return tf.io.gfile.isdir(path) if _is_url(path) else os.path.isdir(fs_path(path))


def _entries(folder: str) -> list[tuple[str, bool, int]]:
    """(name, is a folder, size in bytes) of `folder`'s entries, symlinks followed, sorted by name."""
    if _is_url(folder):
        entries = []
        for name in tf.io.gfile.listdir(folder):
            name = name.rstrip("/")
            path = files.join(folder, name)
            is_dir = tf.io.gfile.isdir(path)
            entries.append((name, is_dir, 0 if is_dir else tf.io.gfile.stat(path).length))
        return sorted(entries)
    entries = []
    with os.scandir(folder) as scan:
        for entry in scan:
            try:
                is_dir = entry.is_dir()
                entries.append((entry.name, is_dir, 0 if is_dir else entry.stat().st_size))
            except OSError:  # A dangling symlink: a file that cannot be read, listed so the report names it.
                entries.append((entry.name, False, -1))
    return sorted(entries)


def _image_files(folder: str) -> list[tuple[str, int]]:
    return [(files.join(folder, name), size) for name, is_dir, size in _entries(folder)
            if not is_dir and name.lower().endswith(IMAGE_EXTENSIONS)]


def read_names_file(path: str) -> dict[str, str]:
    """wnid -> human-readable name, from `wnid name...` lines (LOC_synset_mapping.txt, words.txt)."""
    names = {}
    with tf.io.gfile.GFile(path) as f:
        for line in f.read().splitlines():
            parts = line.strip().split(None, 1)
            if parts:
                names[parts[0]] = parts[1] if len(parts) > 1 else parts[0]
    return names


def wnids(root: str) -> list[str]:
    """The classes of an ILSVRC folder in index order: sorted wnids (sub-folders of train/, else of val/).

    Raises DataError if there are none, or if a class folder holds no image.
    """
    for split_dir in SPLIT_DIRS.values():
        folder = files.join(root, split_dir)
        classes = [name for name, is_dir, _ in _entries(folder) if is_dir] if isdir(folder) else []
        if classes:
            empty = [name for name in classes if not _image_files(files.join(folder, name))]
            if empty:
                raise DataError(f"{folder}: class folders with no image ({', '.join(empty[:5])}"
                                f"{', ...' if len(empty) > 5 else ''}): remove them or fill them, or they become "
                                "classes no example has")
            return classes
    raise records.not_prepared(root, "no class folders under train/ or val/")


def read_val_labels(path: str, files: list[str]) -> list[str]:
    """The wnid of each of `files` (sorted paths of a flat val/ folder) from a ground-truth file.

    Accepted formats: one wnid per line in file-name order (TFDS's imagenet2012_validation_labels.txt), or
    `<image id or file name>[ ,]<wnid> ...` lines (Kaggle's LOC_val_solution.csv, header allowed). The devkit's
    ILSVRC2012_validation_ground_truth.txt holds ILSVRC2012_IDs, which are not in wnid order; convert it first.
    """
    with tf.io.gfile.GFile(path) as f:
        rows = [line.replace(",", " ").split() for line in f.read().splitlines() if line.strip()]
    if rows and all(len(row) == 1 for row in rows):
        if rows[0][0].isdigit():
            raise DataError(f"{path}: integer labels (devkit ILSVRC2012_IDs) are not in wnid order; give one "
                            "wnid per line, or `file wnid` lines")
        if len(rows) != len(files):
            raise DataError(f"{path}: {len(rows)} labels for {len(files)} validation images")
        return [row[0] for row in rows]
    by_id = {os.path.splitext(row[0])[0]: row[1] for row in rows if len(row) > 1}
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    missing = [s for s in stems if s not in by_id]
    if missing:
        raise DataError(f"{path}: no label for {len(missing)} validation images, e.g. {missing[0]}")
    return [by_id[s] for s in stems]


def list_split(root: str, split: str, *, val_labels: str | None = None) -> Listing:
    """The images of `split` ('train' or 'validation') of the ILSVRC folder `root`; labels index `wnids(root)`."""
    classes = wnids(root)
    index = {wnid: i for i, wnid in enumerate(classes)}
    folder = files.join(root, SPLIT_DIRS[split])
    if not isdir(folder):
        raise records.not_prepared(root, f"no {SPLIT_DIRS[split]}/ folder for the {split} split")
    class_dirs = [name for name, is_dir, _ in _entries(folder) if is_dir]
    rows, skipped = [], {}
    if class_dirs:
        for name in class_dirs:
            images = _image_files(files.join(folder, name))
            if name in index:
                rows.extend((path, index[name], size) for path, size in images)
            else:
                skipped.update((path, f"class {name} is not among the classes of {SPLIT_DIRS[records.TRAIN]}/")
                               for path, _ in images)
    else:
        images = _image_files(folder)
        if val_labels is None:
            raise DataError(f"{folder} is a flat folder: its labels need a ground-truth file (val_labels)")
        labels = read_val_labels(val_labels, [path for path, _ in images])
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise DataError(f"{val_labels}: wnids not among the training classes, e.g. {unknown[0]}")
        rows = [(path, index[wnid], size) for (path, size), wnid in zip(images, labels)]
    rows.sort()
    return Listing([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], dict(sorted(skipped.items())))
