"""The interface between the engine and a self-supervised method.

The engine knows nothing about ViCC: it asks the method for its phases, builds a loader with the streams and
views each phase needs, calls ``loss`` every step (through ``forward``), steps the optimiser over ``trainable_parameters``, then
calls ``after_step``. Everything method-specific (encoders, heads, prototypes, queues, frozen streams) lives
in the method.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn

from vicc_fast.config import Stream
from vicc_fast.data.batch import Batch

STREAM_LABEL = {Stream.rgb: "RGB", Stream.flow: "Flow"}  # row labels in result tables: RGB-1, Flow-2, ...


@dataclass(frozen=True)
class PhaseSpec:
    """One training phase, e.g. ViCC's ``rgb1``, ``flow1``, ``cross_rgb_c1``, ``cross_flow_c1``.

    name: unique name; checkpoints and logs are keyed by it.
    train_stream: the stream whose encoder (and prototypes) are optimised.
    frozen_stream: the other stream used as a frozen teacher (eval mode, no grad), or None.
    streams: streams the loader must deliver, in order; num_views: views per stream (aligned across streams).
    epochs: length of the phase.
    report: a short label for result tables (e.g. "RGB-1", "Flow-2"), or "" when the phase is not reported;
    for a joint phase the stage part of the rows' labels ("joint" -> rows "RGB-joint", "Flow-joint", "R+F-joint").
    joint: every stream in ``streams`` is trained at once (GOCA); ``train_stream`` is then their first.
    lr_epochs: length of the phase's cosine learning-rate schedule in epochs (0 = ``epochs``); longer than the
    phase, the phase ends before the rate reaches its final value (the released ViCC scripts' stage 1).
    batch_size: clips per rank per step of the phase's loader (0 = ``train.batch_size``); the learning rate
    stays that of ``train.batch_size``.

    Everything else a method schedules (when its queue starts, how long its prototypes stay frozen) is the
    method's own: a method may subclass this (``methods.common.SwavPhase``); the engine reads only these fields.
    """

    name: str
    train_stream: Stream
    frozen_stream: Stream | None
    streams: tuple[Stream, ...]
    num_views: int
    epochs: int
    report: str = ""
    joint: bool = False
    lr_epochs: int = 0
    batch_size: int = 0

    @property
    def cross(self) -> bool:
        """A cross-stream / co-training phase: one stream trained against the other, frozen."""
        return self.frozen_stream is not None

    @property
    def trained_streams(self) -> tuple[Stream, ...]:
        """The streams whose encoders this phase optimises (evaluation reports each of them)."""
        return self.streams if self.joint else (self.train_stream,)

    def row_labels(self) -> dict[Stream, str]:
        """Result-table row of each trained stream's encoder after this phase ({} when not reported)."""
        if not self.report:
            return {}
        if self.joint:
            return {s: f"{STREAM_LABEL[s]}-{self.report}" for s in self.trained_streams}
        return {self.train_stream: self.report}


@dataclass
class StepState:
    """Where training stands; passed to the method every step."""

    phase: PhaseSpec
    epoch: int  # epoch within the phase, 0-based
    step: int  # step within the epoch
    global_step: int  # step within the phase
    steps_per_epoch: int


class Method(nn.Module, abc.ABC):
    """A self-supervised method: owns its modules and computes its loss from a Batch."""

    @abc.abstractmethod
    def phases(self) -> list[PhaseSpec]:
        """The whole schedule, in order."""

    @abc.abstractmethod
    def setup_phase(self, phase: PhaseSpec) -> None:
        """Prepare for a phase: set requires_grad/eval mode of frozen parts, reset queues."""

    @abc.abstractmethod
    def trainable_parameters(self, phase: PhaseSpec) -> list[nn.Parameter]:
        """Parameters the optimiser of this phase updates."""

    @abc.abstractmethod
    def loss(self, batch: Batch, state: StepState) -> dict[str, torch.Tensor]:
        """Named loss terms for logging; ``"loss"`` is the total that is back-propagated."""

    def forward(self, batch: Batch, state: StepState) -> dict[str, torch.Tensor]:
        """= :meth:`loss`: the engine calls the method as a module, so that a DistributedDataParallel wrapper of
        it sees a forward call."""
        return self.loss(batch, state)

    def before_backward(self, losses: dict[str, torch.Tensor], state: StepState) -> None:  # noqa: B027
        """Hook before backward (optional)."""

    def takes_step(self, state: StepState) -> bool:
        """Asked after ``loss``: whether this step back-propagates and steps the optimiser. False (e.g. CoCLR's
        co-training while its queue fills, as the released code): no backward, no ``after_backward``, no
        optimiser or scaler step; the lr schedule advances with the step index all the same, and ``after_step``
        still runs (the method knows it did not step)."""
        return True

    def after_backward(self, state: StepState) -> None:  # noqa: B027
        """Hook between backward and the optimiser step, e.g. dropping prototype gradients while frozen."""

    def after_step(self, state: StepState) -> None:  # noqa: B027
        """Hook after the optimiser step, e.g. re-normalising prototypes or a momentum update."""

    def log_values(self, state: StepState) -> dict[str, float]:
        """Where the method's own schedule stands at this step (e.g. ViCC's ``queue_active``,
        ``prototypes_frozen``): logged beside the loss terms at log steps. None by default."""
        return {}

    def result_rows(self, phase: PhaseSpec) -> dict[str, str]:
        """The result-table rows of ``phase``'s evaluation: metric group -> row label ({} when the phase is not
        reported). The groups are the per-phase evaluation's: each stream's value (``rgb``, ``flow``) and
        ``rf_sum`` (the two streams' fused features). By default each trained stream's row
        (:meth:`PhaseSpec.row_labels`) and the fused row ``R+F`` (``R+F-<report>`` for a joint phase); a later
        phase's row of the same label replaces an earlier one."""
        if not phase.report:
            return {}
        rows = {s.value: label for s, label in phase.row_labels().items()}
        rows["rf_sum"] = f"R+F-{phase.report}" if phase.joint else "R+F"
        return rows

    def table_rows(self) -> tuple[str, ...]:
        """Row labels in the order the result table shows them; rows not named follow in the order the phases
        report them. Empty by default."""
        return ()

    def prototype_scorer(self, stream: Stream) -> nn.Module | None:
        """``[N, F]`` backbone features of ``stream`` -> ``[N, K]`` prototype scores (head then prototypes), for
        the prototype-assignment cluster metrics; None for methods without prototypes (CoCLR)."""
        return None

    def shuffled_modules(self, phase: PhaseSpec) -> list[nn.Module]:
        """The modules the engine's batch shuffle wraps in ``phase`` (``train.batch_shuffle`` on several ranks
        without SyncBN): by default the encoders the phase trains (a frozen stream runs on the rank's own batch,
        as the released ``second``). A method with a momentum key encoder names that instead (MoCo, and the
        released CoCLR code, shuffle the key's batch only)."""
        enc = self.encoders()
        return [enc[s] for s in phase.trained_streams]

    @abc.abstractmethod
    def encoders(self) -> dict[Stream, nn.Module]:
        """The backbones without heads, for evaluation: stream -> module mapping [B,C,T,H,W] -> [B, F]."""
