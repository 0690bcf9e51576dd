"""ViCC: video cross-stream prototypical contrasting (Toering et al.), on the shared engine.

Stage 1 (``rgb1``, ``flow1``): each stream alone, SwAV-style swapped prediction between its two views.
Stage 2 (``cross_cycles`` x (``cross_rgb_cN``, ``cross_flow_cN``)): training stream s and frozen stream t; the
four views (s_i, s_j, t_i, t_j) are all scored against s's prototypes C_s; each view's Sinkhorn assignment is
predicted from the other three (12 terms, weight 1/4 * 1/3: ViCC eq. 7-9 and the supplementary pseudocode).
Both streams' networks live in this one module, so every alternation starts from the newest weights of both.
"""

from __future__ import annotations

import torch
from torch import nn

import kernels
from vicc_fast.config import Config, Stream
from vicc_fast.data.batch import Batch
from vicc_fast.methods.base import STREAM_LABEL, Method, PhaseSpec, StepState
from vicc_fast.methods.common import (
    TWO_STAGE_ROWS,
    FeatureQueue,
    StreamNet,
    SwavPhase,
    cat_views,
    fp32,
    run_views,
    set_trainable,
    sinkhorn_all_reduce,
    swav_phase,
    world_size,
)
from vicc_fast.models import Prototypes

MAX_VIEWS = 4  # cross-stream: two views of each stream
RELEASED_TRAIN_MODE_STEP = 4  # main_cross.py: `args.iteration == 5`, 1-based -> 0-based step 4 of epoch 0


def vicc_phases(cfg: Config) -> list[SwavPhase]:
    """The ViCC schedule: the phases of ``cfg.schedule`` with ViCC's own settings (``cfg.method.vicc``).

    Single-stream phases start their queue at ``queue_start_rgb`` / ``queue_start_flow`` and freeze the
    prototypes for ``single_freeze_prototypes`` epochs; cross-stream phases start it at ``cross_queue_start``,
    read ``cross_batch_size`` clips per step and train the prototypes from the start (paper) or never
    (``cross_freeze_prototypes``). With ``method.swav.queue_size == 0`` the queue start is set past the end of
    the phase (never on).
    """
    sc, v = cfg.schedule, cfg.method.vicc
    no_queue = cfg.method.swav.queue_size == 0

    def qstart(epoch: int, epochs: int) -> int:
        return epochs if no_queue else min(epoch, epochs)

    phases = [
        SwavPhase(
            name=f"{s.value}1",
            train_stream=s,
            frozen_stream=None,
            streams=(s,),
            num_views=2,
            epochs=sc.single_epochs,
            report=f"{STREAM_LABEL[s]}-1",
            lr_epochs=v.single_lr_epochs,
            queue_start_epoch=qstart(q, sc.single_epochs),
            freeze_prototypes_epochs=v.single_freeze_prototypes,
        )
        for s, q in ((Stream.rgb, v.queue_start_rgb), (Stream.flow, v.queue_start_flow))
    ]
    freeze = sc.cross_epochs if v.cross_freeze_prototypes else 0
    for c in range(1, sc.cross_cycles + 1):
        for s, t in ((Stream.rgb, Stream.flow), (Stream.flow, Stream.rgb)):
            phases.append(
                SwavPhase(
                    name=f"cross_{s.value}_c{c}",
                    train_stream=s,
                    frozen_stream=t,
                    streams=(s, t),
                    num_views=2,
                    epochs=sc.cross_epochs,
                    report=f"{STREAM_LABEL[s]}-2" if c == sc.cross_cycles else "",
                    batch_size=v.cross_batch_size,
                    queue_start_epoch=qstart(v.cross_queue_start, sc.cross_epochs),
                    freeze_prototypes_epochs=freeze,
                )
            )
    return phases


def swap_mask(num_views: int, device: torch.device) -> torch.Tensor:
    """[V, V] bool: every view predicts every other view's assignment (mask[t, p], p != t)."""
    return ~torch.eye(num_views, dtype=torch.bool, device=device)


