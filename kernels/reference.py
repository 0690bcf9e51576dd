"""Plain-PyTorch loss head of ViCC / SwAV: the ground truth the Triton kernels are tested against.

Shapes: N rows to assign (current batch first, then queue rows), K prototypes, D embedding size, V views,
B batch rows per view, L queue rows per view. All arithmetic is fp32 whatever the input dtype.

Sinkhorn follows SwAV's ``distributed_sinkhorn`` (facebookresearch/swav, main_swav.py) step for step --
normalise every prototype's column over the *global* batch (the one all-reduced sum), then every sample's row
(local), ``n_iters`` times, rows summing to 1 at the end -- but in the log domain: Q = exp(s/eps + a_i + b_k) is
carried as the scaling vectors a [N], b [K], so no exponent ever overflows or underflows, whatever the scores'
range or dtype. SwAV's uniform factors (1/sum Q, 1/K, 1/B) cancel in the next normalisation, so the result does
not depend on how B is counted across ranks. :func:`sinkhorn_swav` is SwAV's literal exp-domain form, kept to
prove the two agree on ordinary inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

PRIOR_FLOOR = torch.finfo(torch.float32).tiny

AllReduce = Callable[..., object]
"""``torch.distributed.all_reduce``-compatible hook: ``all_reduce(t)`` sums ``t`` in place over the ranks,
``all_reduce(t, op=torch.distributed.ReduceOp.MAX)`` takes the element-wise maximum in place."""


def prototype_scores(z: Tensor, prototypes: Tensor) -> Tensor:
    """Cosine scores of embeddings against prototypes (both already L2-normalised by the caller).

    z: [N, D], prototypes: [K, D] -> scores [N, K] in fp32.
    """
    return z.float() @ prototypes.float().t()


def _reduce_max(t: Tensor, all_reduce: AllReduce | None) -> Tensor:
    if all_reduce is not None:
        import torch.distributed as dist

        all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def _reduce_sum(t: Tensor, all_reduce: AllReduce | None) -> Tensor:
    if all_reduce is not None:
        all_reduce(t)
    return t


def global_logsumexp(x: Tensor, dim: int, all_reduce: AllReduce | None) -> Tensor:
    """log sum exp of ``x`` along ``dim`` over this rank's rows and, with ``all_reduce``, every rank's.

    The maximum is reduced first so the summed exponentials are <= 1 on every rank (no overflow), then the sums.
    x: [..., N, K] -> [..., K] for dim=-2 (a column statistic over the global batch).
    """
    m = x.amax(dim=dim)
    m = _reduce_max(m.clone(), all_reduce)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(x - m_safe.unsqueeze(dim)).sum(dim=dim)
    s = _reduce_sum(s, all_reduce)
    return m_safe + torch.log(s)


def sinkhorn_log(x: Tensor, n_iters: int, n_batch: int, all_reduce: AllReduce | None = None) -> Tensor:
    """Log-domain Sinkhorn-Knopp on logits x = s/eps (fp32). x: [..., N, K] -> Q [..., n_batch, K], rows sum to 1.

    Per iteration: b = -LSE_i(x + a) over the global batch (prototype equipartition), then
    a = -LSE_k(x + b) (each sample's assignment sums to 1). Leading dims (views) are independent problems.
    """
    a = torch.zeros(x.shape[:-1], dtype=torch.float32, device=x.device)  # [..., N]
    b = torch.zeros(x.shape[:-2] + x.shape[-1:], dtype=torch.float32, device=x.device)  # [..., K]
    for _ in range(n_iters):
        b = -global_logsumexp(x + a.unsqueeze(-1), -2, all_reduce)
        a = -torch.logsumexp(x + b.unsqueeze(-2), dim=-1)
    xb = x[..., :n_batch, :]
    return torch.exp(xb + a[..., :n_batch].unsqueeze(-1) + b.unsqueeze(-2))


def sinkhorn(
    scores: Tensor,
    eps: float,
    n_iters: int,
    n_batch: int,
    all_reduce: AllReduce | None = None,
) -> Tensor:
    """Soft equipartitioned assignments of the current batch (SwAV / ViCC eq. 4-6).

    scores: [N, K] or [V, N, K] (first n_batch rows are the current batch, the rest queue rows) -> Q: [n_batch, K]
    or [V, n_batch, K], fp32, each row summing to 1, each prototype's column summing to ~N_global/K over all N rows.
    all_reduce: None for one process; else a ``torch.distributed.all_reduce``-compatible callable, applied to the
    column (per-prototype) statistics, which span the global batch.
    """
    return sinkhorn_log(scores.float() / eps, n_iters, n_batch, all_reduce)


def sinkhorn_prior(
    scores: Tensor,
    prior: Tensor,
    lambda1: float,
    lambda2: float,
    n_iters: int,
    n_batch: int,
    all_reduce: AllReduce | None = None,
) -> Tensor:
    """GOCA's optimal assignment with a prior (Coskun et al., eq. 6-10) with cost C = -scores:
    K = exp((scores + lambda2 * log prior) / (lambda1 + lambda2)), then the same Sinkhorn as :func:`sinkhorn`.

    scores, prior: [N, K] or [V, N, K] (prior: the other view's initial assignment D', >= 0, clamped to the
    smallest normal fp32 so log stays finite) -> Q [..., n_batch, K]. lambda2 = 0 is plain Sinkhorn, eps = lambda1.
    """
    x = scores.float()
    if lambda2 != 0.0:
        x = x + lambda2 * torch.log(prior.float().clamp_min(PRIOR_FLOOR))
    return sinkhorn_log(x / (lambda1 + lambda2), n_iters, n_batch, all_reduce)


def sinkhorn_swav(
    scores: Tensor,
    eps: float,
    n_iters: int,
    n_batch: int,
    all_reduce: AllReduce | None = None,
    world_size: int = 1,
) -> Tensor:
    """SwAV's exp-domain distributed_sinkhorn, literally (queue rows placed after the batch). scores: [N, K] ->
    [n_batch, K]. Overflows for large scores/eps; only for showing :func:`sinkhorn` computes the same thing."""
    q = torch.exp(scores.float() / eps).t()  # [K, N]
    n_global = q.shape[1] * world_size
    k = q.shape[0]
    total = _reduce_sum(q.sum().reshape(1), all_reduce)
    q = q / total
    for _ in range(n_iters):
        rows = _reduce_sum(q.sum(dim=1, keepdim=True), all_reduce)
        q = q / rows / k
        q = q / q.sum(dim=0, keepdim=True) / n_global
    q = q * n_global
    return q.t()[:n_batch]


def swapped_loss(P: Tensor, Q: Tensor, mask: Tensor, tau: float) -> Tensor:
    """Swapped-prediction loss: -mean over the (t, p) pairs with mask[t, p] and over the batch of
    sum_k Q[t, b, k] * log_softmax(P[p, b] / tau)_k.

    P: [V, B, K] scores of the views against the trainable prototypes (gradient flows into it);
    Q: [V, B, K] Sinkhorn targets (treated as constants); mask: [V, V] bool, mask[t, p] = view p predicts
    view t's target. ViCC cross-stream: V=4, mask = ~eye(4) (12 terms, = the pseudocode's 1/4 * 1/3);
    SwAV: V=2, mask = ~eye(2). Returns a 0-dim fp32 tensor.
    """
    logp = torch.log_softmax(P.float() / tau, dim=-1)  # [V, B, K]
    t_idx, p_idx = torch.nonzero(mask, as_tuple=True)
    terms = -(Q.detach().float()[t_idx] * logp[p_idx]).sum(dim=-1)  # [pairs, B]
    return terms.mean()


def enqueue(queue: Tensor, z: Tensor, ptr: int) -> int:
    """Ring-buffer enqueue: write z [V, B, D] into queue [V, L, D] rows ptr, ptr+1, ... (mod L), in place.

    Returns the next write position (ptr + B) % L. Row order is irrelevant to Sinkhorn, so a ring replaces
    SwAV's shift-by-B copy (which moves the whole queue every step).
    """
    L = queue.shape[1]
    B = z.shape[1]
    idx = (ptr + torch.arange(B, device=queue.device)) % L
    queue[:, idx] = z.detach().to(queue.dtype)
    return (ptr + B) % L
