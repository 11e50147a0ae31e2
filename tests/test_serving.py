"""Serving under hostile requests: bounded memory per image, clear errors, no XLA, saved_model_cli's recipe.

The SavedModel is the colour classifier's (tests/colour_classifier.py: a solid image's class is the nearest
prototype colour) with a 256 px stored size, so a request's answer is known. Serving runs in fresh interpreters
that cannot import alexnet_tf, as TensorFlow Serving would.
"""

import io
import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from alexnet_tf import serving
from alexnet_tf.data import augment, pipeline
from alexnet_tf.model import build_alexnet
from alexnet_tf.model.npy_weights import load_npy_weights
from tests import colour_classifier as cc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLUE = 2  # cc.NAMES[2]; colour_classifier names only RED, GREEN, CYAN.
STORED_SIZE = 256  # ImageNet's: what made a 1-pixel-high image cost 256 x 256 times its width.
# Loading the SavedModel and answering a 500 x 375 JPEG peaks at 1.9 GB of address space; the old transform
# could not answer a 1 x 10000 PNG (8 GB resident without a limit) under this.
ADDRESS_SPACE_LIMIT = 3 << 30


def encoded(image: np.ndarray, format: str, **options) -> bytes:
    output = io.BytesIO()
    Image.fromarray(image).save(output, format=format, **options)
    return output.getvalue()


def solid(colour: int, height: int, width: int) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(cc.PROTOTYPES[colour].astype(np.uint8), (height, width, 3)))


