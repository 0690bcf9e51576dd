"""Argument checks shared by both backends: a bad shape or dtype is one ValueError naming the argument."""

from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_float(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name} must be float32, float16 or bfloat16, got {t.dtype} (shape {tuple(t.shape)})"
        )


def check_ndim(name: str, t: Tensor, ndims: tuple[int, ...], layout: str) -> None:
    if t.dim() not in ndims:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(t.shape)}")


def check_same_device(**tensors: Tensor) -> None:
    devices = {n: t.device for n, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors on different devices: {devices}")


def check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_scores(scores: Tensor, n_iters: int, n_batch: int) -> None:
    """scores: [N, K] or [V, N, K] with 0 < n_batch <= N."""
    check_float("scores", scores)
    check_ndim("scores", scores, (2, 3), "[N, K] or [V, N, K]")
    n, k = scores.shape[-2], scores.shape[-1]
    if n == 0 or k == 0:
        raise ValueError(f"scores must be non-empty, got shape {tuple(scores.shape)}")
    if not 0 < n_batch <= n:
        raise ValueError(
            f"n_batch must be in [1, N] for scores of shape {tuple(scores.shape)}, got {n_batch}"
        )
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1, got {n_iters}")


def check_loss_args(P: Tensor, Q: Tensor, mask: Tensor, tau: float) -> None:
    """P, Q: [V, B, K] same shape; mask: [V, V] bool with at least one pair."""
    check_float("P", P)
    check_float("Q", Q)
    check_ndim("P", P, (3,), "[V, B, K]")
    if Q.shape != P.shape:
        raise ValueError(f"Q must have P's shape [V, B, K]: P {tuple(P.shape)}, Q {tuple(Q.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    v = P.shape[0]
    if mask.shape != (v, v):
        raise ValueError(
            f"mask must be [V, V] = [{v}, {v}] for P of shape {tuple(P.shape)}, got {tuple(mask.shape)}"
        )
    if not bool(mask.any()):
        raise ValueError("mask selects no (target view, predicting view) pair")
    check_positive("tau", tau)
    check_same_device(P=P, Q=Q)


def check_enqueue(queue: Tensor, z: Tensor, ptr: int) -> None:
    """queue: [V, L, D], z: [V, B, D] with B <= L, 0 <= ptr < L."""
    check_float("queue", queue)
    check_float("z", z)
    check_ndim("queue", queue, (3,), "[V, L, D]")
    check_ndim("z", z, (3,), "[V, B, D]")
    if queue.shape[0] != z.shape[0] or queue.shape[2] != z.shape[2]:
        raise ValueError(
            f"z [V, B, D] must match queue [V, L, D] in V and D: queue {tuple(queue.shape)}, "
            f"z {tuple(z.shape)}"
        )
    if z.shape[1] > queue.shape[1]:
        raise ValueError(
            f"z has more rows per view (B={z.shape[1]}) than the queue holds (L={queue.shape[1]})"
        )
    if not 0 <= ptr < queue.shape[1]:
        raise ValueError(f"ptr must be in [0, L={queue.shape[1]}), got {ptr}")
    check_same_device(queue=queue, z=z)


def check_embeddings(z: Tensor, prototypes: Tensor) -> None:
    """z: [N, D] or [V, N, D] and prototypes: [K, D], floating, same D and device."""
    check_float("z", z)
    check_float("prototypes", prototypes)
    check_ndim("z", z, (2, 3), "[N, D] or [V, N, D]")
    check_ndim("prototypes", prototypes, (2,), "[K, D]")
    if z.shape[-1] != prototypes.shape[1]:
        raise ValueError(
            f"z [.., N, D] and prototypes [K, D] must share D: z {tuple(z.shape)}, "
            f"prototypes {tuple(prototypes.shape)}"
        )
    check_same_device(z=z, prototypes=prototypes)
