"""One recipe file for every binary: evaluate and export read the flagfiles a run is trained with (flags/*.cfg),
keep the flags they define, and name the ones they leave out; a flag typed on the command line that the binary does
not define, and a misspelt flag anywhere, stay errors."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from alexnet_tf import cli, errors, evaluate, export, train
from alexnet_tf.model import build_alexnet
from alexnet_tf.model.npy_weights import save_npy_weights
from tests.flag_parsing import recipe_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER, DEMO, BVLC = (os.path.join(REPO, "flags", name) for name in ("paper.cfg", "demo.cfg", "bvlc.cfg"))
TINY_NETWORK = ("--width=0.0625", "--image_size=64")  # Of any recipe's topology: the tiny data set's 72-pixel images.


def test_a_recipe_keeps_the_binarys_flags_and_names_the_others(capsys):
    argv = cli.expand_recipes("evaluate", ["evaluate", f"--flagfile={PAPER}", "--ten_crop"],
                              _flag_values(evaluate))
    assert argv[0] == "evaluate" and argv[-1] == "--ten_crop"
    assert "--towers=2" in argv and "--lrn_k=2" in argv and "--batch_size=128" in argv  # evaluate's own.
    assert not any(arg.startswith(("--strategy", "--momentum", "--epochs", "--pca_noise")) for arg in argv)
    line = capsys.readouterr().err.strip()
    assert line == (f"evaluate: {PAPER}: leaving out the flags of other binaries: --strategy, --tower_devices, "
                    "--pca_noise, --momentum, --weight_decay, --learning_rate, --lr_max_reductions, "
                    "--lr_patience_epochs, --epochs")


def test_a_recipe_typed_later_on_the_command_line_is_overridden_by_what_follows_it():
    fv = recipe_parser(export)(f"--flagfile={BVLC}", "--preset=paper", "--export_dir=x")
    assert fv.preset == "paper"


@pytest.mark.parametrize("binary", [train, evaluate, export])
def test_a_misspelt_flag_in_a_recipe_is_an_error_naming_it(binary, tmp_path):
    recipe = tmp_path / "typo.cfg"
    recipe.write_text("# A misspelling.\n--towrs=2\n")
    with pytest.raises(flags.UnrecognizedFlagError, match="towrs"):
        recipe_parser(binary)(f"--flagfile={recipe}")


def test_a_flag_of_another_binary_typed_on_the_command_line_is_still_an_error():
    with pytest.raises(flags.UnrecognizedFlagError, match="strategy"):
        recipe_parser(evaluate)(f"--flagfile={PAPER}", "--strategy=towers")
    with pytest.raises(flags.UnrecognizedFlagError, match="ten_crop"):
        recipe_parser(train)(f"--flagfile={PAPER}", "--ten_crop")


def _npy(directory, image_size: int) -> str:
    """A bvlc_alexnet-layout .npy file of a narrow network for the tiny data set's 4 classes."""
    path = str(directory / f"w{image_size}.npy")
    save_npy_weights(build_alexnet(num_classes=4, towers=1, groups=2, width=0.0625, image_size=image_size,
                                   init="he", seed=2), path)
    return path


@pytest.fixture(scope="module")
def npy(tmp_path_factory):
    return _npy(tmp_path_factory.mktemp("npy"), 64)


@pytest.mark.parametrize("recipe, towers, lrn_k, channel_order, mean", [
    (PAPER, 2, 2.0, "RGB", "image"), (DEMO, 2, 2.0, "RGB", "image"), (BVLC, 1, 1.0, "BGR", "channel")])
def test_evaluate_and_export_read_every_shipped_recipe(npy, data_dir, tmp_path, recipe, towers, lrn_k,
                                                       channel_order, mean):
    common = (f"--flagfile={recipe}", *TINY_NETWORK, f"--data_dir={data_dir}", f"--pretrained={npy}")
    results = evaluate.run(recipe_parser(evaluate)(*common, f"--model_dir={tmp_path}"))
    assert results["num_images"] == 16 and (results["channel_order"], results["mean"]) == (channel_order, mean)
    exported = export.run(recipe_parser(export)(*common, f"--export_dir={tmp_path / 'export'}"))
    assert (exported["image_size"], exported["num_classes"]) == (64, 4)
    [(_, model)] = cli.load_models(recipe_parser(export)(*common))
    assert (model.config.towers, model.config.lrn_k) == (towers, lrn_k)
    served = tf.saved_model.load(exported["export_dir"]).signatures["predict_images"]
    assert served(images=tf.zeros([1, 64, 64, 3]))["logits"].shape == (1, 4)


def test_a_npy_file_exported_with_the_papers_recipe_is_the_papers_two_tower_network(tmp_path):
    npy = _npy(tmp_path, 227)
    [(_, model)] = cli.load_models(recipe_parser(export)(f"--flagfile={PAPER}", "--image_size=227",
                                                         "--width=0.0625", f"--pretrained={npy}"))
    config = model.config
    assert (config.towers, config.groups, config.image_size, config.lrn_k, config.lrn_alpha, config.num_classes) == \
        (2, 2, 227, 2.0, 1e-4, 4)
    assert [layer.name for layer in model.layers if layer.name.startswith("conv1")] == ["conv1a", "conv1b"]


def test_a_checkpoint_that_contradicts_the_recipe_is_refused_naming_both_values(data_dir, tmp_path):
    checkpoint = str(tmp_path / "demo_like.keras")
    build_alexnet(num_classes=4, width=0.0625, image_size=64, init="he", input_scale=0.25,
                  conv1_init_gain=0.25).save(checkpoint)
    with pytest.raises(errors.ConfigError, match=re.escape("--init=paper (it has he)")):
        evaluate.run(recipe_parser(evaluate)(f"--flagfile={PAPER}", *TINY_NETWORK, f"--data_dir={data_dir}",
                                             f"--checkpoint={checkpoint}"))
    # The recipe it was trained with describes it: the demo's, narrowed as it was.
    results = evaluate.run(recipe_parser(evaluate)(f"--flagfile={DEMO}", "--width=0.0625", f"--data_dir={data_dir}",
                                                   f"--checkpoint={checkpoint}"))
    assert results["num_images"] == 16 and np.isfinite(results["top1_error"])


@pytest.mark.slow
def test_the_binaries_read_a_recipe_as_users_start_them(npy, tmp_path):
    command = [sys.executable, "-m", "alexnet_tf.export", f"--flagfile={PAPER}", *TINY_NETWORK,
               f"--pretrained={npy}", "--stats_path=imagenet", f"--export_dir={tmp_path / 'export'}"]
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-2000:]
    assert f"export: {PAPER}: leaving out the flags of other binaries: --strategy," in process.stderr
    assert "Exported" in process.stdout and "Traceback" not in process.stderr
    typed = subprocess.run(command + ["--epochs=3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert typed.returncode == 1 and "Unknown command line flag 'epochs'" in typed.stderr
    assert "Traceback" not in typed.stderr


def _flag_values(binary) -> flags.FlagValues:
    fv = flags.FlagValues()
    binary.define_flags(fv)
    return fv


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
