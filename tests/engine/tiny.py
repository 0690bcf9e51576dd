"""A tiny Method and an in-memory loader for unit-testing the engine (the real ones are tested end to end in
test_e2e.py). The method is SwAV-like: per stream a 3D conv encoder, a linear head, K prototypes, Sinkhorn
assignments (global over ranks via the engine's all_reduce hook), swapped prediction, a feature queue buffer,
prototypes frozen by dropping their gradients, and cross-stream phases with a frozen teacher stream."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from vicc_fast.config import Stream
from vicc_fast.data.batch import Batch
from vicc_fast.engine.distributed import sinkhorn_all_reduce
from vicc_fast.methods.base import Method, PhaseSpec, StepState
from vicc_fast.methods.common import SwavPhase, swav_phase

C_IN, T, H, W = 3, 2, 4, 4


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=6).digest(), "little")


class Encoder(nn.Module):
    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv3d(C_IN, 6, kernel_size=(1, 3, 3), padding=(0, 1, 1))
        self.norm = nn.BatchNorm3d(6) if norm else nn.Identity()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(6, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(F.relu(self.norm(self.conv(x)))).flatten(1))


def sinkhorn(scores: torch.Tensor, eps: float, iters: int, n_batch: int) -> torch.Tensor:
    """scores [N, K] -> Q [n_batch, K], sums reduced over ranks (SwAV's distributed_sinkhorn)."""
    red = sinkhorn_all_reduce() or (lambda t: t)
    Q = torch.exp(
        scores.float() / eps
    ).t()  # [K, N]; |scores| <= ~1, so no max shift (it would differ per rank)
    n_global = red(torch.tensor(float(Q.shape[1])))
    K = Q.shape[0]
    Q = Q / red(Q.sum().clone())
    for _ in range(iters):
        Q = Q / red(Q.sum(dim=1, keepdim=True).clone()) / K
        Q = Q / Q.sum(dim=0, keepdim=True) / n_global
    return (Q * n_global).t()[:n_batch]


class TinyMethod(Method):
    def __init__(
        self,
        *,
        epochs: int = 2,
        cross: bool = True,
        queue_start: int = 1,
        freeze: int = 1,
        queue: int = 8,
        norm: bool = False,
        nan_at: int | None = None,
    ) -> None:
        super().__init__()
        self.nets = nn.ModuleDict({s.value: Encoder(norm) for s in Stream})
        self.heads = nn.ModuleDict({s.value: nn.Linear(8, 8) for s in Stream})
        self.protos = nn.ModuleDict({s.value: nn.Linear(8, 5, bias=False) for s in Stream})
        with torch.no_grad():
            for pr in self.protos.values():
                pr.weight.copy_(F.normalize(pr.weight, dim=1))
        self.register_buffer("queue", torch.zeros(4, queue, 8))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.epochs, self.cross, self.queue_start, self.freeze = epochs, cross, queue_start, freeze
        self.nan_at = nan_at
        self.states: list[StepState] = []

    def phases(self) -> list[PhaseSpec]:
        def phase(name: str, s: Stream, t: Stream | None, report: str, qstart: int, freeze: int) -> SwavPhase:
            streams = (s,) if t is None else (s, t)
            return SwavPhase(name, s, t, streams, 2, self.epochs, report, queue_start_epoch=qstart,
                             freeze_prototypes_epochs=freeze)  # fmt: skip

        out = [
            phase("rgb1", Stream.rgb, None, "RGB-1", self.queue_start, self.freeze),
            phase("flow1", Stream.flow, None, "Flow-1", self.queue_start, self.freeze),
        ]
        if self.cross:
            out.append(phase("cross_rgb_c1", Stream.rgb, Stream.flow, "RGB-2", 1, 0))
        return out

    def log_values(self, state: StepState) -> dict[str, float]:
        return {"queue_active": float(swav_phase(state).queue_active(state.epoch))}

    def setup_phase(self, phase: PhaseSpec) -> None:
        self.queue.zero_()
        self.queue_ptr.zero_()
        if phase.frozen_stream is not None:
            s = phase.frozen_stream.value
            for m in (self.nets[s], self.heads[s], self.protos[s]):
                m.eval()
                m.requires_grad_(False)

    def trainable_parameters(self, phase: PhaseSpec) -> list[nn.Parameter]:
        s = phase.train_stream.value
        return [*self.nets[s].parameters(), *self.heads[s].parameters(), *self.protos[s].parameters()]

    def encoders(self) -> dict[Stream, nn.Module]:
        return {s: self.nets[s.value] for s in Stream}

    def _embed(self, s: Stream, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.heads[s.value](self.nets[s.value](x)), dim=1)

    def loss(self, batch: Batch, state: StepState) -> dict[str, torch.Tensor]:
        self.states.append(state)
        ph = state.phase
        s = ph.train_stream
        zs = [self._embed(s, v) for v in batch.views[s][: ph.num_views]]
        if ph.frozen_stream is not None:
            with torch.no_grad():
                zs += [
                    self._embed(ph.frozen_stream, v) for v in batch.views[ph.frozen_stream][: ph.num_views]
                ]
        protos = self.protos[s.value]
        scores = [protos(z) for z in zs]  # [B, K] each
        B = zs[0].shape[0]
        terms = {}
        total = 0.0
        with torch.no_grad():
            qs = []
            for i, sc in enumerate(scores):
                x = sc
                if swav_phase(state).queue_active(state.epoch):
                    x = torch.cat([sc, protos(self.queue[i])])
                qs.append(sinkhorn(x, 0.05, 3, B))
        for i in range(len(scores)):
            sub = 0.0
            for j in range(len(scores)):
                if j != i:
                    sub = sub - (qs[i] * F.log_softmax(scores[j] / 0.1, dim=1)).sum(1).mean()
            terms[f"swap_{i}"] = sub / (len(scores) - 1)
            total = total + terms[f"swap_{i}"]
        terms["loss"] = total / len(scores)
        if self.nan_at is not None and state.global_step >= self.nan_at and ph.name == "rgb1":
            terms["swap_1"] = terms["swap_1"] * float("nan")
        with torch.no_grad():  # newest features in the ring buffer
            L = self.queue.shape[1]
            for i, z in enumerate(zs):
                self.queue[i] = torch.roll(self.queue[i], B, 0)
                self.queue[i, : min(B, L)] = z.detach()[: min(B, L)]
        return terms

    def after_backward(self, state: StepState) -> None:
        if swav_phase(state).prototypes_frozen(state.epoch):
            for p in self.protos[state.phase.train_stream.value].parameters():
                p.grad = None

    def after_step(self, state: StepState) -> None:
        with torch.no_grad():
            w = self.protos[state.phase.train_stream.value].weight
            w.copy_(F.normalize(w, dim=1))


class TinyLoader:
    """In-memory loader with the data/loader.py contract: a fixed set of N 'videos' per stream, shuffled per epoch
    from (seed, epoch), global batch of B*world split by rank (so 1 rank x 2B sees what 2 ranks x B see), views =
    video + per-view noise drawn from (seed, epoch, step)."""

    def __init__(
        self,
        streams: tuple[Stream, ...],
        num_views: int,
        batch: int,
        n: int = 24,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        channels_last: bool = False,
    ) -> None:
        self.streams, self.num_views, self.batch, self.n = streams, num_views, batch, n
        self.seed, self.rank, self.world = seed, rank, world
        g = torch.Generator().manual_seed(1234)
        self.data = {s: torch.randn(n, C_IN, T, H, W, generator=g) for s in Stream}
        self.epoch = 0
        self.channels_last = channels_last

    def __len__(self) -> int:
        return self.n // (self.batch * self.world)

    @property
    def num_samples(self) -> int:
        return self.n

    def set_epoch(self, e: int) -> None:
        self.epoch = e

    def __iter__(self):
        g = torch.Generator().manual_seed(_seed(self.seed, self.epoch))
        perm = torch.randperm(self.n, generator=g)
        gb = self.batch * self.world
        for step in range(len(self)):
            idx = perm[step * gb : (step + 1) * gb]
            gn = torch.Generator().manual_seed(_seed(self.seed, self.epoch, step))
            views = {}
            for s in self.streams:
                vs = []
                for _ in range(self.num_views):
                    noise = 0.3 * torch.randn(gb, C_IN, T, H, W, generator=gn)
                    v = (self.data[s][idx] + noise)[self.rank * self.batch : (self.rank + 1) * self.batch]
                    if self.channels_last:
                        v = v.contiguous(memory_format=torch.channels_last_3d)
                    vs.append(v)
                views[s] = vs
            mine = idx[self.rank * self.batch : (self.rank + 1) * self.batch]
            yield Batch(views=views, label=mine % 3, index=mine)


def loader_factory(batch: int, n: int = 24, seed: int = 0, rank: int = 0, world: int = 1):
    return lambda phase: TinyLoader(phase.streams, phase.num_views, batch, n, seed, rank, world)
