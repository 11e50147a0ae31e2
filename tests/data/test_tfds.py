"""tools/prepare_imagenet.py --input_dir=tfds:imagenet2012, offline, through TFDS's real imagenet2012 builder.

The test writes tiny ILSVRC2012 tars: ILSVRC2012_img_train.tar holding one <wnid>.tar per class of
<wnid>_<n>.JPEG files, and ILSVRC2012_img_val.tar of ILSVRC2012_val_NNNNNNNN.JPEG files, which TFDS labels from
the validation_labels.txt it ships (sorted file names zipped with its lines), so the val images are the first
file names and the expected labels are that file's first lines. TFDS builds only the splits whose tars exist and
iterates only the classes present, so a few images suffice.
"""

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from alexnet_tf.data import records, sources
from tests import imagenet_like

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_VAL = 4
TRAIN_WNIDS = ("n01440764", "n01443537")  # Class indices 0 and 1 of TFDS's labels.txt.


def _tfds_file(name: str) -> list[str]:
    import tensorflow_datasets as tfds

    with open(os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012", name)) as f:
        return f.read().split()


def _jpeg(seed: int) -> bytes:
    output = io.BytesIO()
    Image.fromarray(imagenet_like.smooth_image(np.random.default_rng(seed), 20, 28)).save(output, format="JPEG")
    return output.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_tars(manual_dir: str) -> None:
    os.makedirs(manual_dir)
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as train:
        for c, wnid in enumerate(TRAIN_WNIDS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(3):
                    _add(tar, f"{wnid}_{i}.JPEG", _jpeg(10 * c + i))
            _add(train, f"{wnid}.tar", inner.getvalue())
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as val:
        for i in range(NUM_VAL):
            _add(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG", _jpeg(100 + i))


def _run(env_dir: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TFDS_DATA_DIR": env_dir, "NO_GCE_CHECK": "true"}
    return subprocess.run([sys.executable, "tools/prepare_imagenet.py", "--input_dir=tfds:imagenet2012",
                           "--stored_size=16", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_prepare_from_tfds_imagenet2012_tars_offline(tmp_path):
    tfds_dir, manual, out = str(tmp_path / "tfds"), str(tmp_path / "manual"), str(tmp_path / "out")
    # No tars yet: one line naming where they must go, and no partial output folder.
    result = _run(tfds_dir, f"--output_dir={out}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("prepare_imagenet: error: tfds:imagenet2012: TFDS cannot build it from "
                            f"{os.path.join(tfds_dir, 'downloads', 'manual')}") and "ILSVRC2012_img_train.tar" in error
    assert not os.path.exists(out)

    _write_tars(manual)
    names = tmp_path / "names.txt"
    names.write_text(f"{TRAIN_WNIDS[0]} tench, Tinca tinca\n")
    result = _run(tfds_dir, f"--output_dir={out}", f"--manual_dir={manual}", f"--names_file={names}")
    assert result.returncode == 0, result.stderr
    source = sources.open_source(out)
    wnids = _tfds_file("labels.txt")
    assert source.num_classes == 1000 and [w for w, _ in source.labels()[:3]] == wnids[:3]
    assert source.class_names()[:2] == ["tench, Tinca tinca", TRAIN_WNIDS[1]]  # Unnamed classes keep the wnid.
    assert source.num_examples("train") == 6 and source.num_examples("validation") == NUM_VAL
    import tensorflow as tf

    def labels(split):
        files = records.shard_files(out, split, int(source.info["splits"][split]["num_shards"]))
        return sorted(int(label) for _, label in tf.data.TFRecordDataset(files).map(records.parse_example)
                      .as_numpy_iterator())

    assert labels("train") == [0, 0, 0, 1, 1, 1]
    expected = sorted(wnids.index(w) for w in _tfds_file("validation_labels.txt")[:NUM_VAL])
    assert labels("validation") == expected
    assert tf.io.gfile.exists(os.path.join(out, "stats.npz"))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
