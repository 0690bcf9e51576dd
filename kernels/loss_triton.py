"""Triton swapped-prediction loss: one autograd.Function, forward and backward one launch (+ a sum) each.

For predicting view p the targets it must explain are summed first, W_p = sum_{t: mask[t, p]} Q[t] (n_p terms),
so P[p] is read once whatever the number of pairs:
    loss   = norm * sum_{p, b} [ (sum_k W_pbk) * lse_pb - sum_k W_pbk x_pbk ],  x = P / tau, lse = LSE_k x,
    dL/dP  = g * norm / tau * ( (sum_k W_pbk) * softmax(x_pb) - W_pb ),        norm = 1 / (n_pairs * B).
With rows of Q summing to 1 the gradient is the familiar sum over pairs of (softmax(P/tau) - Q[t]) / tau.
The forward saves lse [V, B] (fp32) so the backward recomputes softmax in a single pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

TILE_ELEMS = 8192
NUM_WARPS = 8
MAX_VIEWS = 5  # the pair mask travels as the bits of one int32 kernel argument (no tensor, no copy)


@triton.jit
def _targets(q_ptr, bits, p, V, rows, cols, mask, stride_qv, stride_qb, stride_qk):
    """W = sum over target views t with mask[t, p] of Q[t, rows, cols] (fp32)."""
    w = tl.zeros((rows.shape[0], cols.shape[0]), dtype=tl.float32)
    for t in range(V):
        sel = ((bits >> (t * V + p)) & 1).to(tl.float32)
        qt = tl.load(
            q_ptr + t * stride_qv + rows[:, None] * stride_qb + cols[None, :] * stride_qk,
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        w += sel * qt
    return w


@triton.jit
def _logits_tile(
    p_ptr, p, t, B, K, inv_tau, stride_pv, stride_pb, stride_pk,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Rows t*BLOCK_B.. of view p: indices, masks and the fp32 logits P[p, rows] / tau [BLOCK_B, BLOCK_K]."""
    rows = t * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_K)
    row_mask = rows < B
    col_mask = cols < K
    mask = row_mask[:, None] & col_mask[None, :]
    x = (
        tl.load(
            p_ptr + p * stride_pv + rows[:, None] * stride_pb + cols[None, :] * stride_pk,
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        * inv_tau
    )
    return rows, cols, row_mask, col_mask, mask, x


@triton.jit
def _loss_fwd_kernel(
    p_ptr, q_ptr, lse_ptr, part_ptr, bits, V, B, K, inv_tau, norm,
    stride_pv, stride_pb, stride_pk, stride_qv, stride_qb, stride_qk,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    p = tl.program_id(0)
    t = tl.program_id(1)
    rows, cols, row_mask, col_mask, mask, x = _logits_tile(
        p_ptr, p, t, B, K, inv_tau, stride_pv, stride_pb, stride_pk, BLOCK_B, BLOCK_K
    )
    xm = tl.where(col_mask[None, :], x, float("-inf"))
    m = tl.max(xm, axis=1)
    lse = m + tl.log(tl.sum(tl.exp(xm - m[:, None]), axis=1))
    w = _targets(q_ptr, bits, p, V, rows, cols, mask, stride_qv, stride_qb, stride_qk)
    per_row = tl.sum(w, axis=1) * lse - tl.sum(w * x, axis=1)
    per_row = tl.where(row_mask, per_row, 0.0)
    tl.store(part_ptr + p * tl.num_programs(1) + t, tl.sum(per_row, axis=0) * norm)
    tl.store(lse_ptr + p * B + rows, lse, mask=row_mask)


@triton.jit
def _loss_bwd_kernel(
    p_ptr, q_ptr, lse_ptr, g_ptr, dp_ptr, bits, V, B, K, inv_tau, norm,
    stride_pv, stride_pb, stride_pk, stride_qv, stride_qb, stride_qk,
    stride_dv, stride_db, stride_dk,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    p = tl.program_id(0)
    t = tl.program_id(1)
    rows, cols, row_mask, col_mask, mask, x = _logits_tile(
        p_ptr, p, t, B, K, inv_tau, stride_pv, stride_pb, stride_pk, BLOCK_B, BLOCK_K
    )
    lse = tl.load(lse_ptr + p * B + rows, mask=row_mask, other=0.0)
    sm = tl.exp(x - lse[:, None])
    w = _targets(q_ptr, bits, p, V, rows, cols, mask, stride_qv, stride_qb, stride_qk)
    g = tl.load(g_ptr).to(tl.float32) * norm * inv_tau
    dp = g * (tl.sum(w, axis=1)[:, None] * sm - w)
    tl.store(
        dp_ptr + p * stride_dv + rows[:, None] * stride_db + cols[None, :] * stride_dk,
        dp.to(dp_ptr.dtype.element_ty),
        mask=mask,
    )


def _blocks(K: int) -> tuple[int, int]:
    block_k = max(16, triton.next_power_of_2(K))
    return max(1, min(64, TILE_ELEMS // block_k)), block_k


class SwappedLoss(torch.autograd.Function):
    """loss(P [V, B, K], Q [V, B, K], pair bits, tau) -> 0-dim fp32; gradient for P only (Q is a target)."""

    @staticmethod
    def forward(ctx, P: Tensor, Q: Tensor, bits: int, n_pairs: int, tau: float) -> Tensor:  # type: ignore[override]
        V, B, K = P.shape
        block_b, block_k = _blocks(K)
        T = triton.cdiv(B, block_b)
        lse = torch.empty((V, B), dtype=torch.float32, device=P.device)
        part = torch.empty((V * T,), dtype=torch.float32, device=P.device)
        norm = 1.0 / (n_pairs * B)
        _loss_fwd_kernel[(V, T)](
            P, Q, lse, part, bits, V, B, K, 1.0 / tau, norm,
            P.stride(0), P.stride(1), P.stride(2), Q.stride(0), Q.stride(1), Q.stride(2),
            BLOCK_B=block_b, BLOCK_K=block_k, num_warps=NUM_WARPS,
        )  # fmt: skip
        ctx.save_for_backward(P, Q, lse)
        ctx.bits, ctx.tau, ctx.norm = bits, tau, norm
        return part.sum()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        P, Q, lse = ctx.saved_tensors
        V, B, K = P.shape
        block_b, block_k = _blocks(K)
        dP = torch.empty(P.shape, dtype=P.dtype, device=P.device)
        g = grad.reshape(1).to(torch.float32).contiguous()
        _loss_bwd_kernel[(V, triton.cdiv(B, block_b))](
            P, Q, lse, g, dP, ctx.bits, V, B, K, 1.0 / ctx.tau, ctx.norm,
            P.stride(0), P.stride(1), P.stride(2), Q.stride(0), Q.stride(1), Q.stride(2),
            dP.stride(0), dP.stride(1), dP.stride(2),
            BLOCK_B=block_b, BLOCK_K=block_k, num_warps=NUM_WARPS,
        )  # fmt: skip
        return dP, None, None, None, None


def mask_bits(mask: Tensor) -> tuple[int, int]:
    """mask [V, V] bool -> (bit t*V + p set for each pair, number of pairs). Syncs if the mask is on a GPU:
    pass it as a CPU tensor."""
    V = mask.shape[0]
    if V > MAX_VIEWS:
        raise ValueError(
            f"the Triton swapped loss supports V <= {MAX_VIEWS} views, got mask {tuple(mask.shape)}"
        )
    flat = mask.reshape(-1).tolist()
    # bit 30 is never read: it keeps the argument from being 1, which Triton would specialise into a constexpr
    bits = sum(1 << i for i, on in enumerate(flat) if on) | (1 << 30)
    return bits, sum(flat)


def swapped_loss(P: Tensor, Q: Tensor, mask: Tensor, tau: float) -> Tensor:
    """See kernels.swapped_loss."""
    bits, n_pairs = mask_bits(mask)
    return SwappedLoss.apply(P, Q.detach(), bits, n_pairs, tau)
