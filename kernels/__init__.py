"""The loss head of ViCC / SwAV: queue scoring, Sinkhorn-Knopp, swapped-prediction loss, queue enqueue.

Every function takes ``backend="auto" | "triton" | "torch"`` (or a ``vicc_fast.config.KernelBackend``):
``auto`` runs Triton on CUDA tensors, the Triton interpreter on CPU tensors when ``TRITON_INTERPRET=1``, plain
PyTorch (``kernels.reference``) otherwise. Shapes and math: ``kernels/README.md``. Pure functions on tensors: no
config objects, no global state. The Triton modules are imported on first use, so TRITON_INTERPRET may be set
any time before the first Triton call.
"""

from __future__ import annotations

import os

from torch import Tensor

from kernels import reference
from kernels.reference import AllReduce
from kernels.validate import (
    check_embeddings,
    check_enqueue,
    check_float,
    check_loss_args,
    check_positive,
    check_same_device,
    check_scores,
)

__all__ = [
    "AllReduce",
    "assign",
    "enqueue",
    "make_all_reduce",
    "prototype_scores",
    "resolve_backend",
    "sinkhorn",
    "sinkhorn_prior",
    "swapped_loss",
]

BACKENDS = ("auto", "triton", "torch")


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, *tensors: Tensor) -> str:
    """'auto' | 'triton' | 'torch' -> 'triton' or 'torch' for these tensors (see the module docstring)."""
    name = getattr(backend, "value", backend)
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = any(t.is_cuda for t in tensors)
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    if name == "torch":
        return "torch"
    if name == "triton":
        if not _triton_available():
            raise ValueError("backend='triton' but triton is not installed")
        if not on_cuda and not interpret:
            raise ValueError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 for CPU tensors")
        return "triton"
    if _triton_available() and (on_cuda or interpret):
        return "triton"
    return "torch"


def make_all_reduce(group: object | None = None) -> AllReduce:
    """The ``all_reduce`` hook for :func:`sinkhorn` over a torch.distributed process group (None = world)."""
    import torch.distributed as dist

    def all_reduce(t: Tensor, op: object = dist.ReduceOp.SUM) -> Tensor:
        dist.all_reduce(t, op=op, group=group)
        return t

    return all_reduce


def prototype_scores(z: Tensor, prototypes: Tensor, *, backend: str = "auto") -> Tensor:
    """Scores of L2-normalised embeddings against L2-normalised prototypes.

    z: [N, D] (or [V, N, D]), prototypes: [K, D] -> fp32 [N, K] (or [V, N, K]). No autograd (targets only; the
    trainable prediction scores come from the model's prototype layer).
    """
    check_embeddings(z, prototypes)
    if resolve_backend(backend, z, prototypes) == "torch":
        return reference.prototype_scores(z, prototypes)
    from kernels import scoring_triton

    return scoring_triton.prototype_scores(z, prototypes)


def sinkhorn(
    scores: Tensor,
    eps: float,
    n_iters: int,
    n_batch: int,
    all_reduce: AllReduce | None = None,
    *,
    backend: str = "auto",
) -> Tensor:
    """Sinkhorn-Knopp equipartition (SwAV's iteration order, log domain, fp32).

    scores: [N, K] or [V, N, K], any float dtype; rows [0, n_batch) are the current batch, the rest queue rows
    -> Q: fp32 [n_batch, K] or [V, n_batch, K], rows summing to 1. ``all_reduce``: None (one process) or a
    ``torch.distributed.all_reduce``-compatible callable (see :func:`make_all_reduce`); the per-prototype sums
    are reduced over all ranks every iteration, as in SwAV (N may differ between ranks).
    """
    check_scores(scores, n_iters, n_batch)
    check_positive("eps", eps)
    if resolve_backend(backend, scores) == "torch":
        return reference.sinkhorn(scores, eps, n_iters, n_batch, all_reduce)
    from kernels import sinkhorn_triton

    return sinkhorn_triton.sinkhorn(scores, 1.0 / eps, None, 0.0, n_iters, n_batch, all_reduce)


