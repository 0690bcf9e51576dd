"""GOCA: guided online cluster assignment (Coskun et al. 2022), on the shared engine.

One joint phase trains the RGB and flow backbones end to end. They share one projection head and one set of
prototypes P (``variant=goca``). Each view's initial assignment D' is plain Sinkhorn with entropy weight
lambda1 (eq. 5); the final assignment of a view uses the *other stream's* D' of the same clip as a prior
(eq. 6-8: K = exp((-C + lambda2 log D') / (lambda1 + lambda2)), C = -scores), computed with
``kernels.sinkhorn_prior``. The loss is SwAV's swapped prediction between the two augmentations of each stream
(eq. 12-13): RGB and flow features interact only through the assignments. Prototypes are not trained by the
loss: they are placed by the hyperspherical regulariser (eq. 11: minimise the mean over prototypes of the largest
off-diagonal cosine similarity, re-projected to unit length) -- ``proto_reg_init_steps`` steps when the phase
starts, solved to the paper's aim ("encourages prototypes to be maximally far apart", 3.1; each prototype
follows its own term with a cosine-annealed step, ``proto_reg_init_anneal``), then fixed ("once before the main
training phase ... initializing (and fixing) the prototype layer", paper 3.3-3.4). ``proto_reg_steps > 0`` (a
switch, off by default) adds that many small constant steps on eq. 11's mean gradient after every optimiser
step (i.e. before the next one).

Baselines (paper section 4.1) as ``method.goca.variant``: ``sview`` (independent backbones, heads and
prototypes; SwAV per stream), ``avg`` (the two backbones' features averaged before the shared head: one
two-view SwAV problem), ``sep`` (separate backbones, shared head and prototypes, no prior). Plain Sinkhorn in
every variant uses eps = lambda1, so that ``goca`` and ``sep`` differ only by the prior.

The softmax of eq. 2 is written without a temperature in the paper; as in SwAV, on whose code it builds, we
divide the scores by ``method.swav.temperature``. The loss is eq. 12 divided by its number of terms (SwAV's mean).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from vicc_fast.config import Config, GocaVariant, Stream
from vicc_fast.data.batch import Batch
from vicc_fast.methods.base import Method, PhaseSpec, StepState
from vicc_fast.methods.common import (
    FeatureQueue,
    SwavPhase,
    fp32,
    run_views,
    sinkhorn_all_reduce,
    swav_phase,
    world_size,
)
from vicc_fast.models import Prototypes, build_encoder, build_head

STREAMS = (Stream.rgb, Stream.flow)


# ------------------------------------------------------------------------------------ pure functions
def prototype_reg_loss(w: torch.Tensor) -> torch.Tensor:
    """GOCA eq. 11: L_reg = 1/N sum_i max_j (W W^T - 2I)_ij. w: [N, D] unit rows -> 0-dim.
    The -2I removes each prototype's similarity to itself from the maximum."""
    omega = w @ w.t() - 2.0 * torch.eye(w.shape[0], device=w.device, dtype=w.dtype)
    return omega.max(dim=1).values.mean()


@torch.no_grad()
def regularise_prototypes_(weight: torch.Tensor, steps: int, lr: float, anneal: bool = False) -> None:
    """``steps`` gradient-descent steps on :func:`prototype_reg_loss`, each followed by re-projection onto the
    unit sphere; in place on ``weight`` [N, D].

    The gradient is written out (no autograd: many tiny steps): with E the one-hot of each row's argmax j(i),
    d L_reg / d W = (E + E^T) W / N (w_i meets w_j(i) in row i's maximum, w_j(i) meets w_i).

    ``anneal=False``: constant steps of ``lr`` on that gradient (the mean of eq. 11, so each prototype moves by
    ``lr / N`` per step): small steps that keep an arrangement in place (the re-spreading steps after every
    optimiser step). ``anneal=True``: the one-off initialisation solved to its optimum: each prototype follows
    the gradient of its own term of eq. 11 (the sum, N x the mean: the step no longer shrinks with N) and the
    step size falls from ``lr`` to 0 on a half cosine over the ``steps``. The loss is a max, so constant steps
    oscillate around the optimum; shrinking steps settle in it (mean largest cosine at N=300, D=128 after 1000
    steps of lr 0.1: about 0.04 annealed, 0.12 with the mean's constant steps; N=32, D=32 reaches the regular
    simplex, -1/31:
    benchmarks/results/goca_protoreg_cpu.json, ``OMP_NUM_THREADS=1 python -m vicc_fast.bench protoreg --json ...``).
    """
    if steps <= 0:
        return
    with fp32(weight.device):
        w = F.normalize(weight.detach().float(), dim=1)
        n = w.shape[0]
        eye2 = 2.0 * torch.eye(n, device=w.device)
        for t in range(steps):
            j = (w @ w.t() - eye2).argmax(dim=1)  # [N]
            e = torch.zeros(n, n, device=w.device)
            e[torch.arange(n, device=w.device), j] = 1.0
            if anneal:
                step = lr * 0.5 * (1.0 + math.cos(math.pi * t / steps))
                w = F.normalize(w - step * ((e + e.t()) @ w), dim=1)
            else:
                g = (e + e.t()) @ w / n
                w = F.normalize(w - lr * g, dim=1)
        weight.copy_(w.to(weight.dtype))


