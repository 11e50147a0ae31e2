"""Tests for alexnet_tf/data/prepare.py and tools/prepare_imagenet.py, on data made here."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf.data import ilsvrc, pipeline, prepare, records, sources
from alexnet_tf.errors import ConfigError, DataError
from tests import imagenet_like

STORED = 32
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _decode(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG" and image.mode == "RGB"
        return np.asarray(image)


def _records(directory: str, split: str) -> list[tuple[int, str, bytes]]:
    files = sorted(tf.io.gfile.glob(os.path.join(directory, f"{split}-*.tfrecord")))
    rows = []
    for record in tf.data.TFRecordDataset(files).as_numpy_iterator():
        feature = tf.train.Example.FromString(record).features.feature
        rows.append((feature[records.LABEL_KEY].int64_list.value[0],
                     os.fsdecode(feature[records.FILENAME_KEY].bytes_list.value[0]),
                     feature[records.ENCODED_KEY].bytes_list.value[0]))
    return rows


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("raw"))
    return root, imagenet_like.write_ilsvrc(root)


@pytest.mark.parametrize("kind", ["grayscale", "cmyk", "png", "small"])
def test_odd_files_come_through_as_rgb_squares(raw, kind):
    with open(raw[1][kind], "rb") as f:
        data = f.read()
    stored = _decode(prepare.encode_stored_image(data, STORED))
    assert stored.shape == (STORED, STORED, 3) and stored.dtype == np.uint8
    with Image.open(raw[1][kind]) as original:
        expected = np.asarray(original.convert("RGB").resize((STORED, STORED)), np.float32)
    # The originals are smooth gradients, so after different resamplers and a JPEG round trip the mean colour
    # matches closely: CMYK in particular comes back in its true colours, not inverted.
    np.testing.assert_allclose(stored.mean(axis=(0, 1)), expected.mean(axis=(0, 1)), atol=4)


def test_stored_image_is_the_centre_square_of_the_rescaled_image():
    image = np.zeros((40, 80, 3), np.uint8)  # Wide: left quarter red, middle half green, right quarter blue.
    image[:, :20] = (255, 0, 0)
    image[:, 20:60] = (0, 255, 0)
    image[:, 60:] = (0, 0, 255)
    output = io.BytesIO()
    Image.fromarray(image).save(output, format="PNG")
    stored = _decode(prepare.encode_stored_image(output.getvalue(), STORED)).astype(int)
    # The shorter side (40) becomes 32; the central 32 of the 64 rescaled columns is the green half.
    assert stored.shape == (STORED, STORED, 3)
    np.testing.assert_allclose(stored[:, 2:-2].mean(axis=(0, 1)), (0, 255, 0), atol=6)


def test_truncated_file_raises_a_decode_error(raw):
    with open(raw[1]["truncated"], "rb") as f:
        with pytest.raises(OSError, match="(?i)truncated"):  # Pillow's, which prepare reports per file.
            prepare.encode_stored_image(f.read(), STORED)


def test_prepare_writes_shards_labels_info_and_skip_report(raw, tmp_path):
    root, odd = raw
    reports = prepare.prepare(root, str(tmp_path), stored_size=STORED, images_per_shard=5, num_threads=2,
                              names_file=odd["names"])
    # 3 classes x 4 images + 5 odd files in train, one of them undecodable; 3 x 2 in val.
    assert reports["train"].num_examples == 16 and list(reports["train"].skipped) == [odd["truncated"]]
    assert reports["train"].skipped[odd["truncated"]].startswith("cannot decode it")
    assert reports["train"].num_shards == 4 and reports["validation"].num_shards == 2
    with open(tmp_path / "labels.txt") as f:
        assert f.read() == "0\tn01440764\ttench\n1\tn01443537\tgoldfish\n2\tn01484850\tgreat white shark\n"
    with open(tmp_path / "dataset_info.json") as f:
        info = json.load(f)
    assert info["stored_size"] == STORED and info["num_classes"] == 3
    assert info["splits"]["train"]["num_examples"] == 16 and info["splits"]["validation"]["num_examples"] == 6
    train = _records(str(tmp_path), "train")
    listing = ilsvrc.list_split(root, "train")
    paths, labels = listing.paths, listing.labels
    expected = {p: label for p, label in zip(paths, labels) if p != odd["truncated"]}
    assert {path: label for label, path, _ in train} == expected
    assert all(_decode(jpeg).shape == (STORED, STORED, 3) for _, _, jpeg in train)
    assert [label for label, _, _ in train] != sorted(label for label, _, _ in train)  # Classes are mixed.
    validation = _records(str(tmp_path), "validation")
    listing = ilsvrc.list_split(root, "validation")
    assert [(label, path) for label, path, _ in validation] == list(zip(listing.labels, listing.paths))  # Sorted.


def test_interrupted_preparation_resumes_without_redoing_finished_shards(raw, tmp_path, monkeypatch):
    root, _ = raw
    encode = prepare.encode_stored_image
    calls = []

    def failing_encode(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:  # In the second shard of 5 images.
            raise KeyboardInterrupt
        return encode(*args, **kwargs)

    monkeypatch.setattr(prepare, "encode_stored_image", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(root, str(tmp_path), stored_size=STORED, images_per_shard=5, num_threads=1)
    done = sorted(os.listdir(tmp_path / prepare.PROGRESS_DIR))
    # The first shard is done, the interrupted one is not, and the one a worker may have started meanwhile is
    # finished or absent, never half-written.
    assert done[:2] == ["settings.json", "train-00000-of-00004.tfrecord.json"] and len(done) <= 3
    assert not (tmp_path / "train-00001-of-00004.tfrecord").exists()
    # The interrupted shard's partial file (files.PARTIAL_PREFIX) is never a shard: its next write replaces it.
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("train-")) == [
        name[:-len(".json")] for name in done[1:]]
    with pytest.raises(DataError, match="prepare_imagenet.py"):
        pipeline.make_train_dataset(pipeline.DataConfig(str(tmp_path)), 2)
    first_shard = (tmp_path / "train-00000-of-00004.tfrecord").stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(prepare, "encode_stored_image", lambda *a, **k: calls.append(1) or encode(*a, **k))
    prepare.prepare(root, str(tmp_path), stored_size=STORED, images_per_shard=5, num_threads=1)
    assert len(calls) == 17 + 6 - 5 * (len(done) - 1)  # Every image but those of the finished shards.
    assert (tmp_path / "train-00000-of-00004.tfrecord").stat().st_mtime_ns == first_shard
    fresh = tmp_path / "fresh"
    monkeypatch.setattr(prepare, "encode_stored_image", encode)
    prepare.prepare(root, str(fresh), stored_size=STORED, images_per_shard=5, num_threads=2)
    for split in ("train", "validation"):
        assert _records(str(tmp_path), split) == _records(str(fresh), split)
    with pytest.raises(ConfigError, match="other settings"):
        prepare.prepare(root, str(tmp_path), stored_size=STORED + 1, images_per_shard=5)


def test_flat_val_folder_with_ground_truth_files(tmp_path):
    root = tmp_path / "raw"
    imagenet_like.write_ilsvrc(str(root), per_class=1, val_per_class=0)
    for wnid in imagenet_like.WNIDS:
        os.rmdir(root / "val" / wnid)
    for i, wnid in enumerate([imagenet_like.WNIDS[2], imagenet_like.WNIDS[0]]):
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    (root / "one_per_line.txt").write_text(f"{imagenet_like.WNIDS[2]}\n{imagenet_like.WNIDS[0]}\n")
    (root / "solution.csv").write_text(f"ImageId,PredictionString\nILSVRC2012_val_00000002,{imagenet_like.WNIDS[0]} "
                                       f"1 2 3 4\nILSVRC2012_val_00000001,{imagenet_like.WNIDS[2]} 5 6 7 8\n")
    (root / "devkit.txt").write_text("490\n361\n")
    for labels_file in ("one_per_line.txt", "solution.csv"):
        listing = ilsvrc.list_split(str(root), "validation", val_labels=str(root / labels_file))
        paths, labels = listing.paths, listing.labels
        assert [os.path.basename(p) for p in paths] == ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG"]
        assert labels == [2, 0]
    with pytest.raises(DataError, match="not in wnid order"):
        ilsvrc.list_split(str(root), "validation", val_labels=str(root / "devkit.txt"))
    with pytest.raises(DataError, match="ground-truth"):
        ilsvrc.list_split(str(root), "validation")


def test_tfds_source(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=5):
        reports = prepare.prepare("tfds:imagenette", str(tmp_path), stored_size=STORED, images_per_shard=4)
    assert {split: r.num_examples for split, r in reports.items()} == {"train": 5, "validation": 5}
    assert sources.open_source(str(tmp_path)).num_classes == 10
    assert all(_decode(jpeg).shape == (STORED, STORED, 3) for _, _, jpeg in _records(str(tmp_path), "train"))


def _run_tool(*args):
    return subprocess.run([sys.executable, "tools/prepare_imagenet.py", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_tool_prepares_and_rejects_bad_flags(raw, tmp_path):
    root, _ = raw
    result = _run_tool(f"--input_dir={root}", f"--output_dir={tmp_path}", f"--stored_size={STORED}")
    assert result.returncode == 0, result.stderr
    assert "train 16 images (1 skipped)" in result.stdout and "truncated.JPEG" in result.stderr
    result = _run_tool(f"--input_dir={root}", f"--output_dir={tmp_path}", "--jpeg_quality=0")
    assert result.returncode != 0 and "--jpeg_quality" in result.stderr and "Traceback" not in result.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
