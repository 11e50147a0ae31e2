"""The binaries' edge: each binary's own flags and help, one error exit, and a package import whose one side
effect is oneDNN's default."""

import os
import subprocess
import sys

import pytest
from absl import flags

from alexnet_tf import cli, errors, evaluate, export, quiet, train
from tests.flag_parsing import flag_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, *args, env=None):
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("onednn", [None, "0"])
def test_importing_the_package_changes_no_process_state_but_onednns_default(onednn):
    code = """
import logging, os, platform, sys
before_env, before_levels = dict(os.environ), {n: logging.getLogger(n).level for n in ("", "tensorflow", "absl")}
import alexnet_tf
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
after_levels = {n: logging.getLogger(n).level for n in ("", "tensorflow", "absl")}
expected = dict(before_env)
if "TF_ENABLE_ONEDNN_OPTS" not in before_env and platform.machine() == "x86_64":
    expected["TF_ENABLE_ONEDNN_OPTS"] = "1"  # alexnet_tf/onednn.py, read by TensorFlow as it starts:
    assert _pywrap_util_port.IsMklEnabled()
assert dict(os.environ) == expected, set(os.environ.items()) ^ set(expected.items())
assert after_levels == before_levels, (before_levels, after_levels)
# The runtime is not started: devices can still be configured.
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
assert len(tf.config.list_logical_devices("CPU")) == 2
print(_pywrap_util_port.IsMklEnabled())
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    if onednn is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn  # A user's choice wins.
    process = run_python(code, env=env)
    assert process.returncode == 0, process.stderr[-2000:]
    if onednn == "0":
        assert process.stdout.strip() == "False"


@pytest.mark.slow
def test_onednn_default_is_not_set_after_tensorflow_started():
    code = """
import os, tensorflow, alexnet_tf
print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"))
"""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    process = run_python(code, env=env)
    assert process.returncode == 0, process.stderr[-2000:]
    assert process.stdout.strip() == "None"  # Too late to decide anything: left unset.


@pytest.mark.parametrize("binary, own, foreign", [
    ("train", ["--lrn_k", "--pca_noise", "--learning_rate", "--dtype_policy", "--model_dir"],
     ["--ten_crop", "--checkpoint"]),
    ("evaluate", ["--lrn_k", "--ten_crop", "--ensemble", "--figures", "--checkpoint"],
     ["--learning_rate", "--pca_noise"]),
    ("export", ["--lrn_k", "--export_dir", "--checkpoint", "--stats_path"], ["--ensemble", "--epochs"]),
])
@pytest.mark.slow
def test_help_lists_the_binarys_own_flags_and_no_others(binary, own, foreign):
    process = subprocess.run([sys.executable, "-m", f"alexnet_tf.{binary}", "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    listed = {line.split(":")[0].strip().replace("--[no]", "--") for line in process.stdout.splitlines()
              if line.startswith("  --")}
    assert set(own) <= listed, set(own) - listed
    assert not set(foreign) & listed


def test_each_binary_refuses_the_others_flags():
    for binary, foreign in ((train, "--ten_crop"), (evaluate, "--learning_rate=0.1"), (export, "--epochs=3")):
        with pytest.raises(flags.UnrecognizedFlagError):
            flag_parser(binary)(foreign)


def test_run_main_gives_one_line_and_the_errors_exit_status(capsys):
    class Lost(errors.TrainingError):
        exit_code = 75

    def fail():
        raise Lost("a worker is gone")

    codes = []
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main("train", fail, ["train"], on_error=codes.append)
    assert exit_info.value.code == 75 and codes == [75]
    assert capsys.readouterr().err.strip().splitlines()[-1] == "train: error: a worker is gone"
    quiet.release()


def test_a_model_flag_that_contradicts_a_checkpoint_is_refused(tmp_path):
    from alexnet_tf.model import build_alexnet

    build_alexnet(num_classes=4, width=0.0625, image_size=67).save(tmp_path / "m.keras")
    flag_values = flag_parser(evaluate)(f"--checkpoint={tmp_path / 'm.keras'}", "--lrn_k=1", "--width=0.0625")
    with pytest.raises(errors.ConfigError, match=r"--lrn_k=1.0 \(it has 2.0\)\. A .keras checkpoint carries its own"):
        cli.load_models(flag_values)
    # Flags that agree with the checkpoint are fine.
    [(path, model)] = cli.load_models(flag_parser(evaluate)(f"--checkpoint={tmp_path / 'm.keras'}", "--width=0.0625"))
    assert model.get_config()["num_classes"] == 4


@pytest.mark.slow
def test_the_stderr_filter_drops_tensorflows_info_lines_and_keeps_the_rest():
    code = """
import os, sys
from alexnet_tf import quiet
quiet.quiet_binary()
os.write(2, b"I0000 00:00:1796163756.806447   24605 service.cc:153] XLA service initialized\\n")
os.write(2, b"W0000 00:00:1796163756.806447   24605 foo.cc:1] a warning\\n")
os.write(2, b"progress 1/3\\rprogress 2/3\\r")
os.write(2, b"I1203 12:57:08.222707 140604349160320 train.py:298] Training alexnet (1,234 parameters)\\n")
print("Python's own line", file=sys.stderr)
os.write(2, b"E0000 00:00:1.0 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL\\n")
"""
    process = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=120)
    assert process.returncode == 0, process.stderr
    assert b"XLA service" not in process.stderr and b"cuInit" not in process.stderr
    # A progress bar's carriage returns pass as they are, without waiting for a newline.
    assert b"a warning" in process.stderr and b"progress 1/3\rprogress 2/3\r" in process.stderr
    assert b"Python's own line" in process.stderr
    assert b"train.py:298] Training alexnet" in process.stderr  # absl's Python INFO lines are the project's own.


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
