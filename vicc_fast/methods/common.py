"""Pieces every method here shares: a stream's network, a feature queue and its schedule, freezing, distributed
hooks, the two-stage methods' result table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import kernels
from vicc_fast.config import ModelConfig, Stream
from vicc_fast.methods.base import PhaseSpec, StepState
from vicc_fast.models import build_encoder, build_head

TWO_STAGE_ROWS = ("RGB-1", "Flow-1", "RGB-2", "Flow-2", "R+F")
"""The result table of a two-stage method (ViCC, CoCLR): each stream after stage 1, after the last cross-stream
cycle, and the two fused."""


@dataclass(frozen=True)
class SwavPhase(PhaseSpec):
    """A phase of a method with a SwAV-style head (ViCC, GOCA): when its feature queue starts and how long its
    prototypes stay frozen, both in epochs within the phase.

    queue_start_epoch: epoch (0-based) from which the queue fills and its rows may join the assignment
    (``>= epochs``: never); freeze_prototypes_epochs: epochs at the start of the phase during which prototype
    gradients are dropped (``>= epochs``: frozen throughout)."""

    queue_start_epoch: int = 0
    freeze_prototypes_epochs: int = 0

    def queue_active(self, epoch: int) -> bool:
        return epoch >= self.queue_start_epoch

    def prototypes_frozen(self, epoch: int) -> bool:
        return epoch < self.freeze_prototypes_epochs


def swav_phase(state: StepState) -> SwavPhase:
    """The step's phase, which a method with a SwAV-style head built as a :class:`SwavPhase`."""
    phase = state.phase
    if not isinstance(phase, SwavPhase):
        raise TypeError(f"phase {phase.name}: expected a SwavPhase, got {type(phase).__name__}")
    return phase


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sinkhorn_all_reduce() -> kernels.AllReduce | None:
    """The all_reduce hook for Sinkhorn: None on one process, a sum over the world otherwise."""
    return kernels.make_all_reduce() if world_size() > 1 else None


def fp32(device: torch.device) -> AbstractContextManager[Any]:
    """Turn autocast off: scores, Sinkhorn and the loss run in fp32 whatever the encoders ran in
    (bf16 scores / eps with eps = 0.05 would quantise the Sinkhorn logits to ~0.1 nats)."""
    return torch.autocast(device_type=device.type, enabled=False)


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """requires_grad of every parameter, and train/eval mode (a frozen part runs in eval mode: BN uses and
    keeps its running statistics)."""
    for p in module.parameters():
        p.requires_grad_(trainable)
    module.train(trainable)


class StreamNet(nn.Module):
    """One stream's encoder (``backbone``: clips -> [B, F]) and projection ``head`` ([B, F] -> unit [B, D])."""

    def __init__(self, model_cfg: ModelConfig) -> None:
        super().__init__()
        self.backbone = build_encoder(model_cfg)
        self.head = build_head(model_cfg, self.backbone.feature_dim)

    def embed(self, clips: torch.Tensor) -> torch.Tensor:
        """clips [B, C, T, H, W] -> z [B, D] fp32 unit rows."""
        return self.head(self.backbone(clips))


def run_views(module: nn.Module, views: list[torch.Tensor], per_view: bool) -> torch.Tensor:
    """V views [B, C, T, H, W] through ``module`` -> [V*B, ...], views in order. ``per_view``: one forward per
    view, so that each view is its own BatchNorm batch and two views of a video never share BN statistics (the
    released code forwards x1 and x2 separately); else one forward over all views (:func:`cat_views`)."""
    if per_view and len(views) > 1:
        return torch.cat([module(v) for v in views], dim=0)
    return module(cat_views(views))


def cat_views(views: list[torch.Tensor]) -> torch.Tensor:
    """V views [B, C, T, H, W] -> [V*B, C, T, H, W] in one forward (better device use; the memory format of
    the inputs, e.g. channels_last_3d, is kept)."""
    if len(views) == 1:
        return views[0]
    fmt = torch.channels_last_3d if views[0].is_contiguous(memory_format=torch.channels_last_3d) else None
    out = torch.cat(views, dim=0)
    if fmt is not None and not out.is_contiguous(memory_format=fmt):
        out = out.contiguous(memory_format=fmt)
    return out


class FeatureQueue(nn.Module):
    """Per-view ring buffers of past embeddings: ``queue`` [V, L, D] (fp32), with the write position and the
    number of valid rows kept as plain ints (no device sync) and saved through the module's extra state.
    Only valid rows are ever returned, so a queue that is still filling is used without zero rows; whether
    rows join at all while it fills is :meth:`joins` (the released code waits until it is full).
    ``owner`` names the phase the contents belong to (saved too): :meth:`claim` empties the queue only when a
    different phase takes it over, so a run resumed mid-phase keeps the queue it checkpointed.
    """

    def __init__(self, num_views: int, length: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("queue", torch.zeros(num_views, length, dim))
        self.ptr = 0
        self.filled = 0
        self.owner = ""

    @property
    def length(self) -> int:
        return int(self.queue.shape[1])

    def reset(self) -> None:
        self.queue.zero_()
        self.ptr = 0
        self.filled = 0

    def claim(self, owner: str) -> None:
        """Start using the queue for ``owner`` (a phase name): emptied unless it already holds owner's rows."""
        if owner != self.owner:
            self.reset()
            self.owner = owner

    def joins(self, when_full: bool) -> bool:
        """Whether the queued rows take part in this step's assignment: once full (``when_full``, SwAV and
        the released ViCC code: the queue's last row is non-zero), else as soon as it holds a row."""
        if self.length == 0:
            return False
        return self.filled >= self.length if when_full else self.filled > 0

    def rows(self, num_views: int) -> torch.Tensor:
        """The valid rows of the first ``num_views`` views: [V, filled, D] (filled may be 0)."""
        return self.queue[:num_views, : self.filled]

    @torch.no_grad()
    def push(self, z: torch.Tensor, backend: str = "auto") -> None:
        """z: [V, B, D] -> written into views 0..V-1 (all views advance together)."""
        if self.length == 0:
            return
        v = z.shape[0]
        if z.shape[1] > self.length:  # keep the newest L rows
            z = z[:, -self.length :]
        self.ptr = kernels.enqueue(self.queue[:v], z.float(), self.ptr, backend=backend)
        self.filled = min(self.length, self.filled + z.shape[1])

    def get_extra_state(self) -> dict[str, int | str]:
        return {"ptr": self.ptr, "filled": self.filled, "owner": self.owner}

    def set_extra_state(self, state: dict[str, int | str]) -> None:
        self.ptr = int(state["ptr"])
        self.filled = int(state["filled"])
        self.owner = str(state.get("owner", ""))


def stream_key(stream: Stream) -> str:
    return Stream(stream).value


def parameters_of(*modules: nn.Module) -> Iterator[nn.Parameter]:
    for m in modules:
        yield from m.parameters()
