"""Preparation never loses or duplicates an image silently (alexnet_tf/data/prepare.py, ilsvrc.py), and works on
any tf.io.gfile file system (ram:// here), on files the tests write."""

import io
import os
import struct
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf import files
from alexnet_tf.data import pipeline, prepare, records, sources, stats
from alexnet_tf.errors import DataError
from tests import imagenet_like

STORED = 16
WNIDS = imagenet_like.WNIDS


def _photo(path, seed: int = 0) -> None:
    Image.fromarray(imagenet_like.smooth_image(np.random.default_rng(seed), 20, 24)).save(path, format="JPEG")


def _raw(root, per_class: int = 3, val_per_class: int = 1) -> str:
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c, wnid in enumerate(WNIDS):
            os.makedirs(root / split / wnid, exist_ok=True)
            for i in range(count):
                _photo(root / split / wnid / f"{wnid}_{i}.JPEG", seed=100 * c + i + 10 * (split == "val"))
    return str(root)


def _filenames(directory: str, split: str) -> list[str]:
    shards = sorted(tf.io.gfile.glob(files.join(directory, records.shard_pattern(split))))
    return [os.fsdecode(tf.train.Example.FromString(r).features.feature[records.FILENAME_KEY].bytes_list.value[0])
            for r in tf.data.TFRecordDataset(shards).as_numpy_iterator()]


