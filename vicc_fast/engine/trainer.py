"""The training loop: phases of a Method, one optimiser per phase, checkpoints, exact resume, evaluation hook.

The engine knows nothing about ViCC (see methods/base.py). Per phase it: calls ``setup_phase``; gives
``requires_grad`` only to ``trainable_parameters`` (so DDP and autograd skip the rest); builds the loader with the
phase's streams and views; runs ``epochs x steps_per_epoch`` steps of autocast forward -> ``loss`` -> backward ->
``after_backward`` -> optimiser -> ``after_step`` (backward and optimiser skipped where the method's
``takes_step`` says so) with the lr of :func:`~vicc_fast.engine.optim.build_schedule`
(cosine or step, a function of the step within the phase); checkpoints every ``train.ckpt_every_steps`` steps and at the end; then calls the evaluation hook.

Exact resume: the torch RNG is re-seeded from (seed, rank, phase, step) at every step, the loader order and
augmentations are a function of (seed, epoch) (``set_epoch``), and a mid-epoch checkpoint records the next step:
on resume the engine restarts the loader at that epoch and skips the batches already trained on. Parameters,
optimiser, scaler and the method's buffers (queue, BN statistics) come from the checkpoint, so the resumed run
computes what the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from vicc_fast import atomic
from vicc_fast import checkpoint as ckpt
from vicc_fast import config as C
from vicc_fast.data.batch import Batch
from vicc_fast.engine import resume
from vicc_fast.engine.distributed import BatchShuffle, DistInfo, barrier, derive_seed
from vicc_fast.engine.logging import Meter, Profiler, RunLogger, nvtx_range
from vicc_fast.engine.optim import build_optimizer, build_schedule, grad_norm, set_lr
from vicc_fast.methods.base import Method, PhaseSpec, StepState

LoaderFactory = Callable[[PhaseSpec], Any]
"""phase -> loader with ``len()``, ``set_epoch(e)`` and iteration yielding Batch (data/loader.py contract)."""
EvalHook = Callable[[C.Config, Method, PhaseSpec, int, int, torch.device], dict]
StepHook = Callable[[PhaseSpec, StepState], None]


class NonFiniteLossError(RuntimeError):
    """A NaN/Inf loss term; the message names the phase, the step and the term(s)."""


class TrainingStopped(RuntimeError):
    """A stop was requested (SIGTERM/SIGUSR1, e.g. a cluster preemption): a checkpoint was written first."""


class ResumeError(RuntimeError):
    """The run folder cannot be continued as asked (e.g. a phase's prerequisites are missing)."""


AMP_DTYPES = {C.Amp.bf16: torch.bfloat16, C.Amp.fp16: torch.float16}


# ------------------------------------------------------------------------------------------ validation
def validate_training(cfg: C.Config, world_size: int = 1, device: torch.device | None = None) -> None:
    """The checks that need the run's environment (config.validate checks every value when the config loads);
    raises ConfigError naming the key. train.py calls it once, before any work."""
    t = cfg.train
    dev = device or torch.device("cpu")
    checks: list[tuple[bool, str, str]] = [
        (
            t.resume in ("auto", "never") or Path(t.resume).is_file(),
            "train.resume",
            f"must be auto | never | an existing checkpoint file (got '{t.resume}')",
        ),
        (
            t.device is not C.Device.gpu or torch.cuda.is_available(),
            "train.device",
            "gpu but CUDA is not available",
        ),
        (
            not (t.sync_bn and world_size > 1 and dev.type == "cpu"),
            "train.sync_bn",
            "SyncBatchNorm needs GPUs; on CPU ranks use train.batch_shuffle=true instead",
        ),
    ]
    for ok, key, why in checks:
        if not ok:
            raise C.ConfigError(f"config key '{key}': {why}")


# ---------------------------------------------------------------------------------------------- phases
def phase_batch_size(cfg: C.Config, phase: PhaseSpec) -> int:
    """Clips per rank per step of ``phase``: the phase's own ``batch_size`` when the method sets one (e.g. ViCC's
    ``method.vicc.cross_batch_size``), else ``train.batch_size``."""
    return phase.batch_size or cfg.train.batch_size


def phase_cfg(cfg: C.Config, phase: PhaseSpec) -> C.Config:
    """The config the phase's train loader reads: ``train.batch_size`` = :func:`phase_batch_size`."""
    batch = phase_batch_size(cfg, phase)
    if batch == cfg.train.batch_size:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch))


