"""The export binary: a SavedModel that plain TensorFlow serves, with evaluation's preprocessing."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

from alexnet_tf import cli, errors, export, serving
from alexnet_tf.data import ilsvrc, pipeline, records
from alexnet_tf.model import build_alexnet
from alexnet_tf.model.npy_weights import load_npy_weights, npy_weights
from tests import colour_classifier as cc
from tests import imagenet_like
from tests.flag_parsing import flag_parser
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOWER_DEVICES = ("/CPU:0", "/CPU:1")  # conftest.py's two logical devices.

# Runs in a fresh interpreter that cannot import alexnet_tf: loads the SavedModel with TensorFlow alone and
# prints the answers to every request in REQUEST_DIR as one JSON line.
SERVE_SCRIPT = r"""
import glob, json, os, sys
import numpy as np
import tensorflow as tf

sys.modules["alexnet_tf"] = None  # Installed or not, any import of the package now fails.
export_dir, request_dir = sys.argv[1:]
model = tf.saved_model.load(export_dir)
serve, predict = model.signatures["serving_default"], model.signatures["predict_images"]

def read(pattern):
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(request_dir, pattern)))}

good = read("good/*")
answer = serve(images=tf.constant(list(good.values())))
out = {"files": list(good), "serving": {k: v.numpy().tolist() for k, v in answer.items() if k != "labels"}}
out["serving"]["labels"] = [[s.decode() for s in row] for row in answer["labels"].numpy()]
floats = np.load(os.path.join(request_dir, "floats.npy"))
out["predict"] = {k: v.numpy().tolist() for k, v in predict(images=tf.constant(floats)).items()}
out["errors"] = {}
for name, data in read("bad/*").items():
    try:
        serve(images=tf.constant([list(good.values())[0], data]))
        out["errors"][name] = None
    except tf.errors.InvalidArgumentError as error:
        out["errors"][name] = error.message
try:
    predict(images=tf.zeros([1, 68, 68, 3]))  # conv1 would compute as many outputs as at the right size, 67.
    out["errors"]["wrong_size"] = None
except tf.errors.InvalidArgumentError as error:
    out["errors"]["wrong_size"] = error.message
assert sys.modules["alexnet_tf"] is None  # Never imported: loading and serving took TensorFlow alone.
print(json.dumps(out))
"""


@pytest.fixture
def parse():
    """The export binary's flag parser."""
    return flag_parser(export)


def encoded(image: np.ndarray, format: str, mode: str | None = None) -> bytes:
    output = io.BytesIO()
    Image.fromarray(image, mode).save(output, format=format, **({"quality": 95} if format == "JPEG" else {}))
    return output.getvalue()


def solid(colour, height, width, channels=3) -> np.ndarray:
    pixel = list(cc.PROTOTYPES[colour].astype(np.uint8)) + [255] * (channels - 3)
    return np.ascontiguousarray(np.broadcast_to(np.array(pixel, np.uint8), (height, width, channels)))


def placed_colour_checkpoint(path) -> str:
    """The colour classifier as the paper's two towers, placed on two devices, saved as .keras."""
    model = build_alexnet(num_classes=len(cc.NAMES), width=cc.WIDTH, image_size=cc.IMAGE_SIZE, lrn=False,
                          tower_devices=TOWER_DEVICES)
    load_npy_weights(model, cc.weights())
    model.save(path)
    return str(path)


