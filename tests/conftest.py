"""Test-wide setup. TRITON_INTERPRET must be set before any @triton.jit function is defined, so it is
set here, at conftest import time, before test modules import `kernels`."""

import os
import shutil
import subprocess


def _has_gpu() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return False
    return (
        shutil.which("nvidia-smi") is not None
        and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    )


if not _has_gpu():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Two cores on CI: keep torch from oversubscribing them when DALI threads also run.
os.environ.setdefault("OMP_NUM_THREADS", "2")
