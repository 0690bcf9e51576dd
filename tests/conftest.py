"""Test-wide setup.

TRITON_INTERPRET=1 is set here, always (GPU or not), at conftest import time: the variable is read when the
``@triton.jit`` functions are defined, so it must be set before test modules import ``kernels``. The kernel tests
(tests/kernels, tests/methods/test_methods_backends.py) call ``backend="triton"`` on CPU tensors, which needs
the interpreter, so the suite runs them the same way on every machine. One process cannot run both interpreted
and compiled kernels: the compiled kernels are checked on a GPU against the same references and tolerances by
``python -m kernels.check --device cuda`` in a separate process (tests/kernels/test_check.py starts it when a
GPU is present)."""

import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
# Two cores on CI: keep torch from oversubscribing them when DALI threads also run.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """A small synthetic shard set (2 classes, 4 + 2 videos each, 12 frames of 32x40, DIS flow), built once per
    session by the real data_prep build, for tests that train through the real loader and only read it."""
    from data_prep.build import build_synthetic
    from vicc_fast.config import FlowMethod, SyntheticConfig

    out = tmp_path_factory.mktemp("tiny_shards")
    small = SyntheticConfig(num_classes=2, train_per_class=4, test_per_class=2, frames=12, height=32, width=40,
                            flow_method=FlowMethod.dis)  # fmt: skip
    build_synthetic(out, small, workers=1, progress=False)
    return out