def sinkhorn_prior(
    scores: Tensor,
    prior: Tensor,
    lambda1: float,
    lambda2: float,
    n_iters: int,
    n_batch: int,
    all_reduce: AllReduce | None = None,
    *,
    backend: str = "auto",
) -> Tensor:
    """GOCA's Sinkhorn with a per-sample prior: K = exp((scores + lambda2 * log prior) / (lambda1 + lambda2)).

    scores, prior: [N, K] or [V, N, K] (prior >= 0, e.g. the other stream's initial assignment) -> Q
    [n_batch, K] (or [V, n_batch, K]); lambda2 = 0 equals :func:`sinkhorn` with eps = lambda1.
    """
    check_scores(scores, n_iters, n_batch)
    check_float("prior", prior)
    if prior.shape != scores.shape:
        raise ValueError(
            f"prior must have the shape of scores: scores {tuple(scores.shape)}, prior {tuple(prior.shape)}"
        )
    check_same_device(scores=scores, prior=prior)
    check_positive("lambda1", lambda1)
    if lambda2 < 0:
        raise ValueError(f"lambda2 must be >= 0, got {lambda2}")
    if resolve_backend(backend, scores, prior) == "torch":
        return reference.sinkhorn_prior(scores, prior, lambda1, lambda2, n_iters, n_batch, all_reduce)
    from kernels import sinkhorn_triton

    inv = 1.0 / (lambda1 + lambda2)
    return sinkhorn_triton.sinkhorn(
        scores, inv, prior if lambda2 != 0 else None, lambda2 * inv, n_iters, n_batch, all_reduce
    )


def assign(
    z: Tensor,
    prototypes: Tensor,
    eps: float,
    n_iters: int,
    n_batch: int,
    all_reduce: AllReduce | None = None,
    *,
    backend: str = "auto",
) -> Tensor:
    """Queue scoring fused with Sinkhorn: ``sinkhorn(prototype_scores(z, prototypes), ...)`` without writing the
    [N, K] score matrix (the Triton kernel recomputes score tiles from z and the prototypes each pass).

    z: [N, D] or [V, N, D] (current batch first, then queue rows), prototypes: [K, D] -> Q [.., n_batch, K].
    """
    check_embeddings(z, prototypes)
    if not 0 < n_batch <= z.shape[-2]:
        raise ValueError(f"n_batch must be in [1, N] for z of shape {tuple(z.shape)}, got {n_batch}")
    check_positive("eps", eps)
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1, got {n_iters}")
    if resolve_backend(backend, z, prototypes) == "torch":
        return reference.sinkhorn(
            reference.prototype_scores(z, prototypes), eps, n_iters, n_batch, all_reduce
        )
    from kernels import sinkhorn_triton

    return sinkhorn_triton.assign(z, prototypes, 1.0 / eps, n_iters, n_batch, all_reduce)


def swapped_loss(P: Tensor, Q: Tensor, mask: Tensor, tau: float, *, backend: str = "auto") -> Tensor:
    """Swapped-prediction loss, -mean over pairs (t, p) with mask[t, p] and batch of
    sum_k Q[t, b, k] log_softmax(P[p, b] / tau)_k.

    P: [V, B, K] (gradient flows), Q: [V, B, K] (constant targets), mask: [V, V] bool (mask[t, p]: view p predicts
    view t's target) -> 0-dim fp32. ViCC cross-stream: V=4, mask=~eye(4); SwAV: V=2, mask=~eye(2). Keep the
    mask on the CPU: the Triton backend reads it on the host (a CUDA mask costs a device sync).
    """
    check_loss_args(P, Q, mask, tau)
    if resolve_backend(backend, P, Q) == "torch":
        return reference.swapped_loss(P, Q, mask, tau)
    from kernels import loss_triton

    return loss_triton.swapped_loss(P, Q, mask, tau)


def enqueue(queue: Tensor, z: Tensor, ptr: int, *, backend: str = "auto") -> int:
    """Ring-buffer enqueue, in place: queue [V, L, D] rows ptr .. ptr+B-1 (mod L) <- z [V, B, D] (detached).

    Returns the next write position (ptr + B) % L. The queue is a ring (not SwAV's newest-first shift): Sinkhorn
    does not care about row order, and a ring writes B rows instead of moving all L.
    """
    check_enqueue(queue, z, ptr)
    if resolve_backend(backend, queue, z) == "torch":
        return reference.enqueue(queue, z, ptr)
    from kernels import queue_triton

    return queue_triton.enqueue(queue, z, ptr)