def jpeg_claiming(height: int, width: int) -> bytes:
    """A 16 x 16 JPEG whose SOF0 marker claims height x width (the scan data stays the small image's)."""
    data = bytearray(encoded(solid(cc.RED, 16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_claiming(height: int, width: int) -> bytes:
    """A lossless 2 x 2 WebP whose VP8L header claims height x width (14-bit fields less one, from byte 21)."""
    data = bytearray(encoded(solid(cc.RED, 2, 2), "WEBP", lossless=True))
    bits = int.from_bytes(data[21:25], "little")
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    data[21:25] = bits.to_bytes(4, "little")
    return bytes(data)


def png_claiming(height: int, width: int) -> bytes:
    data = bytearray(encoded(solid(cc.RED, 2, 2), "PNG"))
    data[16:24] = struct.pack(">II", width, height)  # IHDR's CRC is now wrong too: never read.
    return bytes(data)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> str:
    model = build_alexnet(num_classes=len(cc.NAMES), width=cc.WIDTH, image_size=cc.IMAGE_SIZE, lrn=False,
                          towers=1, groups=2)
    load_npy_weights(model, cc.weights())
    preprocess = pipeline.make_eval_transform(pipeline.DataConfig(None, mean="none", stored_size=STORED_SIZE),
                                              cc.IMAGE_SIZE, any_image=True)
    path = str(tmp_path_factory.mktemp("serving") / "export")
    serving.make_archive(model, preprocess, cc.NAMES).write_out(path, verbose=False)
    return path


def fresh_python(script: str, *args: str, env: dict | None = None, cwd: str, timeout: float = 240):
    """Runs `script` in an interpreter that cannot import alexnet_tf (no PYTHONPATH, cwd outside the repo)."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=timeout)


# Serves every file of REQUEST_DIR alone, under an address-space limit; prints one JSON line: per file, the
# top label or the error's type and message (and the seconds it took, for a reader of the output).
HOSTILE_SCRIPT = r"""
import glob, json, os, resource, sys, time
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import tensorflow as tf
sys.modules["alexnet_tf"] = None  # Installed or not, any import of the package now fails.
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = {}
for path in sorted(glob.glob(os.path.join(sys.argv[2], "*"))):
    start = time.perf_counter()
    try:
        answer = serve(images=tf.constant([open(path, "rb").read()]))["labels"].numpy()[0, 0].decode()
    except tf.errors.OpError as error:
        answer = f"{type(error).__name__}: {error.message}"
    out[os.path.basename(path)] = [answer, time.perf_counter() - start]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_hostile_images_are_answered_or_refused_quickly_in_bounded_memory(export_dir, tmp_path):
    requests = tmp_path / "requests"
    requests.mkdir()
    files = {
        "a_normal.jpg": encoded(solid(cc.GREEN, 375, 500), "JPEG", quality=95),  # Passes under the limit.
        "png_1x10000.png": encoded(solid(cc.CYAN, 1, 10000), "PNG"),  # 8 GB and 62 s before.
        "png_1x65000.png": encoded(solid(cc.CYAN, 1, 65000), "PNG"),  # The 142 bytes, 4.7 GB.
        "png_1x1000000.png": encoded(solid(BLUE, 1, 1000000), "PNG"),  # A 62 GB tensor asked for.
        "png_65000x1.png": encoded(solid(BLUE, 65000, 1), "PNG"),
        "webp_1x16383.webp": encoded(solid(cc.CYAN, 1, 16383), "WEBP", lossless=True),  # 13 GB, 88 s.
        "jpeg_claims_13000x13000.jpg": jpeg_claiming(13000, 13000),  # 1.2 GB, then a made-up answer.
        "webp_claims_16383x16383.webp": webp_claiming(16383, 16383),
        "png_claims_7072x7072.png": png_claiming(7072, 7072),  # Just over 50 MP.
    }
    for name, data in files.items():
        (requests / name).write_bytes(data)
    process = fresh_python(HOSTILE_SCRIPT, export_dir, str(requests), str(ADDRESS_SPACE_LIMIT), cwd=str(tmp_path))
    assert process.returncode == 0, process.stderr[-3000:]
    out = json.loads(process.stdout.strip().splitlines()[-1])

    assert out["a_normal.jpg"][0] == "green"
    # The central square of a strip is a pixel or two: upscaled, a solid image of the strip's colour.
    for name, colour in [("png_1x10000.png", "cyan"), ("png_1x65000.png", "cyan"), ("png_1x1000000.png", "blue"),
                         ("png_65000x1.png", "blue"), ("webp_1x16383.webp", "cyan")]:
        assert out[name][0] == colour, (name, out[name])
    for name, claim in [("jpeg_claims_13000x13000.jpg", "[13000 13000]"),
                        ("webp_claims_16383x16383.webp", "[16383 16383]"),
                        ("png_claims_7072x7072.png", "[7072 7072]")]:
        answer = out[name][0]
        assert answer.startswith("InvalidArgumentError: ") and "larger than 50000000 pixels" in answer, answer
        assert claim in answer


def old_resize_shorter_and_centre_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The transform before crop-first: resize the whole image, then crop its centre."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    new_shape = tf.maximum(tf.cast(tf.round(shape * (size / tf.reduce_min(shape))), tf.int32), size)
    resized = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
    return tf.saturate_cast(tf.round(augment.central_crop(resized, size)), tf.uint8)


def test_crop_first_resize_equals_resizing_the_whole_image_to_float_rounding():
    rng = np.random.default_rng(0)
    shapes = [(375, 500, 256), (500, 375, 256), (333, 500, 256), (300, 260, 256), (120, 90, 256), (50, 70, 256),
              (64, 64, 256), (257, 256, 256), (90, 200, 256), (1, 1000, 256), (1000, 3, 256), (2000, 3000, 256),
              (100, 101, 67), (257, 999, 67), (40, 30, 16), (12, 20, 16)]
    differing = total = 0
    for height, width, size in shapes:
        image = tf.constant(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        new = augment.resize_shorter_and_centre_crop(image, size).numpy().astype(int)
        old = old_resize_shorter_and_centre_crop(image, size).numpy().astype(int)
        assert new.shape == (size, size, 3)
        assert np.abs(new - old).max() <= 1, (height, width)
        differing, total = differing + np.count_nonzero(new != old), total + new.size
    assert differing / total < 2e-3  # 0.09% measured: values within half a level of .5, rounded the other way.
    # A solid 1 x 65000 strip is its colour everywhere (the old transform asked for 256 x 16640000 floats).
    strip_image = tf.constant(solid(cc.CYAN, 1, 65000))
    np.testing.assert_array_equal(augment.resize_shorter_and_centre_crop(strip_image, 256),
                                  np.broadcast_to(cc.PROTOTYPES[cc.CYAN], (256, 256, 3)))


@pytest.mark.parametrize("format, options", [("JPEG", {}), ("PNG", {}), ("GIF", {}), ("BMP", {}),
                                             ("WEBP", {"lossless": True}), ("WEBP", {"quality": 80}),
                                             ("WEBP", {"lossless": True, "exif": b"Exif\0\0"})])
def test_header_sizes_are_the_decoded_sizes(format, options):
    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    data = encoded(image, format, **options)
    index, height_width = augment.image_format_and_size(tf.constant(data))
    assert augment.IMAGE_FORMATS[int(index)].upper() == format
    assert height_width.numpy().tolist() == [37, 53]
    assert augment.decode_bounded(tf.constant(data)).shape == (37, 53, 3)


def test_decode_bounded_refuses_before_decoding():
    with pytest.raises(tf.errors.InvalidArgumentError, match="Input is empty"):
        augment.decode_bounded(tf.constant(b""))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format: an image must be one "
                                                             "of JPEG, PNG, GIF, BMP, WebP"):
        augment.decode_bounded(tf.constant(b"\xff\x0a" + bytes(40)))  # A JPEG XL codestream's signature.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"larger than 2000 pixels(.|\n)*40,? 51"):
        augment.decode_bounded(tf.constant(encoded(solid(cc.RED, 40, 51), "PNG")), max_pixels=2000)
    assert augment.decode_bounded(tf.constant(encoded(solid(cc.RED, 40, 50), "PNG")), max_pixels=2000).shape == (
        40, 50, 3)


def test_empty_batches_and_non_finite_inputs_are_refused(export_dir):
    signatures = tf.saved_model.load(export_dir).signatures
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"serving_default: no images \(N = 0\)"):
        signatures["serving_default"](images=tf.constant([], tf.string))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"predict_images: no images \(N = 0\)"):
        signatures["predict_images"](images=tf.zeros([0, cc.IMAGE_SIZE, cc.IMAGE_SIZE, 3]))
    images = np.full([2, cc.IMAGE_SIZE, cc.IMAGE_SIZE, 3], 100, np.float32)
    for bad in (np.nan, np.inf):
        images[1, 5, 7, 2] = bad
        with pytest.raises(tf.errors.InvalidArgumentError, match="predict_images: images hold NaN or Inf"):
            signatures["predict_images"](images=tf.constant(images))
    images[1] = cc.PROTOTYPES[cc.CYAN]
    logits = signatures["predict_images"](images=tf.constant(images))["logits"].numpy()
    np.testing.assert_allclose(logits[1], cc.logits(cc.PROTOTYPES[[cc.CYAN]])[0], rtol=1e-4, atol=1e-4)


def xla_marked(export_dir: str) -> list[str]:
    """Functions and nodes of the SavedModel's graph whose `_XlaMustCompile` attribute is true."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    marked = []
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        functions = list(graph.library.function)
        for function in functions:
            if function.attr["_XlaMustCompile"].b:
                marked.append(f"function {function.signature.name}")
        nodes = list(graph.node) + [node for function in functions for node in function.node_def]
        marked += [f"node {node.name}" for node in nodes if node.attr["_XlaMustCompile"].b]
    return marked


# Serves an image with XLA's auto-clustering off and TensorFlow's INFO log on (where "Compiled cluster using
# XLA" would appear); prints the top label.
NO_XLA_SCRIPT = r"""
import sys
import tensorflow as tf
sys.modules["alexnet_tf"] = None  # Installed or not, any import of the package now fails.
tf.config.optimizer.set_jit(False)
model = tf.saved_model.load(sys.argv[1])
answer = model.signatures["serving_default"](images=tf.constant([open(sys.argv[2], "rb").read()]))
print(answer["labels"].numpy()[0, 0].decode())
"""


@pytest.mark.slow
def test_the_export_holds_nothing_xla_only_and_serves_without_the_jit(export_dir, tmp_path):
    assert xla_marked(export_dir) == []
    image = tmp_path / "cyan.png"
    image.write_bytes(encoded(solid(cc.CYAN, 90, 120), "PNG"))
    process = fresh_python(NO_XLA_SCRIPT, export_dir, str(image), cwd=str(tmp_path),
                           env={"TF_XLA_FLAGS": "--tf_xla_auto_jit=-1", "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.strip().splitlines()[-1] == "cyan"
    assert "Compiled cluster using XLA" not in process.stderr
    assert "XlaLaunch" not in process.stderr and "_XlaMustCompile" not in process.stderr


def docs_recipe() -> list[str]:
    """The commands of docs/serving.md's block marked as tested by the next test."""
    text = open(os.path.join(REPO, "docs", "serving.md")).read()
    match = re.search(r"<!-- tested: tests/test_serving.py::test_saved_model_cli_recipe_from_the_docs -->\n"
                      r"```sh\n(.*?)```", text, re.S)
    assert match, "docs/serving.md lost its tested saved_model_cli recipe"
    return [line for line in match.group(1).splitlines() if line.strip()]


@pytest.mark.slow
def test_saved_model_cli_recipe_from_the_docs(export_dir, tmp_path):
    commands = docs_recipe()
    assert [c.split()[0] for c in commands] == ["python", "saved_model_cli"]
    image = tmp_path / "photo.jpg"
    image.write_bytes(encoded(solid(cc.CYAN, 200, 300), "JPEG", quality=95))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # The venv's saved_model_cli.
    outputs = []
    for command in commands:
        command = command.replace("/tmp/alexnet_export", export_dir).replace("/tmp/request.npy",
                                                                              str(tmp_path / "request.npy"))
        command = re.sub(r"^python ", f"{sys.executable} ", command)
        process = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=240)
        assert process.returncode == 0, (command, process.stderr[-3000:])
        outputs.append(process.stdout)
    printed = outputs[-1]
    labels = re.search(r"Result for output key labels:\n(.*?)\n(Result|$)", printed, re.S).group(1)
    assert labels.split()[0].strip("[]") == "b'cyan'", printed
    classes = re.search(r"Result for output key classes:\n\[\[\s*(\d+)", printed).group(1)
    assert int(classes) == cc.CYAN


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
