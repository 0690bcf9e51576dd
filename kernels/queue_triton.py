"""Triton ring-buffer enqueue: queue[v, (ptr + b) % L] = z[v, b] for all views in one launch."""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

BLOCK_B = 16


@triton.jit
def _enqueue_kernel(
    q_ptr, z_ptr, B, L, D, ptr,
    stride_qv, stride_ql, stride_qd, stride_zv, stride_zb, stride_zd,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    v = tl.program_id(0)
    b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = b < B
    dst = (ptr + b) % L
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        mask = b_mask[:, None] & (d < D)[None, :]
        val = tl.load(z_ptr + v * stride_zv + b[:, None] * stride_zb + d[None, :] * stride_zd, mask=mask)
        tl.store(
            q_ptr + v * stride_qv + dst[:, None] * stride_ql + d[None, :] * stride_qd,
            val,
            mask=mask,
        )


def enqueue(queue: Tensor, z: Tensor, ptr: int) -> int:
    """queue: [V, L, D] (in place), z: [V, B, D] -> next write position (ptr + B) % L."""
    V, L, D = queue.shape
    B = z.shape[1]
    z = z.detach().to(queue.dtype)  # host-side cast: torch's rounding, and the kernel is a pure copy
    block_d = max(16, min(128, triton.next_power_of_2(D)))
    _enqueue_kernel[(V, triton.cdiv(B, BLOCK_B))](
        queue, z, B, L, D, ptr,
        queue.stride(0), queue.stride(1), queue.stride(2), z.stride(0), z.stride(1), z.stride(2),
        BLOCK_B=BLOCK_B, BLOCK_D=block_d,
    )  # fmt: skip
    return (ptr + B) % L
