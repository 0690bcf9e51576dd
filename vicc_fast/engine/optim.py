"""Optimisers and learning-rate schedules of the engine.

LARS here is the released ViCC code's (SwAV's) setting: apex LARC with ``clip=False`` and trust 0.001 around
SGD with momentum 0.9 and weight decay on every parameter. For every adapted parameter ``p`` with gradient ``g``
the update direction is ``trust * |p| / (|g| + wd |p| + eps) * (g + wd p)`` (the raw ``g``, undecayed, when
``|p|`` or ``|g|`` is 0), then plain momentum SGD. By default every parameter is decayed and adapted, as
released; ``optim.exclude_bias_norm`` moves biases and normalisation parameters (every parameter with
``ndim <= 1``) into a second group with neither weight decay nor adaptation (solo-learn's ``exclude_bias_n_norm``).
The step is written with ``torch._foreach_*`` ops and tensor math only, so it never syncs the host per parameter.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vicc_fast.config import LrScheduleKind, OptimConfig, Optimizer


def is_excluded(p: torch.Tensor) -> bool:
    """Biases and normalisation weights/biases: 0-d or 1-d tensors. Prototypes and conv/linear weights are not."""
    return p.ndim <= 1


def param_groups(
    params: Iterable[nn.Parameter], weight_decay: float, exclude_bias_norm: bool = False
) -> list[dict]:
    """The optimiser's groups. Default (released ViCC): one group, every parameter decayed and adapted.
    With ``exclude_bias_norm``: adapted weights with weight decay, and biases/norm parameters with neither.

    Group keys: ``params``, ``weight_decay``, ``lars`` (whether LARS adapts the group's step).
    Empty groups are dropped (torch optimisers refuse them in some versions).
    """
    seen: set[int] = set()
    adapted: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for p in params:
        if id(p) in seen:
            continue
        seen.add(id(p))
        (plain if exclude_bias_norm and is_excluded(p) else adapted).append(p)
    groups = [
        {"params": adapted, "weight_decay": weight_decay, "lars": True},
        {"params": plain, "weight_decay": 0.0, "lars": False},
    ]
    return [g for g in groups if g["params"]]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling over momentum SGD (no lr clipping).

    Per group: ``lr``, ``momentum``, ``weight_decay``, ``lars`` (adapt or not), ``trust_coefficient``, ``eps``.
    Parameters whose ``grad`` is None are skipped entirely (no decay, no momentum), which is how methods freeze
    prototypes: they set the gradient to None.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(
                "LARS: need lr >= 0, 0 <= momentum < 1, weight_decay >= 0, trust_coefficient > 0"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            lars=True,
            trust_coefficient=trust_coefficient,
            eps=eps,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            wd = float(group["weight_decay"])
            if group["lars"]:
                p_norm = torch.stack(torch._foreach_norm(params)).float()
                g_norm = torch.stack(torch._foreach_norm(grads)).float()
                ratio = group["trust_coefficient"] * p_norm / (g_norm + wd * p_norm + group["eps"])
                # A zero weight or zero gradient keeps the raw gradient, no decay (apex LARC's rule), on device.
                ok = (p_norm > 0) & (g_norm > 0)
                trust = torch.where(ok, ratio, torch.ones_like(ratio))
                if wd != 0:
                    decay = torch._foreach_mul(
                        params, [d.to(p.dtype) for d, p in zip((wd * ok).unbind(0), params)]
                    )
                    d_p = torch._foreach_add(grads, decay)
                else:
                    d_p = [g.clone() for g in grads]
                torch._foreach_mul_(d_p, [t.to(d.dtype) for t, d in zip(trust.unbind(0), d_p)])
            elif wd != 0:
                d_p = torch._foreach_add(grads, params, alpha=wd)
            else:
                d_p = grads
            momentum = group["momentum"]
            if momentum != 0:
                bufs = []
                fresh: list[int] = []
                for i, p in enumerate(params):
                    st = self.state[p]
                    if "momentum_buffer" not in st:
                        st["momentum_buffer"] = d_p[i].detach().clone()
                        fresh.append(i)
                    bufs.append(st["momentum_buffer"])
                fresh_set = set(fresh)
                old = [i for i in range(len(params)) if i not in fresh_set]
                if old:
                    ob = [bufs[i] for i in old]
                    torch._foreach_mul_(ob, momentum)
                    torch._foreach_add_(ob, [d_p[i] for i in old])
                d_p = bufs
            torch._foreach_add_(params, d_p, alpha=-group["lr"])
        return loss


def build_optimizer(cfg: OptimConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser of one phase; ``lr`` is set by the schedule every step, the value here is a placeholder."""
    groups = param_groups(params, cfg.weight_decay, cfg.exclude_bias_norm)
    if not groups:
        raise ValueError("the phase has no trainable parameters")
    if cfg.name is Optimizer.lars:
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)
    if cfg.name is Optimizer.sgd:
        for g in groups:
            g.pop("lars")
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
    if cfg.name is Optimizer.adam:
        for g in groups:
            g.pop("lars")
        return torch.optim.Adam(groups, lr=cfg.lr, foreach=True)
    raise ValueError(f"config key 'optim.name': unknown optimizer {cfg.name}")