def make_batch_shuffle(cfg: C.Config, method: Method, phase: PhaseSpec, world: int) -> BatchShuffle | None:
    """The batch shuffle of ``phase`` (``train.batch_shuffle``; none on one rank or with SyncBN), hooked on the
    modules the method names for the phase (``Method.shuffled_modules``: by default the encoders it trains only): a frozen stream is never shuffled (released ``second`` runs unshuffled, also
    while the released quirk keeps it in train mode, ``method.vicc.frozen_train_quirk``).
    ``train.batch_shuffle_views=second`` shuffles each encoder's forwards after its first in a step (released:
    x2 only)."""
    if not cfg.train.batch_shuffle or world <= 1 or cfg.train.sync_bn:
        return None
    skip_first = cfg.train.batch_shuffle_views is C.ShuffleViews.second
    return BatchShuffle(method.shuffled_modules(phase), cfg.train.seed, skip_first=skip_first)


def select_phases(phases: list[PhaseSpec], which: C.Phase) -> list[PhaseSpec]:
    """rgb1 / flow1 = the single-stream phase of that stream; cross = every phase with a frozen stream.
    A selection the method has no phase for is a ConfigError naming ``schedule.phase``."""
    if which is C.Phase.all:
        selected = list(phases)
    elif which is C.Phase.cross:
        selected = [p for p in phases if p.frozen_stream is not None]
    else:
        stream = C.Stream.rgb if which is C.Phase.rgb1 else C.Stream.flow
        selected = [p for p in phases if p.frozen_stream is None and p.train_stream is stream]
    if not selected:
        raise C.ConfigError(f"config key 'schedule.phase': no phase '{C.Phase(which).value}' in this method")
    return selected


def prerequisites(phase: PhaseSpec, phases: list[PhaseSpec]) -> list[PhaseSpec]:
    """Earlier phases that train a stream this phase uses: it starts from their models."""
    used = {phase.train_stream, *phase.streams}
    idx = phases.index(phase)
    return [q for q in phases[:idx] if used & set(q.trained_streams)]


@dataclass
class _Position:
    phase: str
    epoch: int
    step: int
    optimizer: dict | None
    scaler: dict | None
    state: dict | None = None  # the whole checkpoint, re-applied after setup_phase
    src: Path | None = None


