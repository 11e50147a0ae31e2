"""The evaluation binary: known errors from constructed weights, ten-crop and ensemble softmax averaging."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

from alexnet_tf import cli, errors, evaluate
from alexnet_tf.model import loading
from alexnet_tf.data import pipeline
from alexnet_tf.model import build_alexnet
from alexnet_tf.model.npy_weights import load_npy_weights
from tests import colour_classifier as cc
from tests.flag_parsing import flag_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return cc.prepared_dataset(str(tmp_path_factory.mktemp("colours")))


@pytest.fixture
def parse():
    """The evaluation binary's flag parser, with batches of 3."""
    return lambda *args: flag_parser(evaluate)("--batch_size=3", *args)


def colour_checkpoint(path, scale=cc.SCALE, towers=1, roll=0):
    """The colour classifier as a .keras checkpoint; `roll` shifts its answers to class c + roll."""
    weights = cc.weights(scale)
    weights["fc8"] = [np.roll(a, roll, axis=-1) for a in weights["fc8"]]
    model = build_alexnet(num_classes=len(cc.NAMES), towers=towers, width=cc.WIDTH, image_size=cc.IMAGE_SIZE,
                          lrn=False)
    load_npy_weights(model, weights)
    model.save(path)
    return str(path)


@pytest.mark.parametrize("towers", ["--towers=1", "--towers=2"])
def test_pretrained_npy_gives_the_known_errors(parse, data_dir, tmp_path, towers):
    npy = cc.save_npy(str(tmp_path / "colours.npy"))
    results = evaluate.run(parse(*cc.FLAGS, towers, f"--data_dir={data_dir}", f"--pretrained={npy}"))
    assert results["num_images"] == len(cc.VALIDATION)
    assert results["top1_error"] == pytest.approx(cc.TOP1_ERROR)
    assert results["top5_error"] == pytest.approx(cc.TOP5_ERROR)
    # Without --model_dir, the JSON of a .npy file goes beside it.
    assert results["results_path"] == npy + ".eval.json"
    with open(results["results_path"]) as f:
        written = json.load(f)
    assert written == {k: v for k, v in results.items() if k != "results_path"}
    assert written["models"] == [npy] and written["image_size"] == cc.IMAGE_SIZE and not written["ten_crop"]


def test_checkpoint_with_ten_crops_writes_its_own_json_beside_it(parse, data_dir, tmp_path):
    checkpoint = colour_checkpoint(tmp_path / "epoch_001.keras", towers=2)
    # The architecture and image size come from the checkpoint; model flags that contradict it are refused.
    with pytest.raises(errors.ConfigError, match=r"is another architecture than the flags say: --image_size=99 "
                                                 rf"\(it has {cc.IMAGE_SIZE}\)"):
        evaluate.run(parse(f"--data_dir={data_dir}", f"--checkpoint={checkpoint}", "--image_size=99"))
    results = evaluate.run(parse(f"--data_dir={data_dir}", f"--checkpoint={checkpoint}", "--mean=none",
                                 "--towers=2", "--ten_crop"))
    # Solid colours: the ten crops agree, so the errors are the centre crop's.
    assert (results["top1_error"], results["top5_error"]) == pytest.approx((cc.TOP1_ERROR, cc.TOP5_ERROR))
    assert results["results_path"] == checkpoint + ".eval_ten_crop.json"
    assert json.loads(open(results["results_path"]).read())["ten_crop"] is True


def test_npy_json_goes_to_model_dir_and_ensembles_get_their_own_name(parse, tmp_path):
    flag_values = parse("--pretrained=" + cc.save_npy(str(tmp_path / "w.npy")), f"--model_dir={tmp_path / 'm'}",
                        "--ensemble=" + cc.save_npy(str(tmp_path / "v.npy")), "--ten_crop")
    paths = cli.model_paths(flag_values)
    assert paths == [str(tmp_path / "w.npy"), str(tmp_path / "v.npy")]
    assert evaluate.results_path(flag_values, paths) == str(tmp_path / "m" / "w.npy.eval_ten_crop_ensemble2.json")


def pooled_colour_model(weights):
    """images -> mean colour of the image @ weights: a model whose logits are known for solid-colour crops."""
    inputs = keras.Input((cc.IMAGE_SIZE, cc.IMAGE_SIZE, 3))
    dense = keras.layers.Dense(weights.shape[1], use_bias=False)
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([weights])
    return model


