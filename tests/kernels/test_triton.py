"""Triton kernels == the PyTorch reference (kernels/README.md lists the tolerances). On CPU they run in the
Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so shapes are tiny and deliberately not
multiples of the block sizes (K=37 -> BLOCK_K 64, N=70 -> 5 row tiles of 16, D=20 -> BLOCK_D 32)."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import reference as R
from kernels import sinkhorn_triton
from kernels.check import (  # the tolerances, shared with `python -m kernels.check` (compiled kernels on a GPU)
    GRAD_ATOL_FP32,
    GRAD_RTOL,
    LOSS_ATOL,
    LOSS_RTOL,
    PRIOR_EQ_ATOL,
    Q_ATOL,
    Q_ATOL_16BIT_Z,
    Q_ATOL_EXTREME,
    ROW_SUM_ATOL,
    SCORES_ATOL,
    SCORES_RTOL,
    grad_atol,
)
from tests.kernels.conftest import unit


@pytest.fixture(autouse=True)
def _interpreter():
    assert kernels.resolve_backend("auto", torch.zeros(1)) == "triton", "TRITON_INTERPRET=1 expected"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prototype_scores(dtype):
    z, c = unit(3, 50, 20, seed=1, dtype=dtype), unit(37, 20, seed=2, dtype=dtype)
    out = kernels.prototype_scores(z, c, backend="triton")
    torch.testing.assert_close(out, R.prototype_scores(z, c), atol=SCORES_ATOL, rtol=SCORES_RTOL)
    assert out.dtype == torch.float32 and out.shape == (3, 50, 37)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sinkhorn_matches_reference(fused, dtype):
    s = R.prototype_scores(unit(2, 70, 20, seed=3), unit(37, 20, seed=4)).to(dtype)
    q = sinkhorn_triton.sinkhorn(s, 1 / 0.05, None, 0.0, 3, 30, None, fused=fused)
    torch.testing.assert_close(q, R.sinkhorn(s, 0.05, 3, 30), atol=Q_ATOL, rtol=0)


@pytest.mark.parametrize("fused", [True, False])
def test_fused_scoring_sinkhorn_matches_reference(fused):
    z, c = unit(2, 70, 20, seed=5), unit(37, 20, seed=6)
    q = sinkhorn_triton.assign(z, c, 1 / 0.05, 3, 21, None, fused=fused)
    ref = R.sinkhorn(R.prototype_scores(z, c), 0.05, 3, 21)
    torch.testing.assert_close(q, ref, atol=Q_ATOL, rtol=0)
    for dtype in (torch.bfloat16, torch.float16):  # bf16: fp32 dot in the interpreter; fp16: the native dot
        zb, cb = z.to(dtype), c.to(dtype)
        q = kernels.assign(zb, cb, 0.05, 3, 21, backend="triton")
        ref = R.sinkhorn(R.prototype_scores(zb, cb), 0.05, 3, 21)
        torch.testing.assert_close(q, ref, atol=Q_ATOL_16BIT_Z, rtol=0)  # exact products, another order


@pytest.mark.parametrize("fused", [True, False])
def test_sinkhorn_extreme_scores_stay_finite(fused):
    g = torch.Generator().manual_seed(7)
    s = torch.randn(50, 37, generator=g) * 20  # |s|/eps up to ~1500: exp() overflows in SwAV form
    s[:, 5] = -1e3  # a prototype no sample is near
    for dtype in (torch.float32, torch.bfloat16):
        q = sinkhorn_triton.sinkhorn(s.to(dtype), 1 / 0.05, None, 0.0, 3, 50, None, fused=fused)
        ref = R.sinkhorn(s.to(dtype), 0.05, 3, 50)
        assert torch.isfinite(q).all()
        torch.testing.assert_close(q, ref, atol=Q_ATOL_EXTREME, rtol=0)
        # exp(x + a + b) with |x| ~ 1500 carries fp32's relative 6e-8 * 3000 error in each entry
        torch.testing.assert_close(q.sum(1), torch.ones(50), atol=ROW_SUM_ATOL, rtol=0)


def test_sinkhorn_marginals_uniform():
    s = R.prototype_scores(unit(45, 20, seed=8), unit(15, 20, seed=9))
    q = kernels.sinkhorn(s, 0.05, 50, 45, backend="triton")
    torch.testing.assert_close(q.sum(1), torch.ones(45), atol=1e-3, rtol=0)
    torch.testing.assert_close(q.sum(0), torch.full((15,), 3.0), atol=1e-3, rtol=0)


def test_sinkhorn_prior():
    s = R.prototype_scores(unit(2, 40, 20, seed=10), unit(37, 20, seed=11))
    prior = R.sinkhorn(R.prototype_scores(unit(2, 40, 20, seed=12), unit(37, 20, seed=11)), 0.05, 3, 40)
    prior[0, 0, :5] = 0.0  # zero prior: clamped, not -inf
    q = kernels.sinkhorn_prior(s, prior, 0.02, 0.03, 3, 17, backend="triton")
    torch.testing.assert_close(q, R.sinkhorn_prior(s, prior, 0.02, 0.03, 3, 17), atol=Q_ATOL, rtol=0)
    q0 = kernels.sinkhorn_prior(s, prior, 0.02, 0.0, 3, 17, backend="triton")
    torch.testing.assert_close(
        q0, kernels.sinkhorn(s, 0.02, 3, 17, backend="triton"), atol=PRIOR_EQ_ATOL, rtol=0
    )


def test_default_size_case():
    """ViCC's sizes: K=300 prototypes, D=128, B=48 per view, the 4 views of the cross-stream step in one launch.
    (The 1920-row queue runs the same code as the small N > n_batch cases above; in the interpreter it costs
    minutes, so it is left to the benchmark.)"""
    z = unit(4, 48, 128, seed=13, dtype=torch.bfloat16)
    c = unit(300, 128, seed=14, dtype=torch.bfloat16)
    s = R.prototype_scores(z, c)
    q = kernels.assign(z, c, 0.05, 3, 48, backend="triton")
    torch.testing.assert_close(q, R.sinkhorn(s, 0.05, 3, 48), atol=Q_ATOL, rtol=0)
    P = s.clone().requires_grad_()
    mask = ~torch.eye(4, dtype=torch.bool)
    loss = kernels.swapped_loss(P, q, mask, 0.1, backend="triton")
    ref = R.swapped_loss(P, q, mask, 0.1)
    torch.testing.assert_close(loss, ref, rtol=LOSS_RTOL, atol=LOSS_ATOL)
    (g,) = torch.autograd.grad(loss, P)
    (g_ref,) = torch.autograd.grad(ref, P)
    torch.testing.assert_close(g, g_ref, rtol=GRAD_RTOL, atol=GRAD_ATOL_FP32)


@pytest.mark.parametrize(
    ("v", "mask_kind", "dtype"),
    [
        (4, "vicc", torch.float32),
        (2, "swav", torch.float32),
        (4, "vicc", torch.bfloat16),
        (3, "partial", torch.float16),
    ],
)
def test_swapped_loss_and_gradient(v, mask_kind, dtype, views_mask):
    g = torch.Generator().manual_seed(15)
    P = (torch.randn(v, 19, 37, generator=g) * 3).to(dtype).requires_grad_()
    Q = R.sinkhorn(torch.randn(v, 19, 37, generator=g), 0.05, 3, 19)
    mask = views_mask(v) if mask_kind != "partial" else torch.tensor([[0, 1, 0], [0, 0, 0], [1, 1, 0]]).bool()
    loss = kernels.swapped_loss(P, Q, mask, 0.1, backend="triton")
    ref = R.swapped_loss(P, Q, mask, 0.1)
    torch.testing.assert_close(loss, ref, rtol=LOSS_RTOL, atol=LOSS_ATOL)
    (grad,) = torch.autograd.grad(loss * 2.5, P)  # an upstream gradient other than 1
    (grad_ref,) = torch.autograd.grad(ref * 2.5, P)
    assert grad.dtype == dtype
    # 16-bit gradients: both backends round the same fp32 value, so within one ulp of the largest entry
    atol = grad_atol(dtype, grad_ref)
    torch.testing.assert_close(grad.float(), grad_ref.float(), rtol=GRAD_RTOL, atol=atol)
    if mask_kind == "partial":
        assert grad[2].abs().sum() == 0  # view 2 predicts nothing


def test_enqueue_ring_wraps():
    q_t = torch.zeros(2, 7, 20)
    q_r = q_t.clone()
    z = unit(2, 5, 20, seed=16)
    ptr_t = ptr_r = 4
    for _ in range(3):
        ptr_t = kernels.enqueue(q_t, z, ptr_t, backend="triton")
        ptr_r = R.enqueue(q_r, z, ptr_r)
        z = z + 1
    assert ptr_t == ptr_r == (4 + 15) % 7
    torch.testing.assert_close(q_t, q_r, rtol=0, atol=0)
    q16 = torch.zeros(2, 7, 20, dtype=torch.bfloat16)
    kernels.enqueue(q16, z, 0, backend="triton")
    torch.testing.assert_close(q16[:, :5], z.bfloat16(), rtol=0, atol=0)


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(17)
    base = torch.randn(19, 3, 37, generator=g)
    P = base.permute(1, 0, 2).requires_grad_()  # [V, B, K] with non-unit strides everywhere
    Q = R.sinkhorn(torch.randn(3, 37, 19, generator=g).transpose(1, 2), 0.05, 3, 19)
    mask = ~torch.eye(3, dtype=torch.bool)
    loss = kernels.swapped_loss(P, Q, mask, 0.1, backend="triton")
    ref = R.swapped_loss(P, Q, mask, 0.1)
    torch.testing.assert_close(loss, ref, rtol=LOSS_RTOL, atol=LOSS_ATOL)
    torch.testing.assert_close(
        torch.autograd.grad(loss, P)[0], torch.autograd.grad(ref, P)[0], rtol=GRAD_RTOL, atol=GRAD_ATOL_FP32
    )
    s = torch.randn(37, 30, generator=g).t()  # [N=30, K=37], column-major
    torch.testing.assert_close(
        kernels.sinkhorn(s, 0.05, 3, 10, backend="triton"), R.sinkhorn(s, 0.05, 3, 10), atol=Q_ATOL, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prototype_scores_several_column_tiles(dtype):
    """K = 150 > BLOCK_K = 64: three column tiles, the last one partial; every score compared by value."""
    from kernels.scoring_triton import BLOCK_K

    K = 150
    assert K > 2 * BLOCK_K
    z, c = unit(2, 70, 20, seed=21, dtype=dtype), unit(K, 20, seed=22, dtype=dtype)
    out = kernels.prototype_scores(z, c, backend="triton")
    torch.testing.assert_close(out, R.prototype_scores(z, c), atol=SCORES_ATOL, rtol=SCORES_RTOL)
    assert out.shape == (2, 70, K)