class _FiniteTracker:
    """Remembers, on the device, the first step with a non-finite loss term and which terms; read only at checks."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.first_step: torch.Tensor | None = None
        self.flags: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.host_bad: tuple[int, dict[str, float]] | None = None

    def track(self, losses: dict[str, torch.Tensor], step: int) -> None:
        names = list(losses)
        vec = torch.stack([losses[k].detach().float().mean() for k in names])  # NaN anywhere -> NaN
        bad = ~torch.isfinite(vec)
        if names != self.names or self.first_step is None:
            if self.first_step is not None and self.host_bad is None:
                self.host_bad = self.bad()  # the method changed its terms: keep what the old ones showed
            self.names = names
            self.first_step = torch.full((), -1, dtype=torch.long, device=vec.device)
            self.flags = torch.zeros_like(bad)
            self.values = torch.zeros_like(vec)
        first = (self.first_step < 0) & bad.any()
        self.first_step = torch.where(first, torch.full_like(self.first_step, step), self.first_step)
        self.flags = torch.where(first, bad, self.flags)
        self.values = torch.where(first, vec, self.values)

    def bad(self) -> tuple[int, dict[str, float]] | None:
        """(step, {term: value}) of the first non-finite step, or None; one host sync."""
        if self.host_bad is not None:
            return self.host_bad
        if self.first_step is None:
            return None
        s = int(self.first_step)
        if s < 0:
            return None
        flags = self.flags.tolist()
        vals = self.values.tolist()
        return s, {n: v for n, f, v in zip(self.names, flags, vals) if f}


@dataclass
class _PhaseRun:
    """What the steps of one phase share: built by ``Trainer._start_run``, passed to every step."""

    phase: PhaseSpec
    loader: Any
    spe: int  # steps per epoch
    trainable: list[nn.Parameter]
    schedule: Callable[[int], float]  # step within the phase -> lr
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    model: nn.Module  # what a step calls: the method, or DDP around it
    shuffle: BatchShuffle | None
    epoch_offset: int  # loader epochs of the phases before this one
    start_epoch: int = 0
    start_step: int = 0
    tracker: _FiniteTracker = field(default_factory=_FiniteTracker)
    meter: Meter = field(default_factory=Meter)

    @property
    def total(self) -> int:
        return self.phase.epochs * self.spe


# --------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Runs the selected phases of ``method`` under ``cfg``; see the module docstring.

    loader_factory: phase -> loader (default: vicc_fast.data.loader.build_loader for the train split).
    evaluate: the per-phase hook (default: vicc_fast.eval.retrieval.evaluate_phase when cfg.eval.after_phase).
    step_hook: called after every step (tests use it to interrupt a run).
    """

    def __init__(
        self,
        cfg: C.Config,
        method: Method,
        dist_info: DistInfo | None = None,
        *,
        loader_factory: LoaderFactory | None = None,
        evaluate: EvalHook | None = None,
        step_hook: StepHook | None = None,
        tensorboard: bool = True,
    ) -> None:
        self.cfg = cfg
        self.dist = dist_info or DistInfo()
        self.device = self.dist.device
        self.out_dir = Path(cfg.train.out_dir)
        self.loader_factory = loader_factory or self._default_loader
        self.evaluate = evaluate
        self.step_hook = step_hook
        self.amp_dtype = AMP_DTYPES.get(cfg.train.amp)
        self.method = self._prepare(method)
        self.logger = RunLogger(self.out_dir, self.dist.rank, cfg.train.progress, tensorboard)
        self.profiler = Profiler(cfg.profile, self.dist.rank)
        if self.device.type == "cpu" and self.amp_dtype is not None:
            # measured on the 2-core CI CPU: S3D, batch 4 x 2 views of 8x64x64, ~130 s/step bf16 vs ~33 s fp32
            self.logger.write(
                f"note: train.amp={cfg.train.amp.value} on CPU: autocast 3D convolutions are much slower than fp32 "
                "there (train.amp='off' for CPU runs)"
            )
        self.completed: list[str] = []
        self.results: dict[str, dict] = {}
        self.run_step = 0
        self._stop = False

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def request_stop(self) -> None:
        """Ask the loop to checkpoint and stop (safe from a signal handler: it only sets a flag)."""
        self._stop = True

    def _should_stop(self, log_now: bool) -> bool:
        """One process: after any step. Several ranks agree at log steps (one tiny all-reduce), so every rank
        stops after the same step even when the signal reached only some of them."""
        if not self.dist.distributed:
            return self._stop
        if not log_now:
            return False
        import torch.distributed as dist

        flag = torch.tensor([float(self._stop)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # ------------------------------------------------------------------------------------------ setup
    def _prepare(self, method: Method) -> Method:
        t = self.cfg.train
        if self.device.type == "cuda":
            # fixed clip shapes: let cuDNN time its algorithms once, and use TF32 for fp32 matmuls/convs
            torch.backends.cudnn.benchmark = not t.deterministic
            torch.backends.cudnn.deterministic = t.deterministic
            torch.backends.cuda.matmul.allow_tf32 = not t.deterministic
            torch.backends.cudnn.allow_tf32 = not t.deterministic
        if t.sync_bn and self.dist.world_size > 1:
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)  # same state_dict keys
        if t.channels_last:
            method = method.to(self.device, memory_format=torch.channels_last_3d)
        else:
            method = method.to(self.device)
        if t.compile:
            for enc in method.encoders().values():
                enc.compile()
        return method

    def _default_loader(self, phase: PhaseSpec) -> Any:
        from vicc_fast.data.loader import build_loader

        return build_loader(
            phase_cfg(self.cfg, phase),
            split="train",
            mode="train",
            streams=phase.streams,
            num_views=phase.num_views,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            device=self.device,
        )

    def _eval_hook(self) -> EvalHook | None:
        if not self.cfg.eval.after_phase:
            return None
        if self.evaluate is not None:
            return self.evaluate
        from vicc_fast.eval.retrieval import evaluate_phase

        return evaluate_phase

    # ------------------------------------------------------------------------------------------ resume
    def _resume_source(self) -> tuple[Path, dict] | None:
        """(checkpoint, its state) to resume from; auto skips a damaged last.pt, saying so (resume.find_resume)."""
        r = self.cfg.train.resume
        if r == "never":
            return None
        if r == "auto":
            return resume.find_resume(self.out_dir, self.logger.write)
        return Path(r), ckpt.load(r, map_location="cpu")

    def _load_results(self) -> None:
        p = self.out_dir / "results.json"
        if p.is_file():
            try:
                self.results = json.loads(p.read_text())["phases"]
            except (ValueError, KeyError) as exc:
                raise ResumeError(f"{p} is corrupt ({exc}); remove it to re-evaluate") from None

    def _restore(self, phases: list[PhaseSpec]) -> tuple[_Position | None, str | None]:
        """Load the resume checkpoint, if any: (mid-phase position or None, name of a phase awaiting evaluation)."""
        found = self._resume_source()
        if found is None:
            return None, None
        src, state = found
        self._load_method(state, src)
        self.completed = list(state.get("completed", []))
        self.run_step = int(state.get("global_step", 0))
        resume.restore_rng(state["rng"])
        self._load_results()
        known = {p.name for p in phases}
        unknown = [n for n in self.completed if n not in known]
        if unknown:
            raise ResumeError(f"checkpoint {src} has phases {unknown} this method does not define")
        name = state["phase"]
        if name in self.completed:
            pending = name if name not in self.results else None
            return None, pending
        self.logger.write(f"resuming {name} at epoch {state['epoch']} step {state['step']} from {src}")
        pos = _Position(name, int(state["epoch"]), int(state["step"]), state["optimizer"], state["scaler"])
        pos.state, pos.src = state, src
        return pos, None

    def _load_method(self, state: dict, src: Path) -> None:
        """The method's tensors from a checkpoint (copied into the device tensors), and on ranks > 0 their own
        buffers (queues, BN statistics) saved beside it."""
        ckpt.load_method_state(self.method, state["method"], src)
        if self.dist.distributed and not self.dist.is_main:
            step = int(state.get("global_step", 0))
            if not resume.load_rank_buffers(self.out_dir, self.dist.rank, step, self.method):
                self.logger.write(f"rank {self.dist.rank}: no saved buffers of its own, starts from rank 0's")

    # ------------------------------------------------------------------------------------------ run
    def run(self) -> dict[str, dict]:
        """Train the phases cfg.schedule.phase selects; returns {phase name: evaluation results}."""
        phases = self.method.phases()
        selected = select_phases(phases, self.cfg.schedule.phase)
        position, pending_eval = self._restore(phases)
        sel_names = {p.name for p in selected}
        for p in selected:
            for q in prerequisites(p, phases):
                if q.name not in self.completed and q.name not in sel_names:
                    raise ResumeError(
                        f"phase {p.name} starts from the models of {q.name}, which is not completed in "
                        f"{self.out_dir}: run schedule.phase for it first (or phase=all)"
                    )
        try:
            if pending_eval is not None:
                self._evaluate(next(p for p in phases if p.name == pending_eval))
            for p in selected:
                if p.name in self.completed:
                    continue
                pos = position if position is not None and position.phase == p.name else None
                t0 = time.perf_counter()
                spe = self._train_phase(p, pos)
                self.completed.append(p.name)
                self._save(p, p.epochs, 0, None, None, steps_per_epoch=spe, phase_end=True)
                t1 = time.perf_counter()
                self._evaluate(p, train_s=t1 - t0)
        finally:
            self.profiler.close()
            self.logger.close()
        return self.results

    def _evaluate(self, phase: PhaseSpec, train_s: float | None = None) -> None:
        """Run the evaluation hook; record its metrics and the phase's wall times (train_s: this session's
        training time of the phase, None when it was trained before a resume) in results.json."""
        hook = self._eval_hook()
        if train_s is not None:
            self.logger.write(f"{phase.name}: trained in {train_s:.1f} s")
        if hook is None:
            return
        t0 = time.perf_counter()
        res = hook(self.cfg, self.method, phase, self.dist.rank, self.dist.world_size, self.device)
        eval_s = time.perf_counter() - t0
        if self.dist.is_main:
            seconds = {"train": train_s, "eval": eval_s}
            self.results[phase.name] = {
                "report": phase.report,
                "rows": {s.value: label for s, label in phase.row_labels().items()},
                "metrics": res,
                "seconds": seconds,
            }
            doc = {"phases": self.results, "completed": self.completed}
            atomic.write_text(self.out_dir / "results.json", json.dumps(doc, indent=1, default=float))
            self.logger.write(
                f"{phase.name} ({phase.report or '-'}): {format_metrics(res)} [eval {eval_s:.1f} s]"
            )

    # ------------------------------------------------------------------------------------------ one phase
    def _train_phase(self, phase: PhaseSpec, pos: _Position | None) -> int:
        """Train ``phase`` (from ``pos`` when resuming it mid-way); returns its steps per epoch."""
        trainable = self._setup_method(phase, pos)
        loader = self.loader_factory(phase)
        spe = self._steps_per_epoch(phase, loader)
        run = self._start_run(phase, pos, loader, spe, trainable)
        self.logger.start_phase(phase.name, run.total, run.start_epoch * spe + run.start_step)
        try:
            self._run_epochs(run)
            self._check_finite(run.tracker, phase, spe)
        finally:
            if run.shuffle is not None:
                run.shuffle.remove()
            self.logger.end_phase()
        return spe

    def _setup_method(self, phase: PhaseSpec, pos: _Position | None) -> list[nn.Parameter]:
        """The method in train mode, set up for ``phase``, ``requires_grad`` only on what the phase trains (so DDP
        and autograd skip the rest); a mid-phase resume's weights and buffers re-applied. Returns the trainable
        parameters."""
        self.method.train()
        self.method.setup_phase(phase)
        trainable = self.method.trainable_parameters(phase)
        ids = {id(p) for p in trainable}
        for p in self.method.parameters():
            p.requires_grad_(id(p) in ids)
        if pos is not None and pos.state is not None:
            # setup_phase may reset queues; a mid-phase resume wants the checkpoint's (and this rank's own)
            self._load_method(pos.state, pos.src)
        return trainable

    def _steps_per_epoch(self, phase: PhaseSpec, loader: Any) -> int:
        """The loader's full batches, capped by ``schedule.steps_per_epoch``."""
        spe = len(loader)
        if self.cfg.schedule.steps_per_epoch > 0:
            spe = min(spe, self.cfg.schedule.steps_per_epoch)
        if spe <= 0:
            raise RuntimeError(
                f"phase {phase.name}: the loader yields no full batch (train.batch_size too large?)"
            )
        return spe

    def _start_run(
        self, phase: PhaseSpec, pos: _Position | None, loader: Any, spe: int, trainable: list[nn.Parameter]
    ) -> _PhaseRun:
        """Everything the phase's steps share: lr schedule, optimiser and scaler (restored when resuming), the
        model the step calls (DDP on several ranks), the batch shuffle, the loss checks and the meter."""
        cfg, world = self.cfg, self.dist.world_size
        schedule = build_schedule(
            cfg.optim, cfg.train.batch_size * world, spe, phase.lr_epochs or phase.epochs, cross=phase.cross
        )
        opt = build_optimizer(cfg.optim, trainable)
        scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp is C.Amp.fp16)
        start_epoch = start_step = 0
        if pos is not None:
            saved_spe = (pos.state or {}).get("steps_per_epoch", spe)
            if saved_spe != spe and pos.step != 0:
                raise ResumeError(
                    f"checkpoint {pos.src} stopped mid-epoch with {saved_spe} steps per epoch, this run has {spe} "
                    "(another world size, batch size or schedule.steps_per_epoch): resume with the old settings"
                )
            if pos.optimizer is not None:
                opt.load_state_dict(pos.optimizer)
            if pos.scaler is not None:
                scaler.load_state_dict(pos.scaler)
            start_epoch, start_step = pos.epoch, pos.step
        model: nn.Module = self.method  # its forward is Method.loss
        if world > 1:
            model = DDP(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,  # queues are per rank; BN statistics stay local as in MoCo/SwAV
            )
        return _PhaseRun(
            phase=phase,
            loader=loader,
            spe=spe,
            trainable=trainable,
            schedule=schedule,
            opt=opt,
            scaler=scaler,
            model=model,
            shuffle=make_batch_shuffle(cfg, self.method, phase, world),
            epoch_offset=self._epoch_offset(phase),
            start_epoch=start_epoch,
            start_step=start_step,
        )

    def _run_epochs(self, run: _PhaseRun) -> None:
        """The phase's epochs from where it starts; a resumed epoch skips the batches trained on before."""
        for epoch in range(run.start_epoch, run.phase.epochs):
            run.loader.set_epoch(run.epoch_offset + epoch)
            it = iter(run.loader)
            first = run.start_step if epoch == run.start_epoch else 0
            for _ in range(first):  # the batches trained on before the checkpoint
                next(it)
            for step in range(first, run.spe):
                self._train_step(run, it, epoch, step)

    def _train_step(self, run: _PhaseRun, it: Iterator[Batch], epoch: int, step: int) -> None:
        """One step of the phase: the batch, the step's seed and lr, the optimisation step, then logging,
        checkpoints and a requested stop."""
        cfg, phase, spe = self.cfg, run.phase, run.spe
        t0 = time.perf_counter()
        with nvtx_range("data", cfg.profile.nvtx):
            try:
                batch = next(it)
            except StopIteration:
                raise RuntimeError(
                    f"phase {phase.name}: the loader ended after {step} of its {spe} steps"
                ) from None
        wait = time.perf_counter() - t0
        gstep = epoch * spe + step
        state = StepState(phase, epoch, step, gstep, spe)
        log_now = (gstep + 1) % cfg.train.log_every_steps == 0 or gstep == run.total - 1
        self.profiler.step(self.run_step)
        torch.manual_seed(derive_seed(cfg.train.seed, self.dist.rank, phase.name, gstep))
        if run.shuffle is not None:
            run.shuffle.set_step(phase.name, gstep)
        lr = run.schedule(gstep)
        set_lr(run.opt, lr)
        losses, gnorm = self._step(
            run.model, run.opt, run.scaler, run.trainable, batch, state, run.tracker, log_now
        )
        self.run_step += 1
        run.meter.add(
            wait, batch.batch_size * sum(len(v) for v in batch.views.values()) * self.dist.world_size
        )
        self.logger.advance()
        if log_now:
            self._check_finite(run.tracker, phase, spe)
            self._log(phase, losses, lr, gnorm, run.meter, state)
        self._after_step(run, state, log_now)

    def _after_step(self, run: _PhaseRun, state: StepState, log_now: bool) -> None:
        """A periodic checkpoint, the step hook, and a requested stop (a checkpoint, then TrainingStopped)."""
        phase, gstep = run.phase, state.global_step
        nxt_epoch, nxt_step = (
            (state.epoch + 1, 0) if state.step + 1 == run.spe else (state.epoch, state.step + 1)
        )
        every = self.cfg.train.ckpt_every_steps
        if every > 0 and (gstep + 1) % every == 0 and gstep + 1 < run.total:
            self._check_finite(run.tracker, phase, run.spe)
            self._save(phase, nxt_epoch, nxt_step, run.opt.state_dict(), run.scaler.state_dict(), run.spe)
        if self.step_hook is not None:
            self.step_hook(phase, state)
        if gstep + 1 < run.total and self._should_stop(log_now):
            self._check_finite(run.tracker, phase, run.spe)
            self._save(phase, nxt_epoch, nxt_step, run.opt.state_dict(), run.scaler.state_dict(), run.spe)
            raise TrainingStopped(
                f"stopped on request in phase {phase.name} after step {gstep}; checkpoint "
                f"{ckpt.latest_path(self.out_dir)} written: run the same command again to resume"
            )

    def _epoch_offset(self, phase: PhaseSpec) -> int:
        """Loader epochs run before this phase in the whole schedule: every phase sees its own orders."""
        phases = self.method.phases()
        return sum(p.epochs for p in phases[: phases.index(phase)])

    def _step(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        trainable: list[nn.Parameter],
        batch: Batch,
        state: StepState,
        tracker: _FiniteTracker,
        want_gnorm: bool,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """One optimisation step; returns the detached loss terms and (on log steps) the gradient norm."""
        nvtx = self.cfg.profile.nvtx
        with (
            nvtx_range("forward", nvtx),
            torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ),
        ):
            losses = model(batch, state)
        if "loss" not in losses:
            raise KeyError(
                f"phase {state.phase.name}: Method.loss must return a 'loss' term (got {list(losses)})"
            )
        tracker.track(losses, state.global_step)
        if not self.method.takes_step(state):  # e.g. CoCLR's co-training while its queue fills
            opt.zero_grad(set_to_none=True)
            self.method.after_step(state)
            return {k: v.detach() for k, v in losses.items()}, (torch.zeros(()) if want_gnorm else None)
        self.method.before_backward(losses, state)
        with nvtx_range("backward", nvtx):
            scaler.scale(losses["loss"]).backward()
        if scaler.is_enabled():
            scaler.unscale_(opt)
        self.method.after_backward(state)
        gnorm = grad_norm(trainable) if want_gnorm else None
        with nvtx_range("optimizer", nvtx):
            if scaler.is_enabled():
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            self.method.after_step(state)
        return {k: v.detach() for k, v in losses.items()}, gnorm

    # ------------------------------------------------------------------------------------------ helpers
    def _check_finite(self, tracker: _FiniteTracker, phase: PhaseSpec, spe: int) -> None:
        bad = tracker.bad()
        if self.dist.distributed:
            # every rank checks at the same steps; agree on the first bad step so that all ranks stop together
            import torch.distributed as dist

            never = 1 << 62
            first = torch.tensor([bad[0] if bad else never], dtype=torch.long, device=self.device)
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
            if int(first) == never:
                return
            if bad is None or bad[0] != int(first):
                bad = (int(first), {"(on another rank)": float("nan")})
        if bad is None:
            return
        step, terms = bad
        last = ckpt.latest_path(self.out_dir)
        kept = f"last good checkpoint kept: {last}" if last.is_file() else "no checkpoint was written yet"
        shown = ", ".join(f"{k}={v}" for k, v in terms.items())
        raise NonFiniteLossError(
            f"non-finite loss in phase {phase.name} at step {step} (epoch {step // spe}, step {step % spe}): "
            f"{shown}; {kept}"
        )

    def _log(
        self,
        phase: PhaseSpec,
        losses: dict[str, torch.Tensor],
        lr: float,
        gnorm: torch.Tensor | None,
        meter: Meter,
        state: StepState,
    ) -> None:
        clips_s, wait_pct = meter.read()
        meter.reset()
        values = {k: float(v.float().mean()) for k, v in losses.items()}
        values.update(lr=lr, clips_per_s=clips_s, data_wait_pct=wait_pct)
        values.update(self.method.log_values(state))
        if gnorm is not None:
            values["grad_norm"] = float(gnorm)
        if self.device.type == "cuda":
            values["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        postfix = {
            "loss": f"{values['loss']:.4f}",
            "lr": f"{lr:.3g}",
            "clips/s": f"{clips_s:.1f}",
            "wait": f"{wait_pct:.0f}%",
        }
        self.logger.scalars(phase.name, values, self.run_step, postfix)

    def _save(
        self,
        phase: PhaseSpec,
        epoch: int,
        step: int,
        optimizer: dict | None,
        scaler: dict | None,
        steps_per_epoch: int,
        phase_end: bool = False,
    ) -> None:
        if self.dist.distributed:
            # Buffers (feature queues, BN statistics) differ per rank: each rank keeps its own beside last.pt,
            # written before it, named by the run step so that last.pt always finds the matching set.
            if not self.dist.is_main:
                resume.save_rank_buffers(self.out_dir, self.dist.rank, self.run_step, self.method)
            barrier()
        if self.dist.is_main:
            state = {
                "config": C.to_dict(self.cfg),
                "method": _to_cpu(dict(self.method.state_dict())),
                "phase": phase.name,
                "epoch": epoch,
                "step": step,
                "optimizer": _to_cpu(optimizer),
                "scaler": scaler,
                "rng": resume.capture_rng(),
                "completed": list(self.completed),
                "global_step": self.run_step,
                "steps_per_epoch": steps_per_epoch,
                # the loader epoch the position falls in (set_epoch argument): order and augmentations follow it
                "loader_epoch": self._epoch_offset(phase) + min(epoch, phase.epochs - 1),
            }
            ckpt.save(ckpt.latest_path(self.out_dir), state, keep_previous=ckpt.previous_path(self.out_dir))
            if phase_end:
                ckpt.save(ckpt.phase_path(self.out_dir, phase.name), state)
        barrier()
        if self.dist.distributed and not self.dist.is_main:
            resume.prune_rank_buffers(self.out_dir, self.dist.rank, keep=self.run_step)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# ------------------------------------------------------------------------------------------ results
