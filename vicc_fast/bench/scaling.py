"""Data-parallel scaling: the engine's training step on 1, 2, 4 ranks, and the communication each step does.

``python -m vicc_fast.bench scaling [--ranks 1,2,4] [--backend gloo|nccl] [step options] [key=value ...]
--json OUT``

Each world size runs in fresh processes (a local process group on 127.0.0.1, gloo on CPU, NCCL on GPUs) through
the same code as ``vicc_fast.bench step`` (DDP, batch shuffle, Sinkhorn sums reduced across ranks), with the
per-rank batch fixed (weak scaling, as when GPUs are added). Reported per world size W:

- ``clips_per_s`` (all ranks) and ``clips_per_s_per_rank``;
- ``efficiency_per_rank`` = clips/s(W) / (W x clips/s(1)): 1.0 is perfect scaling;
- ``throughput_vs_1`` = clips/s(W) / clips/s(1). On a CPU the ranks share the machine's cores: with
  ``--threads-per-rank 1`` (default) per-rank efficiency is meaningful up to W = cores, beyond that the ranks
  time-share cores and efficiency falls as cores / W even with free communication;
- ``collectives``: every c10d collective of one step on rank 0, recorded with torch.profiler (calls and bytes per
  kind), beside ``model``: the analytic sizes of :func:`comm_model` (see BENCHMARKS.md for the write-up).

Default input is ``--input memory`` (one random batch reused), which isolates compute and communication from
the input pipeline (with W DALI pipelines on the same two cores, decoding would dominate every figure).
"""

from __future__ import annotations

import argparse
import os
import traceback
from typing import Any

import torch

from vicc_fast import config as C
from vicc_fast.bench import step as S
from vicc_fast.bench.common import BenchError
from vicc_fast.engine.distributed import free_port
from vicc_fast.owner import exit_with_owner


def add_arguments(p: argparse.ArgumentParser) -> None:
    S.add_arguments(p)
    p.set_defaults(input="memory", no_baseline=True, steps=5, warmup=2)
    p.add_argument("--ranks", type=S._csv(int), default=[1, 2, 4], help="world sizes, comma-separated")
    p.add_argument(
        "--threads-per-rank",
        type=int,
        default=1,
        help="torch threads of each rank (0 = cores // world). 1 keeps every world size on equal terms per rank: "
        "per-rank efficiency is then meaningful up to world = cores; above, ranks share cores",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "gloo", "nccl"),
        default="auto",
        help="process group backend (auto: nccl on GPU)",
    )
    p.add_argument(
        "--no-profile", action="store_true", help="skip the profiled step that records the collectives"
    )


# --------------------------------------------------------------------------------------------- the model


