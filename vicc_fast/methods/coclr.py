"""CoCLR: self-supervised co-training for video representation learning (Han et al. 2020), on the shared engine.

Initialisation (``rgb1``, ``flow1``): InfoNCE per stream, MoCo-style: a momentum key encoder (m = 0.999) and a
queue of past keys as negatives, temperature 0.07 (CoCLR eq. 1, appendix A.3).
Co-training (``cross_cycles`` x (``cross_rgb_cN``, ``cross_flow_cN``)): the training stream s is optimised with a
multi-instance InfoNCE (eq. 2) whose positives are its own key plus the queue entries whose *other-stream*
features (frozen stream t, queued alongside the keys) are the top-K most similar to this sample's t feature
(eq. 3, appendix B pseudocode). ``method.coclr.ubernce`` replaces every phase's positives with the queue
entries of the same class label (the UberNCE oracle, an upper bound that reads labels).

As the released code (TengdaHan/CoCLR, ``main_coclr.py`` / ``model/pretrain.py`` class ``CoCLR``), by default:
the frozen stream's feature is that of the *key* clip (view 1), mined with and queued beside the key; queue
entries of the query's own source video are positives and never mined; mining starts, and the optimiser steps,
only once the queue is full; in 90 % of co-training steps a row with other positives drops its own key from
them. UberNCE (``main_nce.py``) scores a row by the mean log-probability of its positives.

The schedule is ``cfg.schedule``'s two stages (single_epochs, cross_cycles, cross_epochs): the paper's 300 + 2 x
(100 + 100) epochs on UCF101; the queue is used from the first step (no start epoch) and there are no prototypes.
"""

from __future__ import annotations

import copy
import random

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vicc_fast.config import Config, Stream, UberNceLoss
from vicc_fast.data.batch import Batch
from vicc_fast.methods.base import STREAM_LABEL, Method, PhaseSpec, StepState
from vicc_fast.methods.common import (
    TWO_STAGE_ROWS,
    FeatureQueue,
    StreamNet,
    fp32,
    set_trainable,
    world_size,
)


# ------------------------------------------------------------------------------------ pure functions
def multi_instance_nce(logits: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    """Multi-instance InfoNCE (CoCLR eq. 2): -mean_b log( sum_{p in P_b} softmax(logits_b)_p ).

    logits: [B, M] similarities / tau (column 0 the own key, then the queue), pos_mask: [B, M] bool with at
    least one True per row -> 0-dim. Written as logsumexp over positives minus logsumexp over all (stable).
    With only column 0 positive it is MoCo's InfoNCE (eq. 1).
    """
    logits = logits.float()
    pos = logits.masked_fill(~pos_mask, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(pos, dim=1)).mean()


def mean_log_prob_nce(logits: torch.Tensor, pos_mask: torch.Tensor) -> torch.Tensor:
    """UberNCE's loss as released (CoCLR ``main_nce.py``: ``-(F.log_softmax(output, 1) * target).sum(1) /
    target.sum(1)``, then the batch mean): -mean_b mean_{p in P_b} log softmax(logits_b)_p.

    logits: [B, M], pos_mask: [B, M] bool with at least one True per row -> 0-dim. With one positive per row
    it equals :func:`multi_instance_nce`; with several it pulls every positive up, not only their sum.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    pos = pos_mask.to(logp.dtype)
    return (-(logp * pos).sum(dim=1) / pos.sum(dim=1)).mean()


def drop_own_key(pos_mask: torch.Tensor) -> torch.Tensor:
    """The released co-training's self-similarity masking (``main_coclr.py``: ``mask_clone[mask_sum != 1, 0] =
    0``): rows with more than one positive lose column 0 (their own key); rows whose only positive is their own
    key keep it. pos_mask: [B, M] bool -> a new [B, M] bool."""
    out = pos_mask.clone()
    out[:, 0] &= pos_mask.sum(dim=1) == 1  # elementwise, not a boolean-index write (no device sync)
    return out


def own_key_coin(seed: int, phase: str, step: int, prob: float) -> bool:
    """This step's coin of :func:`drop_own_key` (True with ``prob``): a function of (seed, phase, step in the
    phase) alone, so every rank draws the same one (the released code seeds Python's ``random`` with the epoch
    on every rank) and a resumed run draws what the uninterrupted one did. ``random.Random`` seeded with a
    string hashes it with SHA-512: stable across processes, unlike ``hash()``."""
    if prob <= 0.0:
        return False
    return random.Random(f"coclr-own-key/{seed}/{phase}/{step}").random() < prob


def topk_positive_mask(sim: torch.Tensor, k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The K most similar entries per row as a mask (CoCLR eq. 3: topK(z_2i . z_2j)).

    sim: [B, L] similarities of this batch's other-stream features to the queued ones; valid: [L] bool (rows
    of the queue that hold real features; None = all) -> [B, L] bool with min(k, #valid) True per row.
    """
    if valid is not None:
        sim = sim.masked_fill(~valid.unsqueeze(0), float("-inf"))
    k = min(k, sim.shape[1])
    mask = torch.zeros_like(sim, dtype=torch.bool)
    if k <= 0:
        return mask
    vals, idx = torch.topk(sim, k, dim=1)
    mask.scatter_(1, idx, torch.isfinite(vals))
    return mask


