"""Turns TensorFlow's oneDNN kernels on by default on every x86-64 CPU, before TensorFlow starts.

TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it is imported. Unset, oneDNN is on only for x86 CPUs with
"neural-network-focused hardware features such as AVX512_VNNI, AVX512_BF16, AMX" (TensorFlow 2.9's release
notes): on an AVX2-only CPU such as the AMD EPYC of docs/benchmarks.md, `IsMklEnabled()` is false and the
convolutions and matmuls run on Eigen. There, oneDNN trained the demo 1.45x as fast (116 against 168 ms a step)
and served `predict_images` 1.30x as fast, with a matmul peak twice Eigen's (docs/benchmarks.md).

`set_default()` runs in `alexnet_tf/__init__.py` before its TensorFlow import, and changes nothing when the
variable is set already (a user's "0" wins), when TensorFlow was imported first (too late to matter), or off
x86-64 (on Arm, the variable selects other kernels, not measured here).
"""

from __future__ import annotations

import os
import platform
import sys

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
_X86_64 = ("x86_64", "amd64")


def set_default() -> None:
    """Sets TF_ENABLE_ONEDNN_OPTS=1 where it decides something (module docstring)."""
    if VARIABLE not in os.environ and "tensorflow" not in sys.modules and platform.machine().lower() in _X86_64:
        os.environ[VARIABLE] = "1"
