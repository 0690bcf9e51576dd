"""Triton Sinkhorn-Knopp (log domain, SwAV's iteration order), optionally fused with the prototype scoring.

The iterate is kept as scaling vectors: Q_ik = exp(x_ik + a_i + b_k), x = s/eps (or GOCA's prior logits).
Each iteration is b_k = -LSE_i(x_ik + a_i) over the global batch, then a_i = -LSE_k(x_ik + b_k). The row scaling
a of a tile needs only b and the tile itself, so it is never stored: one streaming pass over x per iteration
computes the tile's a from the previous b and folds the tile into the online column log-sum-exp of the next b.

Two launch plans, same math and same helpers (kernels/tiles.py):
- fused: one program per view runs every iteration and writes Q (1 launch in all); used in one process when
  N <= FUSED_MAX_ROWS (the matrix is re-read from L2 each pass; above that one SM per view is too few:
  the threshold is a guess, not tuned on a GPU).
- pieces: one launch per pass over a (view, row tile) grid writing per-tile column (max, sum) partials. In one
  process the next pass combines them itself (n_iters + 1 launches); across ranks the partials are combined on
  the host and all-reduced (max, then sum: SwAV's one per-prototype sum, made overflow-proof) between passes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.reference import AllReduce
from kernels.tiles import col_stats, combine_partials, dot_mode, logits_tile, merge_stats, neg_row_lse

FUSED_MAX_ROWS = 256
MAX_K = 16384
TILE_ELEMS = 8192  # BLOCK_N * BLOCK_K: the register tile of one program
NUM_WARPS = 8  # 32 fp32 tile elements per thread
BLOCK_T = 8  # partial rows combined per step


@triton.jit
def _sinkhorn_fused_kernel(
    src_ptr, prior_ptr, c_ptr, out_ptr,
    N, K, D, n_batch, n_iters,
    stride_v, stride_n, stride_k,
    stride_pv, stride_pn, stride_pk,
    stride_ck, stride_cd,
    stride_ov, stride_on, stride_ok,
    scale, prior_coef,
    FROM_Z: tl.constexpr, HAS_PRIOR: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, DOT: tl.constexpr,
):  # fmt: skip
    v = tl.program_id(0)
    src_ptr += v * stride_v
    prior_ptr += v * stride_pv
    out_ptr += v * stride_ov
    cols = tl.arange(0, BLOCK_K)
    col_mask = cols < K
    lb = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for it in range(n_iters):
        m = tl.full((BLOCK_K,), float("-inf"), dtype=tl.float32)
        s = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            rows = n0 + tl.arange(0, BLOCK_N)
            row_mask = rows < N
            x = logits_tile(
                src_ptr, prior_ptr, c_ptr, rows, cols, row_mask, col_mask, D,
                stride_n, stride_k, stride_pn, stride_pk, stride_ck, stride_cd,
                scale, prior_coef, FROM_Z, HAS_PRIOR, BLOCK_D, DOT,
            )  # fmt: skip
            # SwAV starts from exp(x) itself: no row scaling before the first column normalisation.
            la = tl.where(it > 0, neg_row_lse(x, lb, col_mask), 0.0)
            tm, ts = col_stats(x, la, row_mask)
            m, s = merge_stats(m, s, tm, ts)
        lb = -(m + tl.log(s))
    for n0 in range(0, n_batch, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        row_mask = rows < n_batch
        x = logits_tile(
            src_ptr, prior_ptr, c_ptr, rows, cols, row_mask, col_mask, D,
            stride_n, stride_k, stride_pn, stride_pk, stride_ck, stride_cd,
            scale, prior_coef, FROM_Z, HAS_PRIOR, BLOCK_D, DOT,
        )  # fmt: skip
        la = neg_row_lse(x, lb, col_mask)
        q = tl.exp(x + la[:, None] + lb[None, :])
        tl.store(
            out_ptr + rows[:, None] * stride_on + cols[None, :] * stride_ok,
            q,
            mask=row_mask[:, None] & col_mask[None, :],
        )


@triton.jit
def _sinkhorn_pass_kernel(
    src_ptr, prior_ptr, c_ptr, lb_ptr, pm_in_ptr, ps_in_ptr, pm_out_ptr, ps_out_ptr, out_ptr,
    n_rows, K, D, T_prev,
    stride_v, stride_n, stride_k,
    stride_pv, stride_pn, stride_pk,
    stride_ck, stride_cd,
    stride_ov, stride_on, stride_ok,
    scale, prior_coef,
    FIRST: tl.constexpr, COMBINE: tl.constexpr, FINAL: tl.constexpr,
    FROM_Z: tl.constexpr, HAS_PRIOR: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
    DOT: tl.constexpr,
):  # fmt: skip
    """One pass over row tile program_id(1) of view program_id(0).

    b comes from lb_ptr [V, BLOCK_K] (host-combined, distributed) or, with COMBINE, from the previous pass's
    partials [V, T_prev, BLOCK_K]. Not FINAL: writes this tile's column (max, sum) of exp(x + a) to the output
    partials. FINAL: writes Q rows (n_rows = n_batch).
    """
    v = tl.program_id(0)
    t = tl.program_id(1)
    src_ptr += v * stride_v
    prior_ptr += v * stride_pv
    cols = tl.arange(0, BLOCK_K)
    col_mask = cols < K
    rows = t * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n_rows
    x = logits_tile(
        src_ptr, prior_ptr, c_ptr, rows, cols, row_mask, col_mask, D,
        stride_n, stride_k, stride_pn, stride_pk, stride_ck, stride_cd,
        scale, prior_coef, FROM_Z, HAS_PRIOR, BLOCK_D, DOT,
    )  # fmt: skip
    if FIRST:
        la = tl.zeros((BLOCK_N,), dtype=tl.float32)
        lb = tl.zeros((BLOCK_K,), dtype=tl.float32)
    else:
        if COMBINE:
            base = v * T_prev * BLOCK_K
            lb = combine_partials(pm_in_ptr + base, ps_in_ptr + base, T_prev, cols, BLOCK_T)
        else:
            lb = tl.load(lb_ptr + v * BLOCK_K + cols)
        la = neg_row_lse(x, lb, col_mask)
    if FINAL:
        q = tl.exp(x + la[:, None] + lb[None, :])
        tl.store(
            out_ptr + v * stride_ov + rows[:, None] * stride_on + cols[None, :] * stride_ok,
            q,
            mask=row_mask[:, None] & col_mask[None, :],
        )
    else:
        tm, ts = col_stats(x, la, row_mask)
        n_tiles = tl.num_programs(1)
        off = (v * n_tiles + t) * BLOCK_K + cols
        tl.store(pm_out_ptr + off, tm)
        tl.store(ps_out_ptr + off, ts)


def _blocks(K: int, D: int) -> tuple[int, int, int]:
    if K > MAX_K:
        raise ValueError(f"Triton Sinkhorn supports K <= {MAX_K} prototypes, got K={K}")
    block_k = max(16, triton.next_power_of_2(K))
    block_n = max(16, min(64, TILE_ELEMS // block_k))
    # narrow D steps: the [BLOCK_D, BLOCK_K] prototype slice and the score tile both live in registers
    return block_n, block_k, 16


def _host_combine(pm: Tensor, ps: Tensor, all_reduce: AllReduce) -> Tensor:
    """Partials [V, T, BK] -> b [V, BK] over every rank: max all-reduced first so sums stay <= T * world."""
    import torch.distributed as dist

    m = pm.amax(dim=1)
    all_reduce(m, op=dist.ReduceOp.MAX)
    s = (ps * torch.exp(pm - m.unsqueeze(1))).sum(dim=1)
    all_reduce(s)
    return (-(m + torch.log(s))).contiguous()


def _run(
    src: Tensor,
    prior: Tensor | None,
    c: Tensor | None,
    N: int,
    K: int,
    scale: float,
    prior_coef: float,
    n_iters: int,
    n_batch: int,
    all_reduce: AllReduce | None,
    fused: bool | None = None,
) -> Tensor:
    """src: scores [V, N, K] or (with c [K, D]) embeddings [V, N, D] -> Q fp32 [V, n_batch, K]."""
    V = src.shape[0]
    from_z = c is not None
    D = src.shape[2] if from_z else 1
    block_n, block_k, block_d = _blocks(K, D)
    dev = src.device
    out = torch.empty((V, n_batch, K), dtype=torch.float32, device=dev)
    has_prior = prior is not None
    pr = prior if has_prior else src  # never read when HAS_PRIOR is False
    cc = c if from_z else src
    common = dict(
        stride_v=src.stride(0), stride_n=src.stride(1), stride_k=src.stride(2),
        stride_pv=pr.stride(0), stride_pn=pr.stride(1), stride_pk=pr.stride(2),
        stride_ck=cc.stride(0) if from_z else 0, stride_cd=cc.stride(1) if from_z else 0,
        stride_ov=out.stride(0), stride_on=out.stride(1), stride_ok=out.stride(2),
        scale=scale, prior_coef=prior_coef,
        FROM_Z=from_z, HAS_PRIOR=has_prior,
        BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, DOT=dot_mode(src.dtype, cc.dtype),
    )  # fmt: skip
    if fused is None:
        fused = all_reduce is None and N <= FUSED_MAX_ROWS
    if fused and all_reduce is None:
        _sinkhorn_fused_kernel[(V,)](
            src, pr, cc, out, N, K, D, n_batch, n_iters, num_warps=NUM_WARPS, **common
        )  # fmt: skip
        return out
    T = triton.cdiv(N, block_n)
    bufs = [torch.empty((V, T, block_k), dtype=torch.float32, device=dev) for _ in range(4)]
    lb = torch.empty((V, block_k), dtype=torch.float32, device=dev)
    prev, cur = (bufs[0], bufs[1]), (bufs[2], bufs[3])
    combine = all_reduce is None
    for it in range(n_iters):
        if it > 0 and not combine:
            lb = _host_combine(prev[0], prev[1], all_reduce)
        _sinkhorn_pass_kernel[(V, T)](
            src, pr, cc, lb, prev[0], prev[1], cur[0], cur[1], out, N, K, D, T,
            FIRST=it == 0, COMBINE=combine, FINAL=False, BLOCK_T=BLOCK_T, num_warps=NUM_WARPS, **common,
        )  # fmt: skip
        prev, cur = cur, prev
    if not combine:
        lb = _host_combine(prev[0], prev[1], all_reduce)
    _sinkhorn_pass_kernel[(V, triton.cdiv(n_batch, block_n))](
        src, pr, cc, lb, prev[0], prev[1], cur[0], cur[1], out, n_batch, K, D, T,
        FIRST=False, COMBINE=combine, FINAL=True, BLOCK_T=BLOCK_T, num_warps=NUM_WARPS, **common,
    )  # fmt: skip
    return out


def sinkhorn(
    scores: Tensor,
    scale: float,
    prior: Tensor | None,
    prior_coef: float,
    n_iters: int,
    n_batch: int,
    all_reduce: AllReduce | None,
    fused: bool | None = None,
) -> Tensor:
    """Q of x = scale * scores + prior_coef * log(prior). scores, prior: [N, K] or [V, N, K] -> [.., n_batch, K]."""
    squeeze = scores.dim() == 2
    s3 = scores.unsqueeze(0) if squeeze else scores
    p3 = None if prior is None else (prior.unsqueeze(0) if squeeze else prior)
    N, K = s3.shape[1], s3.shape[2]
    q = _run(s3, p3, None, N, K, scale, prior_coef, n_iters, n_batch, all_reduce, fused)
    return q[0] if squeeze else q


def assign(
    z: Tensor,
    prototypes: Tensor,
    scale: float,
    n_iters: int,
    n_batch: int,
    all_reduce: AllReduce | None,
    fused: bool | None = None,
) -> Tensor:
    """Sinkhorn of scale * z . prototypes^T with the scores recomputed per tile. z: [N, D] or [V, N, D]."""
    squeeze = z.dim() == 2
    z3 = z.unsqueeze(0) if squeeze else z
    c = prototypes
    N, K = z3.shape[1], c.shape[0]
    q = _run(z3, None, c, N, K, scale, 0.0, n_iters, n_batch, all_reduce, fused)
    return q[0] if squeeze else q