def test_changed_input_after_an_interruption_starts_over_without_stale_shards(tmp_path, monkeypatch):
    raw, out = _raw(tmp_path / "raw", per_class=5), str(tmp_path / "out")  # 15 training images.
    encode, calls = prepare.encode_stored_image, []

    def failing_encode(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:  # In the third shard of 3 images.
            raise KeyboardInterrupt
        return encode(*args, **kwargs)

    monkeypatch.setattr(prepare, "encode_stored_image", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(raw, out, stored_size=STORED, images_per_shard=3, num_threads=1)
    assert tf.io.gfile.glob(os.path.join(out, "train-*-of-00005.tfrecord"))
    monkeypatch.setattr(prepare, "encode_stored_image", encode)
    for i in range(2):  # Two photos added before the rerun: 17 images, 6 shards.
        _photo(os.path.join(raw, "train", WNIDS[0], f"new_{i}.JPEG"), seed=900 + i)
    reports = prepare.prepare(raw, out, stored_size=STORED, images_per_shard=3, num_threads=1)
    assert reports["train"].num_examples == 17 and reports["train"].num_shards == 6
    shards = sorted(f for f in os.listdir(out) if f.startswith("train-"))
    assert shards == [records.shard_filename("train", i, 6) for i in range(6)]
    names = _filenames(out, "train")
    assert len(names) == len(set(names)) == 17
    assert sorted(names) == sorted(sources.open_source(raw).listing("train").paths)


def test_a_photo_with_a_file_name_that_is_not_utf8_is_kept(tmp_path):
    raw = _raw(tmp_path / "raw")
    name = os.fsencode(os.path.join(raw, "train", WNIDS[1])) + b"/caf\xe9.JPEG"
    _photo(name, seed=7)
    reports = prepare.prepare(raw, str(tmp_path / "out"), stored_size=STORED, images_per_shard=4)
    assert reports["train"].skipped == {} and reports["train"].num_examples == 10
    assert os.fsencode(os.path.join(raw, "train", WNIDS[1], os.fsdecode(b"caf\xe9.JPEG"))) == name
    assert name in [os.fsencode(n) for n in _filenames(str(tmp_path / "out"), "train")]


@pytest.mark.parametrize("kind", ["empty", "symlink"])
def test_class_folders_with_no_image_are_refused(tmp_path, kind):
    raw = _raw(tmp_path / "raw")
    if kind == "empty":
        os.makedirs(os.path.join(raw, "train", "n09999999"))
    else:
        os.symlink(os.path.join(raw, "train"), os.path.join(raw, "train", "n09999999"))
    with pytest.raises(DataError, match=r"train: class folders with no image \(n09999999\)"):
        prepare.prepare(raw, str(tmp_path / "out"), stored_size=STORED)
    assert not os.path.exists(tmp_path / "out")


def test_a_val_class_missing_from_train_is_reported_by_path(tmp_path):
    raw = _raw(tmp_path / "raw")
    os.makedirs(os.path.join(raw, "val", "n09999999"))
    stray = os.path.join(raw, "val", "n09999999", "x.JPEG")
    _photo(stray)
    reports = prepare.prepare(raw, str(tmp_path / "out"), stored_size=STORED)
    assert reports["validation"].num_examples == 3
    assert reports["validation"].skipped == {stray: "class n09999999 is not among the classes of train/"}
    info = records.read_dataset_info(str(tmp_path / "out"))
    assert info["splits"]["validation"]["skipped"] == reports["validation"].skipped


def test_a_huge_file_is_skipped_unread_by_path(tmp_path):
    raw = _raw(tmp_path / "raw")
    huge = os.path.join(raw, "train", WNIDS[2], "huge.JPEG")
    with open(huge, "wb") as f:  # A sparse 6 GB file: reading it whole would end in a MemoryError.
        f.truncate(6 * 2**30)
    reports = prepare.prepare(raw, str(tmp_path / "out"), stored_size=STORED)
    assert list(reports["train"].skipped) == [huge] and reports["train"].num_examples == 9
    assert reports["train"].skipped[huge] == f"{6 * 2**30} bytes, over the limit of {prepare.DEFAULT_MAX_FILE_BYTES} " \
                                             "(max_file_bytes)"


def test_a_jpeg_whose_header_claims_13000_pixels_square_is_skipped_not_stored_grey(tmp_path):
    raw = _raw(tmp_path / "raw")
    output = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(output, format="JPEG")
    data = bytearray(output.getvalue())
    sof = data.find(b"\xff\xc0")  # Baseline frame header: marker, length, precision, height, width.
    data[sof + 5:sof + 9] = struct.pack(">HH", 13000, 13000)
    bogus = os.path.join(raw, "train", WNIDS[0], "bogus.JPEG")
    with open(bogus, "wb") as f:
        f.write(bytes(data))
    reports = prepare.prepare(raw, str(tmp_path / "out"), stored_size=STORED)
    assert list(reports["train"].skipped) == [bogus]
    assert reports["train"].skipped[bogus].startswith("its header claims 13000x13000 pixels, over the limit")


def test_prepare_and_read_on_ram_filesystem(tmp_path):
    raw, out = _raw(tmp_path / "raw"), "ram://prepared_test/out"
    reports = prepare.prepare(raw, out, stored_size=STORED, images_per_shard=4)
    assert reports["train"].num_shards == 3 and not os.path.exists("ram:")
    listed = {name.rstrip("/") for name in tf.io.gfile.listdir(out)}
    assert listed == {records.DATASET_INFO_FILENAME, records.LABELS_FILENAME, stats.STATS_FILENAME,
                      prepare.PROGRESS_DIR, records.shard_filename("validation", 0, 1),
                      *(records.shard_filename("train", i, 3) for i in range(3))}
    source = sources.open_source(out)
    assert source.num_examples("train") == 9 and source.class_names() == list(WNIDS)
    assert source.stats_path() == files.join(out, stats.STATS_FILENAME)
    images, labels = zip(*pipeline.make_eval_dataset(pipeline.DataConfig(out), 4, 12).as_numpy_iterator())
    assert np.concatenate(labels).tolist() == [0, 1, 2] and np.concatenate(images).shape == (3, 12, 12, 3)
    batches = list(pipeline.make_train_dataset(pipeline.DataConfig(out), 3, 12, seed=0).as_numpy_iterator())
    assert len(batches) == 3 and sorted(np.concatenate([b[1] for b in batches]).tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