def usage_entropy(scores: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of how often each prototype is a view's nearest one. scores: [N, K] -> 0-dim.
    ln K when every prototype is used equally, 0 when all rows pick one prototype (collapse)."""
    idx = scores.argmax(dim=1)
    # index_add_, not bincount: bincount sizes its output from the data (a device-to-host sync on GPU)
    counts = torch.zeros(scores.shape[1], device=scores.device).index_add_(
        0, idx, torch.ones_like(idx, dtype=torch.float32)
    )
    p = counts / counts.sum()
    return -(p * torch.log(p.clamp_min(1e-12))).sum()


class ViCC(Method):
    """Both streams' encoders, heads and prototypes, one feature queue, and the ViCC losses.

    The queue is emptied when a new phase starts; a checkpoint of a phase restores its queue whether it is
    loaded before or after :meth:`setup_phase` of that phase.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        m = cfg.method
        self.nets = nn.ModuleDict({s.value: StreamNet(cfg.model) for s in Stream})
        self.protos = nn.ModuleDict(
            {s.value: Prototypes(cfg.model.proj_dim, cfg.model.num_prototypes) for s in Stream}
        )
        # the paper's queue (1920) is global: each of the W ranks keeps its share
        self.queue = FeatureQueue(MAX_VIEWS, m.swav.queue_size // world_size(), cfg.model.proj_dim)
        self.backend = cfg.kernels.backend.value
        self.diagnostics = True
        self._phase: PhaseSpec | None = None

    # ----------------------------------------------------------------------------- schedule and state
    def phases(self) -> list[PhaseSpec]:
        return list(vicc_phases(self.cfg))

    def log_values(self, state: StepState) -> dict[str, float]:
        phase = swav_phase(state)
        return {
            "queue_active": float(phase.queue_active(state.epoch)),
            "prototypes_frozen": float(phase.prototypes_frozen(state.epoch)),
        }

    def table_rows(self) -> tuple[str, ...]:
        return TWO_STAGE_ROWS

    def setup_phase(self, phase: PhaseSpec) -> None:
        self._phase = phase
        for s in Stream:
            trainable = s == phase.train_stream
            set_trainable(self.nets[s.value], trainable)
            set_trainable(self.protos[s.value], trainable)
        self.queue.claim(phase.name)

    def train(self, mode: bool = True) -> ViCC:
        """nn.Module.train, except that streams other than the phase's training stream stay in eval mode."""
        super().train(mode)
        if self._phase is not None:
            for s in Stream:
                if s != self._phase.train_stream:
                    self.nets[s.value].eval()
        return self

    def trainable_parameters(self, phase: PhaseSpec) -> list[nn.Parameter]:
        s = phase.train_stream.value
        return list(self.nets[s].parameters()) + list(self.protos[s].parameters())

    def encoders(self) -> dict[Stream, nn.Module]:
        return {s: self.nets[s.value].backbone for s in Stream}

    def prototype_scorer(self, stream: Stream) -> nn.Module:
        return nn.Sequential(self.nets[stream.value].head, self.protos[stream.value])

    # ---------------------------------------------------------------------------------------- the step
    def embed_views(self, batch: Batch, state: StepState) -> tuple[torch.Tensor, int]:
        """Unit embeddings of all views: [V, B, D] fp32, ordered s_0, s_1, (t_0, t_1); and the number of views
        of the training stream. The frozen stream runs without grad, in eval mode but for the released
        quirk's steps (:meth:`frozen_in_train_mode`)."""
        phase = state.phase
        s, t = phase.train_stream, phase.frozen_stream
        vs = batch.views[s][: phase.num_views]
        B = vs[0].shape[0]
        net = self.nets[s.value]
        # the frozen stream below runs in eval mode (running BN statistics): one forward serves all its views
        zs = net.head(run_views(net.backbone, vs, self.cfg.train.bn_per_view))
        parts = [zs]
        if t is not None:
            vt = batch.views[t][: phase.num_views]
            frozen = self.nets[t.value]
            quirk = self.frozen_in_train_mode(state)
            frozen.train(quirk)
            with torch.no_grad():
                if quirk:
                    # released ViCC2.forward (model/pretrain.py l. 616-625): sf = second(f2), then tf =
                    # second(f1), each view its own BN batch, unshuffled; rows kept in view order here
                    zt = [frozen.embed(v) for v in reversed(vt)][::-1]
                    parts.append(torch.cat(zt, dim=0))
                else:
                    # eval mode (running BN statistics): one forward serves all its views
                    parts.append(frozen.embed(cat_views(vt)))
            frozen.eval()
        z = torch.cat(parts, dim=0)
        return z.view(-1, B, z.shape[-1]), len(vs)

    def frozen_in_train_mode(self, state: StepState) -> bool:
        """Whether the frozen stream runs in train mode at this step (``method.vicc.frozen_train_quirk``): the
        released main_cross.py (l. 614-616, 633-651) sets ``model.train(); model.module.second.eval()`` at
        every epoch's start, but at ``args.iteration == 5`` (1-based, reset to 1 by every alternation's fresh
        launch, l. 319; +1 per step, l. 735) calls ``model.eval()`` then ``model.train()``, which puts ``second``
        in train mode until the next epoch starts: from the alternation's 5th step (0-based 4) to the end of the
        epoch holding it (the first epoch unless an epoch has fewer than 5 steps)."""
        first = RELEASED_TRAIN_MODE_STEP
        return (
            self.cfg.method.vicc.frozen_train_quirk
            and state.phase.frozen_stream is not None
            and state.global_step >= first
            and state.epoch == first // max(state.steps_per_epoch, 1)
        )

    def loss(self, batch: Batch, state: StepState) -> dict[str, torch.Tensor]:
        phase = swav_phase(state)
        sw = self.cfg.method.swav
        z, n_train_views = self.embed_views(batch, state)  # [V, B, D]
        V, B, _ = z.shape
        protos = self.protos[phase.train_stream.value]
        use_queue = phase.queue_active(state.epoch) and self.queue.length > 0
        queue_joins = use_queue and self.queue.joins(sw.queue_when_full)
        with fp32(z.device):
            P = protos(z.reshape(V * B, -1)).view(V, B, -1)  # [V, B, K], the trainable prediction scores
            with torch.no_grad():
                w = protos.weight.detach()
                zq = z.detach()
                if queue_joins:
                    zq = torch.cat([zq, self.queue.rows(V)], dim=1)  # batch rows first, then queue rows
                Q = kernels.assign(
                    zq,
                    w,
                    sw.epsilon,
                    sw.sinkhorn_iters,
                    B,
                    sinkhorn_all_reduce(),
                    backend=self.backend,
                )  # [V, B, K]
            # the mask stays on the host: the Triton path reads it there (a device mask costs a sync)
            loss = kernels.swapped_loss(
                P, Q, swap_mask(V, torch.device("cpu")), sw.temperature, backend=self.backend
            )
        if use_queue:
            self.queue.push(z.detach(), backend=self.backend)
        out = {"loss": loss}
        if self.diagnostics:
            out.update(self._diagnostics(P.detach(), Q, phase, n_train_views, queue_joins))
        return out

    @torch.no_grad()
    def _diagnostics(
        self, P: torch.Tensor, Q: torch.Tensor, phase: PhaseSpec, n_train: int, queue_on: bool
    ) -> dict[str, torch.Tensor]:
        """Per-target loss terms (each averaged over its predictors), prototype usage entropy, and queue_on:
        whether queued rows joined this step's assignment."""
        V = P.shape[0]
        logp = torch.log_softmax(P / self.cfg.method.swav.temperature, dim=-1)
        out: dict[str, torch.Tensor] = {}
        names = [f"{phase.train_stream.value}{i}" for i in range(n_train)]
        if phase.frozen_stream is not None:
            names += [f"{phase.frozen_stream.value}{i}" for i in range(V - n_train)]
        pair = -torch.einsum("tbk,pbk->tp", Q, logp) / P.shape[1]  # [V, V]: target t predicted from p
        mask = swap_mask(V, P.device)
        per_target = (pair * mask).sum(1) / mask.sum(1)
        for t in range(V):
            out[f"term/q_{names[t]}"] = per_target[t]
        out["proto_usage_entropy"] = usage_entropy(P.reshape(-1, P.shape[-1]))
        out["queue_on"] = torch.tensor(float(queue_on), device=P.device)
        return out

    # ----------------------------------------------------------------------------------------- hooks
    def after_backward(self, state: StepState) -> None:
        """While the prototypes are frozen their gradients are dropped (the optimiser then skips them)."""
        if swav_phase(state).prototypes_frozen(state.epoch):
            for p in self.protos[state.phase.train_stream.value].parameters():
                p.grad = None

    def after_step(self, state: StepState) -> None:
        """Re-project the prototypes onto the unit sphere after they moved (not while frozen: bit-exact)."""
        if not swav_phase(state).prototypes_frozen(state.epoch):
            self.protos[state.phase.train_stream.value].normalize_()