def mean_largest_cosine(weight: torch.Tensor) -> float:
    """Mean over prototypes of the cosine to their nearest other prototype (eq. 11's L_reg at unit rows)."""
    w = F.normalize(weight.detach().float(), dim=1)
    return float(prototype_reg_loss(w))


def swap_mask_per_stream(num_streams: int, views: int, device: torch.device) -> torch.Tensor:
    """[S*V, S*V] bool: view p predicts view t's target iff both are views of the same stream and p != t
    (GOCA eq. 13: swapped prediction within a stream, streams only meet in the assignments)."""
    n = num_streams * views
    same = torch.block_diag(*[torch.ones(views, views, dtype=torch.bool) for _ in range(num_streams)])
    return (same & ~torch.eye(n, dtype=torch.bool)).to(device)


def goca_phases(cfg: Config) -> list[SwavPhase]:
    """One joint phase of ``method.goca.epochs`` epochs; 0 = half the epochs of ``cfg.schedule``'s two stages
    (every step trains both encoders: the same clips through each encoder as a two-stage method sees). The
    queue starts at ``method.goca.queue_start_epoch``; no prototype freezing (the loss never trains them)."""
    g, sc = cfg.method.goca, cfg.schedule
    epochs = g.epochs or (2 * sc.single_epochs + 2 * sc.cross_cycles * sc.cross_epochs) // 2
    qstart = epochs if cfg.method.swav.queue_size == 0 else min(g.queue_start_epoch, epochs)
    return [
        SwavPhase(
            "joint", Stream.rgb, None, STREAMS, 2, epochs, "joint", joint=True, queue_start_epoch=qstart
        )
    ]