def comm_model(
    cfg: C.Config,
    phase: Any,
    world: int,
    trainable_params: int,
    feature_dim: int,
    kernel_backend: str = "torch",
) -> dict[str, Any]:
    """Analytic collectives of one ViCC training step on ``world`` ranks, as the tensor sizes each rank hands
    to the collective (what torch.profiler records as the op's input; fp32 throughout).

    - Sinkhorn (``kernels.assign`` over the global batch): per iteration one MAX and one SUM all_reduce of the
      per-prototype column statistics [V, K] -> 2 x n_iters all_reduce calls of V*K*4 bytes (the Triton kernel
      reduces its [V, BLOCK_K] partials, K padded to a power of two >= 16: 512 columns for K = 300).
    - Batch shuffle (with ``train.batch_shuffle_views=second``, the paper configs', the views after the first
      only: V below is then V - 1) (MoCo style, forward hooks around the trainable encoder, one call on the V*B concatenated
      views): an uneven all_to_all of this rank's input clips [V*B, 3, T, H, W] (each row goes to the rank whose
      slice of the permuted global batch holds it) and one of its features [V*B, F] back; in backward only the
      features' gradient travels (the clips need no gradient), by the reverse all_to_all of [V*B, F]. Each call
      hands the collective all V*B rows (torch.profiler records that size); the rows kept on this rank do not
      cross the network, so with a uniform random permutation a rank sends and receives (W-1)/W of them on
      average: per-rank traffic constant in W. The frozen stream runs in eval mode and is not shuffled.
    - DDP: all_reduce of every trainable gradient, bucketed (25 MiB buckets).
    A ring all_reduce moves ~2(W-1)/W x its size per rank.
    """
    if world <= 1:
        return {"world": world, "all_reduce_bytes": 0, "all_gather_bytes": 0, "all_to_all_bytes": 0}
    V_train = phase.num_views
    V_all = phase.num_views * len(phase.streams)
    K, iters, B = cfg.model.num_prototypes, cfg.method.swav.sinkhorn_iters, cfg.train.batch_size
    T, H = cfg.data.num_frames, cfg.data.crop_size
    width = max(16, 1 << (K - 1).bit_length()) if kernel_backend == "triton" else K
    sinkhorn = {
        "calls": 2 * iters,
        "bytes_per_call": V_all * width * 4,
        "bytes": 2 * iters * V_all * width * 4,
    }
    shuffle: dict[str, Any] = {"all_to_all_bytes": 0, "all_reduce_bytes": 0}
    if cfg.train.batch_shuffle and not cfg.train.sync_bn:
        # the shuffled views: every one, or (train.batch_shuffle_views=second, the paper configs: released
        # pretrain.py) every view after the first; one shuffled forward per view (train.bn_per_view) or one for all
        V_sh = V_train - 1 if cfg.train.batch_shuffle_views is C.ShuffleViews.second else V_train
        clips = V_sh * B * 3 * T * H * H * 4
        feats = V_sh * B * feature_dim * 4
        forwards = V_sh if cfg.train.bn_per_view else 1
        shuffle = {
            # per shuffled forward: clips there, features back, features' gradient there again
            "all_to_all_calls": 3 * forwards,
            "all_to_all_bytes": clips + 2 * feats,
            # expected bytes leaving (and, by symmetry, arriving at) a rank: the rows that change rank
            "all_to_all_sent_bytes": (world - 1) * (clips + 2 * feats) / world,
            "all_reduce_bytes": 0,
        }
    ddp = {"all_reduce_bytes": trainable_params * 4}
    return {
        "world": world,
        "sinkhorn": sinkhorn,
        "batch_shuffle": shuffle,
        "ddp_grads": ddp,
        "all_reduce_bytes": sinkhorn["bytes"] + shuffle["all_reduce_bytes"] + ddp["all_reduce_bytes"],
        "all_to_all_bytes": shuffle["all_to_all_bytes"],
        "all_gather_bytes": 0,  # the step issues none since the batch shuffle moved to all_to_all
    }


# --------------------------------------------------------------------------------------------- workers


