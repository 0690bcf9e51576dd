"""Triton device helpers shared by the scoring and Sinkhorn kernels: logits tiles and log-sum-exp pieces.

Only mainstream ``tl`` ops (load/store with masks, dot, max/sum, exp/log, where) so the kernels compile with
Triton 3.6 and run in the 3.8 interpreter.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def dot_mode(a: torch.dtype, b: torch.dtype) -> int:
    """How score tiles multiply: 0 native 16-bit tensor-core dot (both operands bf16 or both fp16), 1 exact fp32
    (the interpreter, where the bf16 dot of triton 3.8 returns garbage), 2 fp32 operands as 3xTF32 on a GPU."""
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if a == b and a in (torch.float16, torch.bfloat16) and not (interpret and a == torch.bfloat16):
        return 0
    return 1 if interpret else 2


@triton.jit
def score_tile(
    z_ptr,
    c_ptr,
    rows,
    cols,
    row_mask,
    col_mask,
    D,
    stride_zn,
    stride_zd,
    stride_ck,
    stride_cd,
    BLOCK_D: tl.constexpr,
    DOT: tl.constexpr,
):
    """fp32 scores z[rows] . c[cols] -> [BLOCK_N, BLOCK_K]; z_ptr already offset to the view.

    z and c may be any float dtype; sums are fp32. DOT: see :func:`dot_mode`.
    """
    acc = tl.zeros((rows.shape[0], cols.shape[0]), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < D
        zt = tl.load(
            z_ptr + rows[:, None] * stride_zn + d[None, :] * stride_zd,
            mask=row_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        ct = tl.load(
            c_ptr + d[:, None] * stride_cd + cols[None, :] * stride_ck,
            mask=d_mask[:, None] & col_mask[None, :],
            other=0.0,
        )
        if DOT == 0:  # same 16-bit dtype: tensor cores, exact products, fp32 accumulation
            acc = tl.dot(zt, ct, acc)
        elif DOT == 1:  # exact fp32 (the interpreter; its bf16 dot is broken in triton 3.8)
            acc = tl.dot(zt.to(tl.float32), ct.to(tl.float32), acc, input_precision="ieee")
        else:  # fp32 on a GPU: 3xTF32 on the tensor cores (plain TF32 would move s/eps by ~1e-2)
            acc = tl.dot(zt.to(tl.float32), ct.to(tl.float32), acc, input_precision="tf32x3")
    return acc


@triton.jit
def logits_tile(
    src_ptr,
    prior_ptr,
    c_ptr,
    rows,
    cols,
    row_mask,
    col_mask,
    D,
    stride_n,
    stride_k,
    stride_pn,
    stride_pk,
    stride_ck,
    stride_cd,
    scale,
    prior_coef,
    FROM_Z: tl.constexpr,
    HAS_PRIOR: tl.constexpr,
    BLOCK_D: tl.constexpr,
    DOT: tl.constexpr,
):
    """x = scale * s + prior_coef * log(max(prior, tiny)) as fp32 [BLOCK_N, BLOCK_K]; 0 outside the masks.

    FROM_Z: s = z . c recomputed from embeddings (src = z [N, D], strides stride_n/stride_k = z's n/d strides);
    else s is read from the score matrix src [N, K].
    """
    mask = row_mask[:, None] & col_mask[None, :]
    if FROM_Z:
        s = score_tile(
            src_ptr, c_ptr, rows, cols, row_mask, col_mask, D, stride_n, stride_k,
            stride_ck, stride_cd, BLOCK_D, DOT,
        )  # fmt: skip
    else:
        s = tl.load(src_ptr + rows[:, None] * stride_n + cols[None, :] * stride_k, mask=mask, other=0.0).to(
            tl.float32
        )
    x = s * scale
    if HAS_PRIOR:
        pr = tl.load(
            prior_ptr + rows[:, None] * stride_pn + cols[None, :] * stride_pk, mask=mask, other=1.0
        ).to(tl.float32)
        x += prior_coef * tl.log(tl.maximum(pr, 1.1754943508222875e-38))
    return tl.where(mask, x, 0.0)


@triton.jit
def neg_row_lse(x, lb, col_mask):
    """a_i = -log sum_k exp(x_ik + b_k) over the real columns. x: [BN, BK], lb: [BK] -> [BN]."""
    v = tl.where(col_mask[None, :], x + lb[None, :], float("-inf"))
    m = tl.max(v, axis=1)
    s = tl.sum(tl.exp(v - m[:, None]), axis=1)
    return -(m + tl.log(s))


@triton.jit
def col_stats(x, la, row_mask):
    """Column max and sum of exp(x + a - max) over the real rows of one tile. -> ([BK], [BK])."""
    v = tl.where(row_mask[:, None], x + la[:, None], float("-inf"))
    m = tl.max(v, axis=0)
    s = tl.sum(tl.exp(v - m[None, :]), axis=0)
    return m, s


@triton.jit
def merge_stats(m, s, tm, ts):
    """Online log-sum-exp merge of (max, sum) pairs; m may be -inf (empty), tm is finite."""
    m_new = tl.maximum(m, tm)
    return m_new, s * tl.exp(m - m_new) + ts * tl.exp(tm - m_new)


@triton.jit
def combine_partials(pm_ptr, ps_ptr, T, cols, BLOCK_T: tl.constexpr):
    """b = -LSE over T per-tile (max, sum) partials [T, BLOCK_K] (row-major, pointers at this view's first),
    read BLOCK_T rows at a time. -> [BLOCK_K]."""
    m = tl.full((cols.shape[0],), float("-inf"), dtype=tl.float32)
    s = tl.zeros((cols.shape[0],), dtype=tl.float32)
    for j0 in range(0, T, BLOCK_T):
        j = j0 + tl.arange(0, BLOCK_T)
        jm = (j < T)[:, None]
        off = j[:, None] * cols.shape[0] + cols[None, :]
        pm = tl.load(pm_ptr + off, mask=jm, other=float("-inf"))
        ps = tl.load(ps_ptr + off, mask=jm, other=0.0)
        tm = tl.max(pm, axis=0)
        ts = tl.sum(ps * tl.exp(pm - tm[None, :]), axis=0)
        m, s = merge_stats(m, s, tm, ts)
    return -(m + tl.log(s))