def _flatten(d: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}/" if isinstance(v, dict) else f"{prefix}{k}"))
    elif isinstance(d, int | float):
        out[prefix.rstrip("/")] = float(d)
    return out


def format_metrics(res: dict) -> str:
    flat = _flatten(res)
    return ", ".join(f"{k} {v:.3f}" for k, v in flat.items()) if flat else "(no metrics)"


def results_table(results: dict[str, dict], method: Method) -> str:
    """The summary table: the rows the method names for its phases (``Method.result_rows``, e.g. ViCC's RGB-1,
    Flow-1, RGB-2, Flow-2 and R+F) in its order (``Method.table_rows``), one column per metric.

    A phase's metrics are eval.retrieval.evaluate_phase's flat ``{"rgb/R@1": .., "flow/R@1": .., "rf_sum/R@1": ..}``:
    a stream's row takes that stream's numbers, the fused row ``rf_sum``'s when the evaluation has them; a row
    named again by a later phase takes the later numbers (with two cycles, R+F is the end of the last flow
    alternation, i.e. RGB-2 + Flow-2). Unreported phases (earlier cycles) are left out of the table (their
    numbers are in results.json).
    """
    rows: dict[str, dict[str, float]] = {}
    for phase in method.phases():
        entry = results.get(phase.name)
        if entry is None:
            continue
        flat = _flatten(entry.get("metrics", {}))
        for group, label in method.result_rows(phase).items():
            if group in {s.value for s in C.Stream}:
                rows[label] = _prefixed(flat, group) or {k: v for k, v in flat.items() if "/" not in k}
            elif _prefixed(flat, group):
                rows[label] = _prefixed(flat, group)
    if not rows:
        return "(no evaluation results)"
    preferred = list(method.table_rows())
    labels = [x for x in preferred if x in rows] + [x for x in rows if x not in preferred]
    cols: list[str] = []
    for lab in labels:
        cols += [c for c in rows[lab] if c not in cols]
    w = max(8, *(len(x) for x in labels))
    lines = [f"{'':<{w}}  " + "  ".join(f"{c:>8}" for c in cols)]
    for lab in labels:
        cells = [f"{rows[lab][c]:8.2f}" if c in rows[lab] else f"{'-':>8}" for c in cols]
        lines.append(f"{lab:<{w}}  " + "  ".join(cells))
    return "\n".join(lines)


def _prefixed(flat: dict[str, float], prefix: str) -> dict[str, float]:
    return {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(prefix + "/")}