@dataclass(frozen=True)
class LrSchedule:
    """Linear warmup from 0 to ``base`` over ``warmup`` steps, then cosine from ``base`` to ``final`` at ``total``.

    Step ``t`` is 0-based within the phase; ``lr(t)`` is the rate used by step ``t``.
    """

    base: float
    final: float
    total: int
    warmup: int = 0

    def __call__(self, t: int) -> float:
        if self.warmup > 0 and t < self.warmup:
            return self.base * (t + 1) / self.warmup
        span = max(1, self.total - self.warmup - 1)
        progress = min(1.0, max(0.0, (t - self.warmup) / span))
        return self.final + 0.5 * (self.base - self.final) * (1.0 + math.cos(math.pi * progress))


def scaled_lrs(cfg: OptimConfig, global_batch: int) -> tuple[float, float]:
    """(base lr, final lr), both multiplied by global_batch / base_batch when ``optim.scale_lr``."""
    factor = global_batch / cfg.base_batch if cfg.scale_lr else 1.0
    return cfg.lr * factor, cfg.final_lr * factor


@dataclass(frozen=True)
class StepLrSchedule:
    """Linear warmup from 0 to ``base`` over ``warmup`` steps, then ``base * gamma ** n`` where ``n`` counts the
    milestones at or before step ``t`` (CoCLR's ``adjust_learning_rate``: ``lr *= 0.1 if epoch >= milestone``).

    ``milestones``: increasing 0-based steps within the phase (a milestone epoch e is step e x steps_per_epoch,
    so the rate drops with the first step of epoch e, constant within an epoch as released). ``lr(t)`` depends on
    ``t`` alone, so a resumed run continues the same rates.
    """

    base: float
    milestones: tuple[int, ...]
    gamma: float = 0.1
    warmup: int = 0

    def __call__(self, t: int) -> float:
        if self.warmup > 0 and t < self.warmup:
            return self.base * (t + 1) / self.warmup
        return self.base * self.gamma ** bisect_right(self.milestones, t)


Schedule = Callable[[int], float]  # step within the phase -> its lr: LrSchedule | StepLrSchedule


def milestone_steps(
    milestones: Sequence[int], steps_per_epoch: int, epochs: int, key: str
) -> tuple[int, ...]:
    """Milestone epochs of a phase -> 0-based steps: epoch e starts at step e x steps_per_epoch.

    A milestone at or past the phase's last epoch would never fire; raises ValueError naming ``key``.
    """
    late = [m for m in milestones if m >= epochs]
    if late:
        raise ValueError(
            f"config key '{key}': milestones {late} fall at or after the phase's end (epoch {epochs}): "
            "they would never drop the lr"
        )
    return tuple(int(m) * steps_per_epoch for m in milestones)


def build_schedule(
    cfg: OptimConfig, global_batch: int, steps_per_epoch: int, epochs: int, cross: bool = False
) -> Schedule:
    """The lr of every step of one phase: ``optim.schedule`` cosine (over ``epochs``) or step (at
    ``optim.milestones``, or ``optim.cross_milestones`` when ``cross``: a cross-stream / co-training phase)."""
    base, final = scaled_lrs(cfg, global_batch)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if LrScheduleKind(cfg.schedule) is LrScheduleKind.step:
        key = "optim.cross_milestones" if cross else "optim.milestones"
        marks = cfg.cross_milestones if cross else cfg.milestones
        return StepLrSchedule(
            base=base,
            milestones=milestone_steps(marks, steps_per_epoch, epochs, key),
            gamma=cfg.gamma,
            warmup=warmup,
        )
    return LrSchedule(base=base, final=final, total=steps_per_epoch * epochs, warmup=warmup)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def grad_norm(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of the gradients as a device tensor (no host sync); 0 when there are none."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))
