"""Bad shapes, dtypes and arguments fail early with one ValueError naming the argument and the shapes."""

from __future__ import annotations

import pytest
import torch

import kernels

S = torch.zeros(10, 7)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda b: kernels.sinkhorn(torch.zeros(10), 0.05, 3, 5, backend=b), r"scores must be \[N, K\]"),
        (lambda b: kernels.sinkhorn(S.long(), 0.05, 3, 5, backend=b), r"scores must be float32.*torch.int64"),
        (lambda b: kernels.sinkhorn(S, 0.05, 3, 11, backend=b), r"n_batch must be in \[1, N\].*\(10, 7\)"),
        (lambda b: kernels.sinkhorn(S, 0.0, 3, 5, backend=b), r"eps must be > 0"),
        (lambda b: kernels.sinkhorn(S, 0.05, 0, 5, backend=b), r"n_iters must be >= 1"),
        (
            lambda b: kernels.sinkhorn_prior(S, S[:5], 0.02, 0.03, 3, 5, backend=b),
            r"prior must have the shape",
        ),
        (
            lambda b: kernels.prototype_scores(S, torch.zeros(4, 8), backend=b),
            r"share D.*\(10, 7\).*\(4, 8\)",
        ),
        (
            lambda b: kernels.swapped_loss(
                torch.zeros(4, 3, 7), torch.zeros(4, 3, 6), torch.ones(4, 4).bool(), 0.1, backend=b
            ),
            r"Q must have P's shape.*\(4, 3, 7\).*\(4, 3, 6\)",
        ),
        (
            lambda b: kernels.swapped_loss(
                torch.zeros(4, 3, 7), torch.zeros(4, 3, 7), torch.ones(2, 2).bool(), 0.1, backend=b
            ),
            r"mask must be \[V, V\] = \[4, 4\].*\(2, 2\)",
        ),
        (
            lambda b: kernels.swapped_loss(
                torch.zeros(4, 3, 7), torch.zeros(4, 3, 7), torch.ones(4, 4), 0.1, backend=b
            ),
            r"mask must be a bool tensor",
        ),
        (
            lambda b: kernels.swapped_loss(
                torch.zeros(3, 7), torch.zeros(3, 7), torch.ones(3, 3).bool(), 0.1, backend=b
            ),
            r"P must be \[V, B, K\], got shape \(3, 7\)",
        ),
        (
            lambda b: kernels.enqueue(torch.zeros(2, 4, 8), torch.zeros(2, 5, 8), 0, backend=b),
            r"more rows.*B=5.*L=4",
        ),
        (
            lambda b: kernels.enqueue(torch.zeros(2, 4, 8), torch.zeros(3, 2, 8), 0, backend=b),
            r"match queue.*\(2, 4, 8\)",
        ),
        (
            lambda b: kernels.enqueue(torch.zeros(2, 4, 8), torch.zeros(2, 2, 8), 4, backend=b),
            r"ptr must be in \[0, L=4\)",
        ),
    ],
)
def test_bad_arguments_raise_value_error(backend, call, match):
    with pytest.raises(ValueError, match=match):
        call(backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.sinkhorn(S, 0.05, 3, 5, backend="cuda")


def test_backend_accepts_config_enum():
    from vicc_fast.config import KernelBackend

    assert kernels.resolve_backend(KernelBackend.torch, S) == "torch"


def test_auto_backend_rule(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert kernels.resolve_backend("auto", S) == "torch"  # CPU tensors, no interpreter
    with pytest.raises(ValueError, match="needs CUDA tensors, or TRITON_INTERPRET=1"):
        kernels.resolve_backend("triton", S)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.resolve_backend("auto", S) == "triton"