def solid(colours):
    """float32 [..., S, S, 3] solid-colour images from colours [..., 3]."""
    colours = np.asarray(colours, np.float32)
    return np.broadcast_to(colours[..., None, None, :], (*colours.shape[:-1], cc.IMAGE_SIZE, cc.IMAGE_SIZE, 3))


def softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_ten_crops_average_the_softmax_not_the_logits_nor_the_centre():
    # Red votes for class 0, green for class 1. The centre crop (index 4) is confidently class 0 (logit 100),
    # the nine others mildly class 1 (logit 2): averaged logits say 0, averaged probabilities say 1.
    model = pooled_colour_model(np.eye(3, 6, dtype=np.float32))
    crops = np.array([[(0, 2, 0)] * 4 + [(100, 0, 0)] + [(0, 2, 0)] * 5])
    images = solid(crops)
    probabilities = loading.averaged_probabilities([model], images).numpy()
    expected = softmax(crops @ np.eye(3, 6)).mean(axis=1)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6)
    assert probabilities.argmax() == 1 and (crops @ np.eye(3, 6)).mean(axis=1).argmax() == 0
    dataset = tf.data.Dataset.from_tensors((images, np.array([1], np.int32)))
    assert evaluate.evaluate([model], dataset, verbose=0) == {"num_images": 1, "top1_error": 0.0,
                                                               "top5_error": 0.0}
    centre = tf.data.Dataset.from_tensors((images[:, 4], np.array([1], np.int32)))
    assert evaluate.evaluate([model], centre, verbose=0)["top1_error"] == 1.0