def _numel(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _collectives(prof: Any) -> dict[str, dict[str, Any]]:
    """c10d collectives of a profiled step: calls, bytes (fp32-equivalent, from the recorded input shapes) and
    the shapes seen, per kind. The backend-level events (``gloo:all_reduce``...) carry the tensors' shapes."""
    out: dict[str, dict[str, Any]] = {}
    kinds = ("allreduce", "all_reduce", "allgather", "all_gather", "alltoall", "all_to_all", "reduce_scatter",
             "broadcast")  # fmt: skip
    for ev in prof.events():
        low = ev.name.lower()
        if not low.startswith(("gloo:", "nccl:", "c10d::")) or not any(k in low for k in kinds):
            continue
        shapes = []
        for shape in ev.input_shapes or []:
            if isinstance(shape, list) and shape and all(isinstance(d, int) for d in shape):
                shapes.append(tuple(shape))
            elif isinstance(shape, list):
                shapes += [
                    tuple(x) for x in shape if isinstance(x, list) and all(isinstance(d, int) for d in x)
                ]
        d = out.setdefault(ev.name, {"calls": 0, "bytes_fp32_equiv": 0, "shapes": {}})
        d["calls"] += 1
        d["bytes_fp32_equiv"] += sum(_numel(sh) * 4 for sh in shapes)
        key = " ".join(str(list(sh)) for sh in shapes) or "-"
        d["shapes"][key] = d["shapes"].get(key, 0) + 1
    return out


def _worker(rank: int, world: int, port: int, backend: str, args: argparse.Namespace, cfg_path: str,
            overrides: list[str], point: S.Point, threads: int, results: Any) -> None:  # fmt: skip
    exit_with_owner(os.getppid())  # a spawned child: its parent is the benchmark that waits for its result
    try:
        torch.set_num_threads(threads)
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank), OMP_NUM_THREADS=str(threads),
        )  # fmt: skip
        import torch.distributed as dist

        from vicc_fast.engine.distributed import DistInfo, resolve_device

        cfg = C.load(cfg_path, overrides)
        device = resolve_device(cfg.train.device, rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if world > 1:
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
        info = DistInfo(rank=rank, world_size=world, local_rank=rank, device=device)
        runs = [
            S.measure(
                cfg,
                point,
                steps=args.steps,
                warmup=args.warmup,
                input_mode=args.input,
                dist_info=info,
                breakdown=False,
            )  # fmt: skip
            for _ in range(max(1, args.repeats))
        ]
        res = S.best_of(runs)
        if world > 1 and not args.no_profile:
            res["collectives"] = _profiled_collectives(cfg, point, args, info)
        if world > 1:
            dist.destroy_process_group()
        if rank == 0:
            res["threads_per_rank"] = threads
            results.put(("ok", res))
    except Exception:
        results.put(("error", f"rank {rank}: {traceback.format_exc()}"))


def _profiled_collectives(cfg: C.Config, point: S.Point, args: argparse.Namespace, info: Any) -> dict:
    """The collectives of one engine step, recorded with torch.profiler. Two warm-up steps first: DDP
    rebuilds its gradient buckets (a one-off broadcast) during the second iteration. Three steps are recorded
    one by one and, per kind, the fullest record is kept: on a loaded CPU the profiler has been seen to drop
    a step's gloo events (never to add any)."""
    from torch.profiler import ProfilerActivity, profile

    res = S.measure(
        cfg, point, steps=3, warmup=2, input_mode=args.input, dist_info=info, breakdown=False,
        profile_step=lambda: profile(activities=[ProfilerActivity.CPU], record_shapes=True),
    )  # fmt: skip
    best: dict[str, dict[str, Any]] = {}
    for prof in res["profilers"]:
        for kind, rec in _collectives(prof).items():
            if kind not in best or rec["bytes_fp32_equiv"] > best[kind]["bytes_fp32_equiv"]:
                best[kind] = rec
    return best


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch.multiprocessing as mp

    cfg_path = str(args.config or S.BENCH_CONFIG)
    # a throughput benchmark reads whatever set it is given (data.require_recipe: the paper configs' data check)
    overrides = [
        "data.require_recipe=none",
        *args.overrides,
        f"train.device={args.device}",
        "train.progress=false",
    ]
    cores = os.cpu_count() or 1
    rows = []
    for point in S.grid(args):
        full = [*overrides, *point.overrides(), *S.FAST]
        cfg = C.load(cfg_path, full)
        on_gpu = S._device(cfg).type == "cuda"
        backend = args.backend if args.backend != "auto" else ("nccl" if on_gpu else "gloo")
        per_world: dict[int, dict[str, Any]] = {}
        for world in args.ranks:
            if on_gpu and world > torch.cuda.device_count():
                per_world[world] = {"skipped": f"{world} ranks need {world} GPUs"}
                continue
            threads = args.threads_per_rank or max(1, cores // world)
            ctx = mp.get_context("spawn")
            q = ctx.SimpleQueue()
            port = free_port()
            procs = [
                ctx.Process(
                    target=_worker, args=(r, world, port, backend, args, cfg_path, full, point, threads, q)
                )
                for r in range(world)
            ]
            for p in procs:
                p.start()
            status, res = q.get()
            for p in procs:
                p.join(timeout=120)
            if status != "ok":
                raise BenchError(res)
            res["model"] = _model_for(cfg, point, world)
            per_world[world] = res
            print(
                f"[scaling] {point.backbone} {point.frames}x{point.stride} b{point.batch} {point.phase} W={world} "
                f"({backend}, {threads} threads/rank): {res['clips_per_s']:.1f} clips/s "
                f"({res['clips_per_s_per_rank']:.1f}/rank), step {res['step_ms']:.0f} ms, repeats "
                f"{res['repeats_step_ms']}",
                flush=True,
            )
        base = per_world.get(1)
        for world, res in per_world.items():
            if base is not None and "clips_per_s" in res:
                res["throughput_vs_1"] = res["clips_per_s"] / base["clips_per_s"]
                res["efficiency_per_rank"] = res["clips_per_s"] / (world * base["clips_per_s"])
        rows.append({"point": point.__dict__.copy(), "backend": backend, "cores": cores, "worlds": per_world})
    return {
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "input": args.input,
        "rows": rows,
    }


def _model_for(cfg: C.Config, point: S.Point, world: int) -> dict[str, Any]:
    from vicc_fast.methods import build_method

    method = build_method(cfg)
    phase = S.pick_phase(method, point.phase)
    n = sum(p.numel() for p in method.trainable_parameters(phase))
    feat = next(iter(method.encoders().values())).feature_dim
    return comm_model(cfg, phase, world, n, feat, S._resolved_backend(cfg, S._device(cfg)))