@pytest.mark.slow
def test_placed_two_tower_model_exports_and_serves_without_the_package(parse, tmp_path):
    data_dir = cc.prepared_dataset(str(tmp_path / "data"))
    export_dir = str(tmp_path / "export")
    results = export.run(parse(f"--checkpoint={placed_colour_checkpoint(tmp_path / 'towers.keras')}",
                               f"--data_dir={data_dir}", "--mean=none", f"--export_dir={export_dir}"))
    assert results["signatures"] == ["serving_default", "predict_images"] and results["num_classes"] == 6

    requests = tmp_path / "requests"
    for folder in ("good", "bad"):
        os.makedirs(requests / folder)
    good = {"a_red.jpg": encoded(solid(cc.RED, 100, 150), "JPEG"),  # Landscape, larger than stored.
            "b_cyan.png": encoded(solid(cc.CYAN, 40, 30), "PNG"),  # Portrait, smaller than stored.
            "c_green_rgba.png": encoded(solid(cc.GREEN, 90, 90, channels=4), "PNG", "RGBA")}
    jpeg, png = good["a_red.jpg"], good["b_cyan.png"]
    bad = {"empty.jpg": b"", "truncated.jpg": jpeg[: len(jpeg) // 2], "text.png": b"not an image",
           "truncated.png": png[: len(png) // 2]}
    for folder, files in (("good", good), ("bad", bad)):
        for name, data in files.items():
            (requests / folder / name).write_bytes(data)
    colours = np.concatenate([cc.PROTOTYPES, np.random.default_rng(0).uniform(0, 255, (3, 3))]).astype(np.float32)
    floats = np.ascontiguousarray(np.broadcast_to(colours[:, None, None], (9, cc.IMAGE_SIZE, cc.IMAGE_SIZE, 3)))
    np.save(requests / "floats.npy", floats)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    process = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, export_dir, str(requests)], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=180)
    assert process.returncode == 0, process.stderr[-3000:]
    out = json.loads(process.stdout.strip().splitlines()[-1])

    serving = out["serving"]
    assert out["files"] == sorted(good)
    assert [row[0] for row in serving["classes"]] == [cc.RED, cc.CYAN, cc.GREEN]
    assert [row[0] for row in serving["labels"]] == ["red", "cyan", "green"]
    expected = tf.math.top_k(tf.nn.softmax(cc.logits(cc.PROTOTYPES[[cc.RED, cc.CYAN, cc.GREEN]])), 5)
    # Decoding and JPEG move a colour by a level or two: probabilities to 1e-2.
    np.testing.assert_allclose(serving["scores"], expected.values.numpy(), atol=1e-2)
    assert np.all(np.diff(serving["scores"], axis=1) <= 0)
    for classes, labels in zip(serving["classes"], serving["labels"]):
        assert labels == [cc.NAMES[c] for c in classes]

    np.testing.assert_allclose(out["predict"]["logits"], cc.logits(colours), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["predict"]["probabilities"], tf.nn.softmax(cc.logits(colours)), atol=1e-5)

    errors = out["errors"]
    assert "Input is empty" in errors["empty.jpg"]
    assert "Invalid JPEG data" in errors["truncated.jpg"]
    assert "Unknown image file format" in errors["text.png"]
    assert "Invalid PNG data" in errors["truncated.png"]
    assert f"predict_images: images must be float32 [N, {cc.IMAGE_SIZE}, {cc.IMAGE_SIZE}, 3]" in errors["wrong_size"]


def test_serving_preprocesses_exactly_as_evaluation(parse, tmp_path):
    """Bytes through `serving_default` == evaluation's images through `predict_images`, on an ILSVRC folder."""
    rng = np.random.default_rng(1)
    sizes = [(120, 90, "JPEG"), (50, 70, "PNG"), (300, 260, "JPEG"), (64, 64, "PNG"), (90, 200, "JPEG"),
             (257, 256, "PNG")]
    for label, (height, width, format) in enumerate(sizes):
        os.makedirs(tmp_path / "raw" / "val" / cc.wnid(label))
        (tmp_path / "raw" / "val" / cc.wnid(label) / f"x.{format.lower()}").write_bytes(
            encoded(imagenet_like.smooth_image(rng, height, width), format))
    model = build_alexnet(num_classes=len(sizes), width=cc.WIDTH, image_size=cc.IMAGE_SIZE, init="he", seed=3,
                          tower_devices=TOWER_DEVICES)
    model.save(tmp_path / "random.keras")
    data = ["--data_dir=" + str(tmp_path / "raw"), "--mean=channel", "--mean_rgb=123,117,104",
            "--channel_order=BGR"]
    export.run(parse(f"--checkpoint={tmp_path / 'random.keras'}", *data, f"--export_dir={tmp_path / 'export'}"))
    served = tf.saved_model.load(str(tmp_path / "export"))

    paths = ilsvrc.list_split(str(tmp_path / "raw"), records.VALIDATION).paths
    answer = served.signatures["serving_default"](images=tf.constant([open(p, "rb").read() for p in paths]))
    data = pipeline.DataConfig(str(tmp_path / "raw"), mean="channel", mean_rgb=(123, 117, 104), channel_order="BGR")
    images, _ = next(iter(pipeline.make_eval_dataset(data, 8, cc.IMAGE_SIZE)))
    predicted = served.signatures["predict_images"](images=images)
    top = tf.math.top_k(predicted["probabilities"], 5)
    np.testing.assert_array_equal(answer["classes"], top.indices)
    np.testing.assert_allclose(answer["scores"], top.values, rtol=1e-6)
    # predict_images is the Keras model's forward pass.
    np.testing.assert_allclose(predicted["logits"], model.predict(images, verbose=0), rtol=1e-4, atol=1e-5)
    assert answer["labels"].numpy()[0, 0].decode() == cc.wnid(int(top.indices[0, 0]))  # No names file: wnids.


def test_bvlc_cfg_describes_caffes_network_and_preprocessing(parse, tmp_path):
    flag_values = parse(f"--flagfile={os.path.join(REPO, 'flags', 'bvlc.cfg')}", "--width=0.0625")
    config = cli.architecture_from_flags(flag_values)
    assert {k: getattr(config, k) for k in ("towers", "groups", "lrn", "lrn_depth", "lrn_k", "lrn_alpha", "lrn_beta",
                                            "image_size", "num_classes")} == dict(
        towers=1, groups=2, lrn=True, lrn_depth=5, lrn_k=1.0, lrn_alpha=2e-5, lrn_beta=0.75, image_size=227,
        num_classes=1000)
    model = build_alexnet(config=config)
    assert model.get_layer("conv1").output.shape[1:3] == (55, 55)  # VALID: no padding layer at 227.
    assert "conv1_pad" not in [layer.name for layer in model.layers]
    # Caffe's input: BGR minus the mean pixel (104, 117, 123), for any image size.
    data = cli.data_config(flag_values)
    assert (data.mean, data.mean_rgb, data.channel_order) == ("channel", (123.0, 117.0, 104.0), "BGR")
    preprocess = pipeline.make_eval_transform(data, config.image_size, any_image=True)
    rgb = np.array([10, 200, 250], np.uint8)
    image = preprocess(tf.constant(encoded(np.broadcast_to(rgb, (300, 240, 3)).copy(), "PNG"))).numpy()
    assert image.shape == (227, 227, 3)
    np.testing.assert_array_equal(image, np.broadcast_to([250 - 104, 200 - 117, 10 - 123], image.shape))


def caffe_forward(weights, images, lrn_k, lrn_alpha_over_n, lrn_groups):
    """An independent float64 NumPy AlexNet as Caffe computes it, from bvlc_alexnet.npy-layout weights.

    conv1 11x11/4 unpadded; conv2 5x5 pad 2, conv3-5 3x3 pad 1; conv2, conv4, conv5 in two groups; LRN
    b = a / (k + alpha/n * sum of the n=5 nearest squares)^0.75 after conv1 and conv2, within each of
    `lrn_groups` channel groups (2: the paper's towers); 3x3/2 max pooling; fc6 reads pool5 in the file's
    (row, column, channel) order.
    """
    def conv(x, name, stride=1, pad=0, groups=1):
        kernel, bias = weights[name]
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        size = kernel.shape[0]
        windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))[:, ::stride, ::stride]
        outs = [np.einsum("nhwcij,ijco->nhwo", w, k) for w, k in
                zip(np.split(windows, groups, axis=3), np.split(kernel, groups, axis=3))]
        return np.maximum(np.concatenate(outs, axis=-1) + bias, 0)

    def lrn(x):
        parts = []
        for a in np.split(x, lrn_groups, axis=-1):
            squares = np.pad(a**2, ((0, 0), (0, 0), (0, 0), (2, 2)))
            window = sum(squares[..., i:i + a.shape[-1]] for i in range(5))
            parts.append(a / (lrn_k + lrn_alpha_over_n * window) ** 0.75)
        return np.concatenate(parts, axis=-1)

    def pool(x):
        return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))

    def dense(x, name, relu=True):
        y = x @ weights[name][0] + weights[name][1]
        return np.maximum(y, 0) if relu else y

    x = pool(lrn(conv(np.asarray(images, np.float64), "conv1", stride=4)))
    x = pool(lrn(conv(x, "conv2", pad=2, groups=2)))
    x = conv(conv(conv(x, "conv3", pad=1), "conv4", pad=1, groups=2), "conv5", pad=1, groups=2)
    x = pool(x).reshape(len(images), -1)
    return dense(dense(dense(x, "fc6"), "fc7"), "fc8", relu=False)