def same_video_mask(videos: torch.Tensor, queue_videos: torch.Tensor) -> torch.Tensor:
    """Queue entries holding a key of the query's own video (from an earlier epoch). videos: [B] video ids,
    queue_videos: [L] (-1 = empty) -> [B, L] bool."""
    return (videos.unsqueeze(1) == queue_videos.unsqueeze(0)) & (queue_videos >= 0).unsqueeze(0)


def label_positive_mask(labels: torch.Tensor, queue_labels: torch.Tensor) -> torch.Tensor:
    """UberNCE's oracle positives: queue entries of the same class. labels: [B], queue_labels: [L] (-1 = empty)
    -> [B, L] bool."""
    return (labels.unsqueeze(1) == queue_labels.unsqueeze(0)) & (queue_labels >= 0).unsqueeze(0)


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, m: float) -> None:
    """key <- m * key + (1 - m) * query, parameters only (buffers, e.g. BN statistics, are the key's own)."""
    kp = [p.data for p in key.parameters()]
    qp = [p.data for p in query.parameters()]
    torch._foreach_mul_(kp, m)
    torch._foreach_add_(kp, qp, alpha=1.0 - m)


def _gather(t: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, rank order (no grad); the tensor itself on one process."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def coclr_phases(cfg: Config) -> list[PhaseSpec]:
    """InfoNCE per stream (``rgb1``, ``flow1``), then ``cross_cycles`` x co-training (``cross_rgb_cN``,
    ``cross_flow_cN``), of ``cfg.schedule``'s lengths."""
    sc = cfg.schedule
    phases = [
        PhaseSpec(f"{s.value}1", s, None, (s,), 2, sc.single_epochs, f"{STREAM_LABEL[s]}-1")
        for s in (Stream.rgb, Stream.flow)
    ]
    for c in range(1, sc.cross_cycles + 1):
        for s, t in ((Stream.rgb, Stream.flow), (Stream.flow, Stream.rgb)):
            report = f"{STREAM_LABEL[s]}-2" if c == sc.cross_cycles else ""
            phases.append(PhaseSpec(f"cross_{s.value}_c{c}", s, t, (s, t), 2, sc.cross_epochs, report))
    return phases


# ------------------------------------------------------------------------------------------ the method
class CoCLR(Method):
    """Query networks (backbone + 2-layer head) and momentum key networks of both streams, one key queue.

    The queue holds, per phase, [keys of s; features of t] as two aligned views plus the clip labels (for
    UberNCE and diagnostics). It is the global queue (every rank enqueues all ranks' keys, as MoCo), started
    full of random unit vectors (MoCo) that serve as negatives only: top-K mining looks at real rows only.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.method.coclr
        self.nets = nn.ModuleDict({s.value: StreamNet(cfg.model) for s in Stream})
        self.key_nets = nn.ModuleDict({s.value: copy.deepcopy(self.nets[s.value]) for s in Stream})
        for k in self.key_nets.values():
            set_trainable(k, False)
            k.train()  # MoCo's key encoder runs BN in training mode
        self.queue = FeatureQueue(2, c.queue_size, cfg.model.proj_dim)
        self.register_buffer("queue_labels", torch.full((c.queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_videos", torch.full((c.queue_size,), -1, dtype=torch.long))
        self._phase: PhaseSpec | None = None
        self._takes_step = True  # set by every loss(): whether the engine back-propagates and steps

    def phases(self) -> list[PhaseSpec]:
        return coclr_phases(self.cfg)

    def table_rows(self) -> tuple[str, ...]:
        return TWO_STAGE_ROWS

    def setup_phase(self, phase: PhaseSpec) -> None:
        self._phase = phase
        s = phase.train_stream.value
        for st in Stream:
            set_trainable(self.nets[st.value], st.value == s)
        if self.queue.owner != phase.name:  # a new phase, not a resumed one
            self.queue.claim(phase.name)
            with torch.no_grad():
                self.queue.queue.copy_(F.normalize(torch.randn_like(self.queue.queue), dim=-1))
                self.queue_labels.fill_(-1)
                self.queue_videos.fill_(-1)
                self.key_nets[s].load_state_dict(self.nets[s].state_dict())  # CoCLR: f_k.params = f_q.params

    def train(self, mode: bool = True) -> CoCLR:
        super().train(mode)
        if self._phase is not None:
            for st in Stream:
                if st != self._phase.train_stream:
                    self.nets[st.value].eval()
        return self

    def trainable_parameters(self, phase: PhaseSpec) -> list[nn.Parameter]:
        return list(self.nets[phase.train_stream.value].parameters())

    def encoders(self) -> dict[Stream, nn.Module]:
        return {s: self.nets[s.value].backbone for s in Stream}

    def shuffled_modules(self, phase: PhaseSpec) -> list[nn.Module]:
        """The key encoders' backbones: the released code shuffles the key clips' batch around ``encoder_k``
        only (model/pretrain.py ``_batch_shuffle_ddp(x2)`` / ``_batch_unshuffle_ddp``, in InfoNCE, UberNCE and
        CoCLR); the query and the frozen stream run on the rank's own batch. (The projection head has no
        BatchNorm, so wrapping the backbone alone is the same.)"""
        return [self.key_nets[s.value].backbone for s in phase.trained_streams]

    # ---------------------------------------------------------------------------------------- the step
    def loss(self, batch: Batch, state: StepState) -> dict[str, torch.Tensor]:
        phase = state.phase
        c = self.cfg.method.coclr
        s, t = phase.train_stream, phase.frozen_stream
        x_q, x_k = batch.views[s][0], batch.views[s][1]
        zq = self.nets[s.value].embed(x_q)  # [B, D]
        with torch.no_grad():
            zk = self.key_nets[s.value].embed(x_k)
            # the frozen stream (the released 'sampler') on the key's clip, as kf = sampler(f2)
            zt = None
            if t is not None:
                zt = self.nets[t.value].embed(batch.views[t][1 if c.mine_key_clip else 0])
        # a copy: the enqueue below writes the buffer in place, and backward needs the keys (as MoCo's clone)
        keys, tq = self.queue.queue[0].clone(), self.queue.queue[1]  # [L, D] each
        L = keys.shape[0]
        cotrain = zt is not None and not c.ubernce  # main_coclr.py's loop (UberNCE is main_nce.py's)
        full = self.queue.filled >= L  # before this batch's enqueue, as queue_is_full in the released forward
        self._takes_step = full or not (cotrain and c.step_when_full)
        with fp32(zq.device):
            l_pos = (zq * zk).sum(dim=1, keepdim=True)  # [B, 1]
            l_neg = zq @ keys.t()  # [B, L]
            logits = torch.cat([l_pos, l_neg], dim=1) / c.temperature
            with torch.no_grad():
                if c.ubernce:
                    extra = label_positive_mask(batch.label.to(zq.device), self.queue_labels)
                elif zt is not None:
                    same = torch.zeros_like(l_neg, dtype=torch.bool)
                    if c.same_video_positive:  # positives, and kept out of the mining (CoCLR code)
                        same = same_video_mask(self._video_ids(batch).to(zq.device), self.queue_videos)
                    valid = torch.arange(L, device=zq.device) < self.queue.filled
                    if c.mine_when_full and not full:
                        mined = torch.zeros_like(same)
                    else:
                        mined = topk_positive_mask(
                            (zt @ tq.t()).masked_fill(same, float("-inf")), c.topk, valid
                        )
                    extra = mined | same
                else:
                    extra = torch.zeros_like(l_neg, dtype=torch.bool)
                pos_mask = torch.cat([torch.ones_like(l_pos, dtype=torch.bool), extra], dim=1)
                if cotrain and own_key_coin(
                    self.cfg.train.seed, phase.name, state.global_step, c.drop_own_key_prob
                ):
                    pos_mask = drop_own_key(pos_mask)
            if c.ubernce and c.ubernce_loss is UberNceLoss.mean_log_prob:
                loss = mean_log_prob_nce(logits, pos_mask)
            else:
                loss = multi_instance_nce(logits, pos_mask)
        self._enqueue(zk, zt, batch.label.to(zq.device), self._video_ids(batch).to(zq.device))
        out = {"loss": loss}
        with torch.no_grad():
            out["positives"] = pos_mask.sum(dim=1).float().mean()
            if zt is not None and not c.ubernce:  # how often mined positives share the label (labels read
                lab = label_positive_mask(batch.label.to(zq.device), self.queue_labels)  # for logging only)
                out["mined_precision"] = (mined & lab).sum() / mined.sum().clamp_min(1)
        return out

    def _video_ids(self, batch: Batch) -> torch.Tensor:
        """[B] the ids same_video_positive compares: source videos (method.coclr.same_source, the CoCLR code's
        video_source.json groups) when the batch carries them, else the clips' own video indices."""
        if self.cfg.method.coclr.same_source and batch.source is not None:
            return batch.source
        return batch.index

    @torch.no_grad()
    def _enqueue(
        self, zk: torch.Tensor, zt: torch.Tensor | None, labels: torch.Tensor, videos: torch.Tensor
    ) -> None:
        zk, labels, videos = _gather(zk), _gather(labels), _gather(videos)
        zt = _gather(zt) if zt is not None else torch.zeros_like(zk)
        B, L = zk.shape[0], self.queue.length
        idx = (self.queue.ptr + torch.arange(min(B, L), device=zk.device)) % L
        self.queue_labels[idx] = labels[-L:]
        self.queue_videos[idx] = videos[-L:]
        self.queue.push(torch.stack([zk, zt]), backend=self.cfg.kernels.backend.value)

    def takes_step(self, state: StepState) -> bool:
        """False in co-training while the queue fills (``method.coclr.step_when_full``, the released
        ``if model.module.queue_is_full: optimizer.step()``): the batches only fill the queue."""
        return self._takes_step

    def after_step(self, state: StepState) -> None:
        # every step, as the released forward (while the query has not stepped the key equals it: no change)
        s = state.phase.train_stream.value
        momentum_update(self.key_nets[s], self.nets[s], self.cfg.method.coclr.momentum)