# ------------------------------------------------------------------------------------------ the method
class GOCA(Method):
    """Two backbones; heads and prototypes shared (goca, sep, avg) or per stream (sview); a 4-view queue."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.variant = GocaVariant(cfg.method.goca.variant)
        mc = cfg.model
        self.backbones = nn.ModuleDict({s.value: build_encoder(mc) for s in STREAMS})
        fdim = self.backbones["rgb"].feature_dim
        shared = self.variant is not GocaVariant.sview
        names = ["shared"] if shared else [s.value for s in STREAMS]
        self.heads = nn.ModuleDict({n: build_head(mc, fdim) for n in names})
        self.protos = nn.ModuleDict({n: Prototypes(mc.proj_dim, mc.num_prototypes) for n in names})
        views = 2 if self.variant is GocaVariant.avg else 4
        self.queue = FeatureQueue(views, cfg.method.swav.queue_size // world_size(), mc.proj_dim)
        self.backend = cfg.kernels.backend.value

    def _part(self, stream: Stream) -> str:
        return "shared" if "shared" in self.heads else stream.value

    def phases(self) -> list[PhaseSpec]:
        return list(goca_phases(self.cfg))

    def log_values(self, state: StepState) -> dict[str, float]:
        return {"queue_active": float(swav_phase(state).queue_active(state.epoch))}

    def setup_phase(self, phase: PhaseSpec) -> None:
        for p in self.parameters():
            p.requires_grad_(True)
        for protos in self.protos.values():
            protos.weight.requires_grad_(False)  # placed by the regulariser, never by the loss
        if self.queue.owner != phase.name:  # a new phase (not a resume): the paper's one-off initialisation
            self.queue.claim(phase.name)
            g = self.cfg.method.goca
            for protos in self.protos.values():
                regularise_prototypes_(
                    protos.weight, g.proto_reg_init_steps, g.proto_reg_init_lr, anneal=g.proto_reg_init_anneal
                )

    def trainable_parameters(self, phase: PhaseSpec) -> list[nn.Parameter]:
        return list(self.backbones.parameters()) + list(self.heads.parameters())

    def encoders(self) -> dict[Stream, nn.Module]:
        return {s: self.backbones[s.value] for s in STREAMS}

    def prototype_scorer(self, stream: Stream) -> nn.Module | None:
        if (
            self.variant is GocaVariant.avg
        ):  # its head sees the two streams' averaged features, never one alone
            return None
        part = self._part(stream)
        return nn.Sequential(self.heads[part], self.protos[part])

    def after_step(self, state: StepState) -> None:
        """``proto_reg_steps`` regulariser steps before the next training step (0 by default: the paper fixes
        the prototypes after the one-off initialisation)."""
        g = self.cfg.method.goca
        for protos in self.protos.values():
            regularise_prototypes_(protos.weight, g.proto_reg_steps, g.proto_reg_lr)

    # ---------------------------------------------------------------------------------------- the step
    def embed(self, batch: Batch) -> torch.Tensor:
        """Unit embeddings [V, B, D]: rgb_0, rgb_1, flow_0, flow_1 (avg: the two averaged views only)."""
        feats = {}
        for s in STREAMS:
            vs = batch.views[s][:2]
            feats[s] = run_views(self.backbones[s.value], vs, self.cfg.train.bn_per_view)
        B = batch.views[Stream.rgb][0].shape[0]
        if self.variant is GocaVariant.avg:
            z = self.heads["shared"]((feats[Stream.rgb] + feats[Stream.flow]) / 2)
        else:
            z = torch.cat([self.heads[self._part(s)](feats[s]) for s in STREAMS])
        return z.view(-1, B, z.shape[-1])

    @torch.no_grad()
    def assignments(self, z: torch.Tensor, queue_rows: torch.Tensor | None) -> torch.Tensor:
        """Targets Q [V, B, K] of the embeddings z [V, B, D] (queue_rows: [V, L, D] or None)."""
        m, g = self.cfg.method.swav, self.cfg.method.goca
        V, B, _ = z.shape
        zz = z if queue_rows is None or queue_rows.shape[1] == 0 else torch.cat([z, queue_rows], dim=1)
        if self.variant in (GocaVariant.avg, GocaVariant.sep):
            w = self.protos["shared"].weight
            return kernels.sinkhorn(
                kernels.prototype_scores(zz, w, backend=self.backend),
                g.lambda1,
                m.sinkhorn_iters,
                B,
                sinkhorn_all_reduce(),
                backend=self.backend,
            )
        if self.variant is GocaVariant.sview:
            out = []
            for i, s in enumerate(STREAMS):
                sc = kernels.prototype_scores(
                    zz[2 * i : 2 * i + 2], self.protos[s.value].weight, backend=self.backend
                )
                out.append(
                    kernels.sinkhorn(
                        sc, g.lambda1, m.sinkhorn_iters, B, sinkhorn_all_reduce(), backend=self.backend
                    )
                )
            return torch.cat(out)
        # goca: D' per view over all rows, then each view's final assignment with the other stream's D' as prior
        scores = kernels.prototype_scores(zz, self.protos["shared"].weight, backend=self.backend)  # [4, N, K]
        N = scores.shape[1]
        d0 = kernels.sinkhorn(
            scores, g.lambda1, m.sinkhorn_iters, N, sinkhorn_all_reduce(), backend=self.backend
        )
        prior = torch.cat([d0[2:], d0[:2]])  # rgb_v <- flow_v, flow_v <- rgb_v (aligned clips)
        return kernels.sinkhorn_prior(
            scores,
            prior,
            g.lambda1,
            g.lambda2,
            m.sinkhorn_iters,
            B,
            sinkhorn_all_reduce(),
            backend=self.backend,
        )

    def loss(self, batch: Batch, state: StepState) -> dict[str, torch.Tensor]:
        z = self.embed(batch)  # [V, B, D]
        V, B, _ = z.shape
        use_queue = swav_phase(state).queue_active(state.epoch) and self.queue.length > 0
        queue_joins = use_queue and self.queue.joins(self.cfg.method.swav.queue_when_full)
        with fp32(z.device):
            if self.variant is GocaVariant.sview:
                P = torch.cat(
                    [
                        self.protos[s.value](z[2 * i : 2 * i + 2].reshape(2 * B, -1))
                        for i, s in enumerate(STREAMS)
                    ]
                )
            else:
                P = self.protos["shared"](z.reshape(V * B, -1))
            P = P.view(V, B, -1)
            Q = self.assignments(z.detach(), self.queue.rows(V) if queue_joins else None)
            mask = swap_mask_per_stream(V // 2, 2, torch.device("cpu"))  # host mask: no device sync
            loss = kernels.swapped_loss(P, Q, mask, self.cfg.method.swav.temperature, backend=self.backend)
        if use_queue:
            self.queue.push(z.detach(), backend=self.backend)
        with torch.no_grad():
            w = next(iter(self.protos.values())).weight
            max_sim = (w @ w.t() - 2 * torch.eye(w.shape[0], device=w.device)).max()
        return {
            "loss": loss,
            "proto_max_similarity": max_sim,
            "queue_on": torch.tensor(float(queue_joins), device=z.device),
        }