@pytest.mark.parametrize("flags, lrn_k, lrn_alpha_over_n, lrn_groups", [
    # Caffe's own numbers: alpha 1e-4 over n = 5, k = 1.
    ([f"--flagfile={os.path.join(REPO, 'flags', 'bvlc.cfg')}"], 1.0, 1e-4 / 5, 1),
    # The paper's network (section 3.3): k = 2, alpha 1e-4 on the sum, within each of the two towers.
    (["--preset=paper", "--mean=none"], 2.0, 1e-4, 2),
])
def test_predict_images_reproduces_caffes_forward_pass(parse, tmp_path, flags, lrn_k, lrn_alpha_over_n, lrn_groups):
    rng = np.random.default_rng(4)
    source = build_alexnet(num_classes=10, towers=1, groups=2, image_size=227, width=0.0625, init="he", seed=4)
    weights = {name: [w, rng.normal(0, 0.1, b.shape).astype(np.float32)]
               for name, (w, b) in npy_weights(source).items()}
    np.save(tmp_path / "w.npy", weights, allow_pickle=True)
    export.run(parse(*flags, "--width=0.0625", "--image_size=227",
                     "--num_classes=10", f"--pretrained={tmp_path / 'w.npy'}", f"--export_dir={tmp_path / 'e'}"))
    images = rng.normal(0, 60, (2, 227, 227, 3)).astype(np.float32)
    logits = tf.saved_model.load(str(tmp_path / "e")).signatures["predict_images"](images=images)["logits"]
    expected = caffe_forward(weights, images, lrn_k, lrn_alpha_over_n, lrn_groups)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_bad_requests_for_export_are_refused(parse, tmp_path):
    npy = cc.save_npy(str(tmp_path / "w.npy"))
    with pytest.raises(errors.ConfigError, match="--export_dir is required"):
        export.run(parse(*cc.FLAGS, f"--pretrained={npy}"))
    with pytest.raises(flags.UnrecognizedFlagError):  # One model: --ensemble is the evaluator's.
        parse(*cc.FLAGS, f"--pretrained={npy}", f"--ensemble={npy}", f"--export_dir={tmp_path}")
    os.makedirs(tmp_path / "raw" / "val" / "n0")
    (tmp_path / "raw" / "val" / "n0" / "a.png").write_bytes(encoded(solid(cc.RED, 8, 8), "PNG"))
    with pytest.raises(errors.ConfigError, match="the model has 6 classes, .* names 1"):
        export.run(parse(*cc.FLAGS, f"--pretrained={npy}", f"--data_dir={tmp_path / 'raw'}",
                         f"--export_dir={tmp_path / 'e'}"))
    assert serving.class_names(None, 3) == ["0", "1", "2"]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