def test_ensembles_average_the_softmax_of_their_models():
    rng = np.random.default_rng(0)
    models = [pooled_colour_model(rng.normal(0, 0.05, (3, 6)).astype(np.float32)) for _ in range(3)]
    # Whole numbers: their sums over an image are exact in float32, so the pooled colours are too.
    colours = rng.integers(0, 50, (4, 10, 3)).astype(np.float64)
    probabilities = loading.averaged_probabilities(models, solid(colours)).numpy()
    per_model = [softmax(colours @ keras.ops.convert_to_numpy(m.layers[-1].kernel)) for m in models]
    np.testing.assert_allclose(probabilities, np.mean(per_model, axis=0).mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


def test_ensemble_of_checkpoints_is_decided_by_its_confident_member(parse, data_dir, tmp_path):
    confident = colour_checkpoint(tmp_path / "confident.keras", scale=100.0)
    # Answers class c + 1 for colour c, almost uniformly: alone, right only on the red image labelled green.
    shifted = colour_checkpoint(tmp_path / "shifted.keras", scale=1e6, roll=1)
    alone = evaluate.run(parse(f"--data_dir={data_dir}", f"--checkpoint={shifted}", "--mean=none"))
    assert alone["top1_error"] == pytest.approx(7 / 8)
    both = evaluate.run(parse(f"--data_dir={data_dir}", f"--checkpoint={confident}", f"--ensemble={shifted}",
                              "--mean=none"))
    assert both["top1_error"] == pytest.approx(cc.TOP1_ERROR)
    assert both["models"] == [confident, shifted]
    assert both["results_path"] == confident + ".eval_ensemble2.json"


def test_models_of_different_image_sizes_are_refused(parse, data_dir, tmp_path):
    small = colour_checkpoint(tmp_path / "a.keras")
    other = build_alexnet(num_classes=6, towers=1, width=cc.WIDTH, image_size=71, lrn=False)
    other.save(tmp_path / "b.keras")
    with pytest.raises(errors.ConfigError, match="differ in image size"):
        evaluate.run(parse(f"--data_dir={data_dir}", f"--ensemble={small},{tmp_path / 'b.keras'}", "--mean=none"))


def test_ten_crops_are_the_corners_centre_and_mirrors_of_the_stored_image(tmp_path):
    # A lossless image whose red channel is 3x and green channel 3y: each crop's pixels give its position.
    size, crop = 80, cc.IMAGE_SIZE
    y, x = np.mgrid[0:size, 0:size]
    image = np.stack([3 * x, 3 * y, np.zeros_like(x)], axis=-1).astype(np.uint8)
    os.makedirs(tmp_path / "val" / "n0")
    Image.fromarray(image).save(tmp_path / "val" / "n0" / "a.png")
    data = pipeline.DataConfig(data_dir=str(tmp_path), mean="none", stored_size=size)
    dataset = pipeline.make_eval_dataset(data, 1, crop, ten_crop=True)
    crops = next(iter(dataset))[0].numpy()[0]
    corners = [(0, 0), (0, size - crop), (size - crop, 0), (size - crop, size - crop), ((size - crop) // 2,) * 2]
    for i, (top, left) in enumerate(corners):
        np.testing.assert_array_equal(crops[i], image[top:top + crop, left:left + crop])
        np.testing.assert_array_equal(crops[i + 5], image[top:top + crop, left:left + crop][:, ::-1])


def test_flags_that_do_not_fit_are_refused(parse, data_dir, tmp_path):
    npy = cc.save_npy(str(tmp_path / "w.npy"))
    with pytest.raises(errors.ModelFileError, match="conv1"):
        evaluate.run(parse(*cc.FLAGS, "--width=0.25", f"--data_dir={data_dir}", f"--pretrained={npy}"))
    build_alexnet(num_classes=10, towers=1, width=cc.WIDTH, image_size=cc.IMAGE_SIZE).save(tmp_path / "ten.keras")
    with pytest.raises(errors.ConfigError, match="the model has 10 classes, .* has 6"):
        evaluate.run(parse(f"--data_dir={data_dir}", f"--checkpoint={tmp_path / 'ten.keras'}"))
    with pytest.raises(errors.ConfigError, match=r"mean_rgb=\(1.0, 2.0, 3.0\) needs mean='channel'"):
        cli.data_config(parse(f"--pretrained={npy}", "--preset=paper", "--mean_rgb=1,2,3"))
    # The bvlc_alexnet preset subtracts a mean pixel: another one is a change of it, not a contradiction.
    assert cli.data_config(parse(f"--pretrained={npy}", "--preset=bvlc_alexnet", "--mean_rgb=1,2,3")).mean_rgb == \
        (1.0, 2.0, 3.0)
    with pytest.raises(flags.IllegalFlagValueError, match="--mean_rgb takes three numbers"):
        parse("--mean=channel", "--mean_rgb=1,2,x")


@pytest.mark.slow
def test_no_model_gives_one_line_and_no_traceback(data_dir):
    process = subprocess.run([sys.executable, "-m", "alexnet_tf.evaluate", f"--data_dir={data_dir}"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert process.returncode != 0
    assert "no model: give --checkpoint" in process.stderr.strip().splitlines()[-1]
    assert "Traceback" not in process.stderr


@pytest.mark.slow
def test_main_prints_the_errors_and_the_image_count(data_dir, tmp_path):
    npy = cc.save_npy(str(tmp_path / "w.npy"))
    process = subprocess.run([sys.executable, "-m", "alexnet_tf.evaluate", *cc.FLAGS, f"--data_dir={data_dir}",
                              f"--pretrained={npy}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr[-2000:]
    assert (f"top-1 error {cc.TOP1_ERROR:.4f}, top-5 error {cc.TOP5_ERROR:.4f} on {len(cc.VALIDATION)} images"
            in process.stdout)


def test_a_folder_the_results_cannot_be_written_to_is_refused_before_the_work(parse, data_dir, tmp_path,
                                                                             monkeypatch):
    """The evaluation used to compute everything, then lose the numbers on a read-only folder."""
    npy = cc.save_npy(str(tmp_path / "w.npy"))
    read_only = str(tmp_path / "read_only")

    def makedirs(path):
        if path.startswith(read_only):
            raise tf.errors.PermissionDeniedError(None, None, f"{path}: Read-only file system")
        return original(path)

    original = tf.io.gfile.makedirs
    monkeypatch.setattr(tf.io.gfile, "makedirs", makedirs)
    monkeypatch.setattr(cli, "load_models", lambda *args: pytest.fail("the models were loaded"))
    for where in (f"--model_dir={read_only}", f"--figures={read_only}/figures"):
        with pytest.raises(errors.TrainingError, match=rf"^{read_only}.* cannot be written \(.*Read-only file "
                                                       "system"):
            evaluate.run(parse(*cc.FLAGS, f"--data_dir={data_dir}", f"--pretrained={npy}", where))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
