"""Test-wide setup.

TRITON_INTERPRET=1 is set here, always (GPU or not), at conftest import time: the variable is read when the
``@triton.jit`` functions are defined, so it must be set before test modules import ``kernels``. The kernel tests
(tests/kernels, tests/methods/test_methods_backends.py) call ``backend="triton"`` on CPU tensors, which needs
the interpreter, so the suite runs them the same way on every machine. One process cannot run both interpreted
and compiled kernels: the compiled kernels are checked on a GPU against the same references and tolerances by
``python -m kernels.check --device cuda`` in a separate process (tests/kernels/test_check.py starts it when a
GPU is present)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# Two cores on CI: keep torch from oversubscribing them when DALI threads also run.
os.environ.setdefault("OMP_NUM_THREADS", "2")
