"""The interface between the engine and a self-supervised method.

The engine knows nothing about ViCC: it asks the method for its phases, builds a loader with the streams and
views each phase needs, calls ``loss`` every step, steps the optimiser over ``trainable_parameters``, then
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
    epochs: length of the phase; queue_start_epoch: epoch (0-based, within the phase) the queue starts;
    freeze_prototypes_epochs: epochs at the start of the phase during which prototype gradients are dropped
    (a value >= epochs keeps them frozen throughout).
    report: a short label for result tables (e.g. "RGB-1", "Flow-2"), or "" when the phase is not reported;
    for a joint phase the stage part of the rows' labels ("joint" -> rows "RGB-joint", "Flow-joint", "R+F-joint").
    joint: every stream in ``streams`` is trained at once (GOCA); ``train_stream`` is then their first.
    lr_epochs: length of the phase's cosine learning-rate schedule in epochs (0 = ``epochs``); longer than the
    phase, the phase ends before the rate reaches its final value (the released ViCC scripts' stage 1).
    """

    name: str
    train_stream: Stream
    frozen_stream: Stream | None
    streams: tuple[Stream, ...]
    num_views: int
    epochs: int
    queue_start_epoch: int
    freeze_prototypes_epochs: int
    report: str = ""
    joint: bool = False
    lr_epochs: int = 0

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

    @property
    def queue_active(self) -> bool:
        return self.epoch >= self.phase.queue_start_epoch

    @property
    def prototypes_frozen(self) -> bool:
        return self.epoch < self.phase.freeze_prototypes_epochs


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
