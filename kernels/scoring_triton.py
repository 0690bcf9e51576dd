"""Triton prototype scoring: s = z . prototypes^T, [V, N, D] x [K, D] -> fp32 [V, N, K], one tiled launch.

The Sinkhorn path does not need this matrix (kernels.sinkhorn_triton.assign recomputes score tiles from z); it
is for callers that want the scores themselves (e.g. kNN, monitoring, the GOCA prior pass).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.tiles import dot_mode, score_tile

BLOCK_N = 32
BLOCK_K = 64


@triton.jit
def _scores_kernel(
    z_ptr, c_ptr, out_ptr, N, K, D,
    stride_zv, stride_zn, stride_zd, stride_ck, stride_cd, stride_ov, stride_on, stride_ok,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    v = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    row_mask = rows < N
    col_mask = cols < K
    s = score_tile(
        z_ptr + v * stride_zv, c_ptr, rows, cols, row_mask, col_mask, D,
        stride_zn, stride_zd, stride_ck, stride_cd, BLOCK_D, DOT,
    )  # fmt: skip
    tl.store(
        out_ptr + v * stride_ov + rows[:, None] * stride_on + cols[None, :] * stride_ok,
        s,
        mask=row_mask[:, None] & col_mask[None, :],
    )


def prototype_scores(z: Tensor, prototypes: Tensor) -> Tensor:
    """z: [N, D] or [V, N, D], prototypes: [K, D] -> fp32 [N, K] or [V, N, K]."""
    squeeze = z.dim() == 2
    z3 = z.unsqueeze(0) if squeeze else z
    c = prototypes
    V, N, D = z3.shape
    K = c.shape[0]
    out = torch.empty((V, N, K), dtype=torch.float32, device=z.device)
    block_d = max(16, min(64, triton.next_power_of_2(D)))
    grid = (V, triton.cdiv(N, BLOCK_N), triton.cdiv(K, BLOCK_K))
    _scores_kernel[grid](
        z3, c, out, N, K, D,
        z3.stride(0), z3.stride(1), z3.stride(2), c.stride(0), c.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, BLOCK_D=block_d, DOT=dot_mode(z3.dtype, c.dtype),
    )  # fmt: skip
    return out[0] if squeeze else out
