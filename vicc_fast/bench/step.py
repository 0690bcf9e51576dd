"""Training-step benchmark: clips/s and where a step's time goes, beside the conventional baseline.

``python -m vicc_fast.bench step [--backbone tiny,s3d] [--clip 8x2,32x1] [--batch 8] [--amp off,bf16]
[--channels-last on,off] [--compile off,on] [--phase rgb1,cross] [key=value ...] --json OUT``

Every point of the grid is measured twice in the same process: the **fast** path (``data.backend=dali``, the loss
head on ``kernels.backend`` = auto: Triton on GPU) and the **baseline** (``data.backend=torch``: a PyTorch
DataLoader over the same shards, ``kernels.backend=torch``: the eager loss head), and each figure is given with
the ratio fast / baseline. The step is the engine's own (:meth:`vicc_fast.engine.trainer.Trainer._step`: autocast
forward -> ``Method.loss`` -> backward -> optimiser), timed at these boundaries:

- ``data_wait``: ``next(loader)`` (on GPU the DALI batch is already on the device; the DataLoader batch includes
  its copy);
- ``forward``: time inside the encoders, projection heads and prototype layers (module hooks);
- ``loss_head``: the rest of ``Method.loss``: queue scoring + Sinkhorn (``kernels.assign``), the swapped loss,
  the enqueue and the method's logged diagnostics;
- ``backward``: from the end of the forward to the optimiser step (includes the loss-term finiteness tracking
  and, for fp16, the GradScaler unscale);
- ``optimizer``: LARS step, zero_grad and ``Method.after_step`` (prototype re-normalisation).

On CUDA every boundary synchronises the device (that is what makes a split possible), so the breakdown pass
slightly understates overlap; ``clips_per_s`` comes from a second pass with no synchronisation inside the step.
On CPU there is nothing to overlap and one pass gives both. A "clip" is one view of one video of one stream
(the unit the engine's progress bar counts); ``videos_per_s`` is clips/s divided by the views per video.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vicc_fast import config as C
from vicc_fast.bench.common import BenchError

PARTS = ("data_wait", "forward", "loss_head", "backward", "optimizer")
# The paper's settings (K=300, queue 1920, 3 Sinkhorn iterations, LARS, batch shuffle): the loss head and the
# optimiser are benchmarked as they train; the grid overrides backbone, clip, crop, batch, AMP, memory format.
BENCH_CONFIG = C.CONFIG_DIR / "ucf101_s3d.yaml"

# ----------------------------------------------------------------------------------------------- CLI


def _csv(kind: type = str):
    def parse(text: str) -> list:
        return [kind(x) for x in text.split(",") if x]

    return parse


def _onoff(text: str) -> list[bool]:
    out = []
    for x in text.split(","):
        if x not in ("on", "off"):
            raise argparse.ArgumentTypeError(f"expected on/off values, got {x!r}")
        out.append(x == "on")
    return out


def _clips(text: str) -> list[tuple[int, int]]:
    out = []
    for x in text.split(","):
        t, _, s = x.partition("x")
        try:
            out.append((int(t), int(s or 1)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--clip wants TxS (frames x stride), got {x!r}") from None
    return out


PAPER_GRID = {  # the papers' training shapes: S3D 32x1 and R(2+1)D 16x2 at 128 px, batch 48 per GPU
    "backbone": ["s3d", "r21d"],
    "clip": [(32, 1), (16, 2)],
    "crop": 128,
    "batch": [48],
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "overrides",
        nargs="*",
        help="config overrides key=value applied to every grid point (e.g. data.root=DIR data.threads=2); "
        "without data.root the default demo's synthetic shards are read (built when missing)",
    )
    p.add_argument(
        "--config", default=None, help="YAML config to start from (default: configs/synthetic_demo.yaml)"
    )
    p.add_argument(
        "--paper",
        action="store_true",
        help="paper shapes: S3D 32x1 and R(2+1)D 16x2 (paired), 128 px, batch 48 (hours per point on a CPU)",
    )
    p.add_argument(
        "--backbone", type=_csv(), default=["tiny"], help="backbones, comma-separated (s3d,r21d,r3d,tiny)"
    )
    p.add_argument(
        "--clip",
        type=_clips,
        default=[(8, 2)],
        help="clip shapes TxS (frames x temporal stride), comma-separated; paired with --backbone when the two "
        "lists have the same length > 1, else crossed",
    )
    p.add_argument("--crop", type=int, default=64, help="spatial crop size of the training views")
    p.add_argument("--batch", type=_csv(int), default=[8], help="clips per rank per step, comma-separated")
    p.add_argument("--amp", type=_csv(), default=["off"], help="AMP modes, comma-separated (off,bf16,fp16)")
    p.add_argument("--channels-last", type=_onoff, default=[True], help="channels_last_3d: on,off")
    p.add_argument("--compile", type=_onoff, default=[False], help="torch.compile the encoders: on,off")
    p.add_argument(
        "--phase",
        type=_csv(),
        default=["rgb1"],
        help="phases: rgb1|flow1 (single-stream, 2 views) or cross (2 views of each stream, frozen teacher)",
    )
    p.add_argument("--queue", type=_onoff, default=[True], help="feature queue in use (filled): on,off")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed steps before timing (compile, allocator, DALI)"
    )
    p.add_argument(
        "--repeats", type=int, default=1, help="measurements per point; the best (fastest) is kept"
    )
    p.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the baseline (DataLoader + eager loss head) measurement",
    )
    p.add_argument(
        "--input",
        choices=("loader", "memory"),
        default="loader",
        help="loader: the configured input pipeline; memory: one random batch reused (compute only, no data)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="training device")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch intra-op threads of the training process (0 = torch's default). On a small shared CPU, 1 "
        "avoids OpenMP threads spinning against DALI's threads and other processes",
    )


# ----------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepTimer:
    """Accumulates the step parts from module, forward and optimiser hooks (see the module docstring)."""

    device: torch.device
    enabled: bool = True
    parts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    _t: dict[str, float] = field(default_factory=dict)
    _depth: int = 0
    _compute: float = 0.0

    def now(self) -> float:
        if self.enabled:
            _sync(self.device)
        return time.perf_counter()

    # the whole Method.loss (the method's forward, in DDP when several ranks)
    def loss_pre(self, *_: Any) -> None:
        self._compute = 0.0
        self._t["loss"] = self.now()

    def loss_post(self, *_: Any) -> None:
        t = self.now()
        total = t - self._t["loss"]
        self.parts["forward"] += self._compute
        self.parts["loss_head"] += total - self._compute
        self._t["backward"] = t

    # network modules inside the loss: encoders, heads, prototypes (outermost calls only)
    def net_pre(self, *_: Any) -> None:
        if self._depth == 0:
            self._t["net"] = self.now()
        self._depth += 1

    def net_post(self, *_: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._compute += self.now() - self._t["net"]

    def opt_pre(self, *_: Any) -> None:
        t = self.now()
        self.parts["backward"] += t - self._t.get("backward", t)
        self._t["opt"] = t

    def step_end(self) -> None:
        self.parts["optimizer"] += self.now() - self._t["opt"]


def _network_modules(method: nn.Module) -> list[nn.Module]:
    """Encoders, projection heads and prototype layers of a method (the 'forward' of the breakdown)."""
    mods: list[nn.Module] = list(method.encoders().values())
    for name in ("nets", "protos"):
        sub = getattr(method, name, None)
        if isinstance(sub, nn.ModuleDict):
            for m in sub.values():
                head = getattr(m, "head", None)
                mods.append(head if isinstance(head, nn.Module) else m)
    seen: set[int] = set()
    return [m for m in mods if not (id(m) in seen or seen.add(id(m)))]


# ----------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Point:
    backbone: str
    frames: int
    stride: int
    crop: int
    batch: int
    amp: str
    channels_last: bool
    compile: bool
    phase: str
    queue: bool

    def overrides(self) -> list[str]:
        return [
            f"model.backbone={self.backbone}",
            f"data.num_frames={self.frames}",
            f"data.stride={self.stride}",
            f"data.crop_size={self.crop}",
            f"train.batch_size={self.batch}",
            f"train.amp='{self.amp}'",  # quoted: YAML reads a bare off as false
            f"train.channels_last={str(self.channels_last).lower()}",
            f"train.compile={str(self.compile).lower()}",
        ]


def grid(args: argparse.Namespace) -> list[Point]:
    backbones, clips, crop, batches = args.backbone, args.clip, args.crop, args.batch
    if args.paper:
        backbones, clips, crop, batches = (PAPER_GRID[k] for k in ("backbone", "clip", "crop", "batch"))
    pairs = (
        list(zip(backbones, clips))
        if len(backbones) == len(clips) > 1
        else list(itertools.product(backbones, clips))
    )
    pts = []
    for (bb, (t, s)), b, amp, cl, comp, ph, q in itertools.product(
        pairs, batches, args.amp, args.channels_last, args.compile, args.phase, args.queue
    ):
        pts.append(Point(bb, t, s, crop, b, amp, cl, comp, ph, q))
    return pts


def pick_phase(method: Any, which: str) -> Any:
    """rgb1 / flow1 by name; cross = the first phase with a frozen stream."""
    for p in method.phases():
        if (which == "cross" and p.frozen_stream is not None) or p.name == which:
            return p
    raise BenchError(f"--phase {which}: the method has phases {[p.name for p in method.phases()]}")


def step_state(phase: Any, queue: bool) -> Any:
    """A StepState in the steady state of the phase: prototypes trainable, queue on (or off) as asked (a phase
    without a queue or prototype schedule, e.g. CoCLR's: its first epoch)."""
    from vicc_fast.methods.base import StepState
    from vicc_fast.methods.common import SwavPhase

    freeze, qstart = (
        (phase.freeze_prototypes_epochs, phase.queue_start_epoch) if isinstance(phase, SwavPhase) else (0, 0)
    )
    epoch = max(freeze, qstart if queue else 0)
    if not queue and epoch >= qstart > 0:
        epoch = qstart - 1
    epoch = min(epoch, max(phase.epochs - 1, 0))
    return StepState(phase=phase, epoch=epoch, step=0, global_step=0, steps_per_epoch=1)


def memory_batches(cfg: C.Config, phase: Any, device: torch.device) -> Iterator[Any]:
    """One random batch of the phase's shape, reused forever (``--input memory``)."""
    from vicc_fast.data.batch import Batch

    B, T, S = cfg.train.batch_size, cfg.data.num_frames, cfg.data.crop_size
    g = torch.Generator().manual_seed(0)
    views = {
        s: [
            torch.randn(B, 3, T, S, S, generator=g)
            .to(device)
            .contiguous(memory_format=torch.channels_last_3d)
            for _ in range(phase.num_views)
        ]
        for s in phase.streams
    }
    batch = Batch(views=views, label=torch.zeros(B, dtype=torch.long), index=torch.arange(B))
    while True:
        yield batch


def prefill_queue(method: Any, dim: int, device: torch.device) -> None:
    """Fill the method's feature queue (if it has one) with random unit rows, as in the steady state."""
    q = getattr(method, "queue", None)
    if q is None or not hasattr(q, "push") or getattr(q, "length", 0) == 0:
        return
    V = q.queue.shape[0]
    z = torch.nn.functional.normalize(torch.randn(V, q.length, dim, device=device), dim=-1)
    q.push(z)


def measure(
    cfg: C.Config,
    point: Point,
    *,
    steps: int,
    warmup: int,
    input_mode: str,
    dist_info: Any = None,
    breakdown: bool = True,
    profile_step: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Build method, engine step and input for ``cfg``; time ``steps`` steps after ``warmup``; return figures.

    ``profile_step``: a factory of a context manager (e.g. a torch.profiler.profile) entered around each timed
    step (the engine step, not the input); the entered objects are returned under ``"profilers"``.
    """
    from vicc_fast.engine import trainer as T
    from vicc_fast.engine.distributed import DistInfo
    from vicc_fast.engine.optim import build_optimizer, set_lr
    from vicc_fast.methods import build_method

    info = dist_info or DistInfo(device=_device(cfg))
    device = info.device
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg)
    tr = T.Trainer(cfg, method, info, tensorboard=False)
    method = tr.method
    phase = pick_phase(method, point.phase)
    method.train()
    method.setup_phase(phase)
    trainable = method.trainable_parameters(phase)
    ids = {id(p) for p in trainable}
    for p in method.parameters():
        p.requires_grad_(id(p) in ids)
    if point.queue:
        prefill_queue(method, cfg.model.proj_dim, device)
    state = step_state(phase, point.queue)
    opt = build_optimizer(cfg.optim, trainable)
    set_lr(opt, cfg.optim.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp is C.Amp.fp16)
    model: nn.Module = method
    if info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    shuffle = T.make_batch_shuffle(cfg, method, phase, info.world_size)  # as the trainer hooks it
    if input_mode == "memory":
        it: Iterator[Any] = memory_batches(cfg, phase, device)
        loader_len = None
    else:
        from vicc_fast.data.loader import build_loader

        loader = build_loader(
            cfg, "train", "train", phase.streams, phase.num_views, info.rank, info.world_size, device
        )
        loader_len = len(loader)
        it = _cycle(loader)
    tracker = T._FiniteTracker()

    timer = StepTimer(device, enabled=breakdown)
    handles = [model.register_forward_pre_hook(timer.loss_pre), model.register_forward_hook(timer.loss_post)]
    for m in _network_modules(method):
        # prepend: the timer starts before (and, registered last, stops after) the batch-shuffle hooks, so the
        # cross-rank gathers of the batch shuffle count as forward time
        handles += [
            m.register_forward_pre_hook(timer.net_pre, prepend=True),
            m.register_forward_hook(timer.net_post),
        ]
    handles.append(opt.register_step_pre_hook(timer.opt_pre))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clips_per_step = point.batch * sum(phase.num_views for _ in phase.streams)
    try:
        profiled: list[Any] = []
        t_first = time.perf_counter()
        first_wait = 0.0
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                timer.parts = dict.fromkeys(PARTS, 0.0)
                t_start = time.perf_counter()
            t0 = timer.now()
            batch = next(it)
            if batch.views[phase.streams[0]][0].device != device:
                batch = batch.to(device)
            wait = timer.now() - t0
            if i == 0:
                first_wait = time.perf_counter() - t_first
            timer.parts["data_wait"] += wait
            if shuffle is not None:
                shuffle.set_step(phase.name, i)
            with profile_step() if (profile_step is not None and i >= warmup) else _null() as prof:
                tr._step(model, opt, scaler, trainable, batch, state, tracker, False)
            if prof is not None:
                profiled.append(prof)
            timer.step_end()
        _sync(device)
        wall = time.perf_counter() - t_start
    finally:
        for h in handles:
            h.remove()
        if shuffle is not None:
            shuffle.remove()
    bad = tracker.bad()
    per_step = {k: 1000.0 * v / steps for k, v in timer.parts.items()}
    step_ms = 1000.0 * wall / steps
    per_step["other"] = step_ms - sum(per_step.values())
    out: dict[str, Any] = {
        "step_ms": step_ms,
        "clips_per_s": clips_per_step * steps * info.world_size / wall,
        "clips_per_s_per_rank": clips_per_step * steps / wall,
        "videos_per_s": point.batch * steps * info.world_size / wall,
        "breakdown_ms": per_step,
        "data_wait_pct": 100.0 * per_step["data_wait"] / step_ms,
        "loss_head_pct": 100.0 * per_step["loss_head"] / step_ms,
        "first_batch_s": first_wait,
        "views_per_video": clips_per_step // point.batch,
        "loader_steps_per_epoch": loader_len,
        "finite": bad is None,
        "kernels_backend_resolved": _resolved_backend(cfg, device),
    }
    if profiled:
        out["profilers"] = profiled
    if device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        out["peak_rss_mb_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del it, model, method, opt
    gc.collect()
    return out


@contextlib.contextmanager
def _null() -> Iterator[None]:
    yield None


def _cycle(loader: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _resolved_backend(cfg: C.Config, device: torch.device) -> str:
    import kernels

    return kernels.resolve_backend(cfg.kernels.backend.value, torch.empty(0, device=device))


def _device(cfg: C.Config) -> torch.device:
    from vicc_fast.engine.distributed import resolve_device

    return resolve_device(cfg.train.device)


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest of repeated measurements (the machine is shared: slower repeats are interference)."""
    best = min(runs, key=lambda r: r["step_ms"])
    return {**best, "repeats_step_ms": [round(r["step_ms"], 2) for r in runs]}


def ratios(fast: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    """fast / baseline for throughput (> 1 is better), baseline / fast for times (> 1 is better)."""
    out = {"clips_per_s": fast["clips_per_s"] / base["clips_per_s"]}
    for k in PARTS:
        f, b = fast["breakdown_ms"][k], base["breakdown_ms"][k]
        out[f"{k}_speedup"] = b / f if f > 0 else float("inf")
    return out


FAST = ["data.backend=dali"]
BASELINE = ["data.backend=torch", "kernels.backend=torch"]


def demo_data_overrides(overrides: list[str]) -> list[str]:
    """Without a ``data.root=`` override, read the default demo's synthetic shards (built when missing, with the
    demo's synthetic settings), so that ``python -m vicc_fast.bench step`` runs out of the box."""
    if any(o.startswith("data.root=") for o in overrides):
        return []
    demo = C.load(C.DEFAULT_CONFIG)
    syn = C.to_dict(demo)["data"]["synthetic"]
    return [f"data.root={demo.data.root}", "data.build_if_missing=true"] + [
        f"data.synthetic.{k}={v}" for k, v in syn.items()
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    base_overrides = [
        "data.require_recipe=none",  # a throughput benchmark reads whatever set it is given (the paper shape)
        *(demo_data_overrides(args.overrides) if args.input == "loader" else []),
        *args.overrides,
        f"train.device={args.device}",
        "train.progress=false",
    ]
    path = args.config or BENCH_CONFIG
    rows = []
    for point in grid(args):
        variants = {"fast": FAST} if args.no_baseline else {"fast": FAST, "baseline": BASELINE}
        row: dict[str, Any] = {"point": point.__dict__.copy()}
        for name, extra in variants.items():
            cfg = C.load(path, [*base_overrides, *point.overrides(), *extra])
            if args.input == "loader":
                from vicc_fast.train import ensure_data

                ensure_data(cfg, True)
            breakdown_runs = [
                measure(cfg, point, steps=args.steps, warmup=args.warmup, input_mode=args.input)
                for _ in range(max(1, args.repeats))
            ]
            res = best_of(breakdown_runs)
            if _device(cfg).type == "cuda":  # throughput without the breakdown's synchronisations
                thr = best_of(
                    [
                        measure(
                            cfg,
                            point,
                            steps=args.steps,
                            warmup=args.warmup,
                            input_mode=args.input,
                            breakdown=False,
                        )
                        for _ in range(max(1, args.repeats))
                    ]
                )
                res["clips_per_s_breakdown_pass"] = res["clips_per_s"]
                res["clips_per_s"] = thr["clips_per_s"]
                res["clips_per_s_per_rank"] = thr["clips_per_s_per_rank"]
                res["videos_per_s"] = thr["videos_per_s"]
            res["config"] = {
                "data.backend": cfg.data.backend.value,
                "data.threads": cfg.data.threads,
                "kernels.backend": cfg.kernels.backend.value,
                "input": args.input,
                "overrides": [*base_overrides, *point.overrides(), *extra],
            }
            row[name] = res
            _print_line(point, name, res)
        if "baseline" in row:
            row["ratio"] = ratios(row["fast"], row["baseline"])
        rows.append(row)
    return {
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "input": args.input,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
        "goals": {
            "data_wait_pct_below": 2.0,
            "loss_head_pct_below": 1.0,
            "clips_per_s_ratio_at_least": 3.0,
        },
    }


def _print_line(point: Point, name: str, r: dict[str, Any]) -> None:
    b = r["breakdown_ms"]
    parts = " ".join(f"{k}={b[k]:.1f}" for k in (*PARTS, "other"))
    print(
        f"[step] {point.backbone} {point.frames}x{point.stride} b{point.batch} {point.amp} "
        f"cl={'on' if point.channels_last else 'off'} compile={'on' if point.compile else 'off'} {point.phase} "
        f"{name:8s}: {r['clips_per_s']:.1f} clips/s, step {r['step_ms']:.1f} ms ({parts}) "
        f"repeats {r['repeats_step_ms']}",
        flush=True,
    )
