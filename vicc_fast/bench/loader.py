"""Input pipeline throughput: the DALI loader against the PyTorch DataLoader baseline on the same shards.

For each backend: time to first batch (loader construction included), steady-state samples/s and clips/s
(a sample is one video's views: with two streams and two views, 4 clips), delivered frames/s, CPU seconds
per sample (this process and its workers: the fairest figure on a shared machine), peak memory. Each backend
is run ``--repeat`` times, the backends alternating (A B A B), and the median run is reported next to all runs.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

from vicc_fast import config
from vicc_fast.config import Stream


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend", choices=["dali", "torch", "both"], default="both", help="pipeline(s) to measure"
    )
    p.add_argument(
        "--backends",
        default="",
        help="comma list of dali, torch, jpeg_lmdb (overrides --backend); jpeg_lmdb = the released ViCC/CoCLR "
        "data path (JPEG frames in LMDB, PIL, DataLoader workers; vicc_fast/bench/jpeg_lmdb.py), built from the "
        "same shards first (train mode only)",
    )
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="training device (default: cuda when present)"
    )
    p.add_argument("--batch", type=int, default=8, help="videos per batch")
    p.add_argument("--steps", type=int, default=12, help="timed steps per run (after --warmup)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first batch")
    p.add_argument(
        "--repeat", type=int, default=3, help="runs per backend, alternating; the median run is reported"
    )
    p.add_argument("--streams", default="rgb,flow", help="comma list of streams: rgb,flow | rgb | flow")
    p.add_argument("--views", type=int, default=2, help="views per stream")
    p.add_argument("--mode", choices=["train", "eval"], default="train", help="loader mode")
    p.add_argument("--root", default=None, help="shard folder (default: data.root of the config)")
    p.add_argument("--threads", type=int, default=2, help="DALI threads / DataLoader workers")
    p.add_argument(
        "--replicate",
        type=int,
        default=1,
        help="benchmark on a scratch copy of the shards with every sample repeated K times (new keys), so that "
        "a small set gives epochs long enough to measure the steady state",
    )
    p.add_argument(
        "--peer",
        default=None,
        metavar="NAME=SAMPLES_PER_S",
        help="a loader measured the same way elsewhere (same machine, clips, batch, threads), e.g. the original "
        "ViCC loader on this repo's 2-core CI machine: vicc_original=9.9 (two-stream) or 16.6 (--streams rgb); "
        "the output gives each backend's ratio to it",
    )
    p.add_argument(
        "--variants",
        nargs="*",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="measure each backend under several configurations, alternating with everything else, e.g. "
        "released:data.augment.color_jitter=released affine:data.augment.color_jitter=affine; the output gives each backend's "
        "ratio of the first variant to the others (samples/s and CPU per sample)",
    )
    p.add_argument("--config", default=None, help="YAML config (default: schema defaults)")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. data.num_frames=16"
    )


def _cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def replicate_shards(root: str, k: int) -> str:
    """A scratch shard folder holding each sample of ``root`` ``k`` times under new keys and indices
    (written with data_prep's shard writer, so the format is the real one); reused when already there."""
    import hashlib
    import json
    import tempfile
    from pathlib import Path

    from data_prep import shards

    src = Path(root)
    m = json.loads((src / "manifest.json").read_text())
    tag = hashlib.sha1(f"{src.resolve()}:{k}:{(src / 'manifest.json').stat().st_mtime}".encode()).hexdigest()[
        :10
    ]
    dst = Path(tempfile.gettempdir()) / f"vicc_bench_{tag}"
    if (dst / "manifest.json").is_file():
        return str(dst)
    out_splits = {}
    for split, sp in m["splits"].items():
        orig = [(key, mem) for sh in sp["shards"] for key, mem in shards.iter_tar_samples(src / sh["tar"])]
        n = len(orig)

        def samples(orig=orig, n=n, split=split):
            for r in range(k):
                for _key, mem in orig:
                    meta = json.loads(mem["json"])
                    i = r * n + int(meta["index"])
                    meta.update(key=shards.sample_key(split, i), index=i)
                    label = int(meta["label"])
                    yield shards.Sample(meta["key"], mem["rgb.webm"], mem["flow.webm"], label, i, meta)

        out_splits[split] = shards.write_split(dst, split, samples(), max(1, len(sp["shards"][0]["keys"])))
    manifest = shards.make_manifest(
        classes=m["classes"],
        splits=out_splits,
        video=m.get("video", {}),
        flow=m.get("flow", {}),
        settings={**m.get("settings", {}), "replicated_from": str(src), "replicate": k},
        rejected=[],
    )
    shards.write_manifest(dst, manifest)
    return str(dst)


def _run_once(
    cfg: config.Config,
    args: argparse.Namespace,
    streams: tuple[Stream, ...],
    device: torch.device,
    lmdb_root: str | None = None,
) -> dict:
    from vicc_fast.data.loader import build_loader

    split = "train" if args.mode == "train" else "test"
    try:  # reset the peak-RSS counter (VmHWM) so that each run reports its own peak
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    t0 = time.perf_counter()
    if lmdb_root is not None:
        from vicc_fast.bench.jpeg_lmdb import JpegLmdbLoader

        ld = JpegLmdbLoader(lmdb_root, cfg, streams, args.views, device)
    else:
        ld = build_loader(cfg, split, args.mode, streams, args.views, 0, 1, device)
    need = 1 + args.warmup + args.steps
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n_clips = n_samples = n_frames = 0
    first = epoch_starts = None
    t_start = cpu_start = 0.0
    step, epoch = 0, 0
    epoch_start_s: list[float] = []
    while step < need:
        ld.set_epoch(epoch)
        t_epoch = time.perf_counter()
        for i, b in enumerate(ld):
            sync()
            if i == 0 and epoch > 0:
                epoch_start_s.append(time.perf_counter() - t_epoch)
            step += 1
            if step == 1:
                first = time.perf_counter() - t0
            if step == 1 + args.warmup:
                t_start, cpu_start = time.perf_counter(), _cpu_seconds()
            elif step > 1 + args.warmup:
                clips = sum(v.shape[0] for vs in b.views.values() for v in vs)
                n_clips += clips
                n_samples += b.batch_size if args.mode == "train" else int(b.index.unique().numel())
                n_frames += clips * cfg.data.num_frames
            if step >= need:
                break
        epoch += 1
    wall = time.perf_counter() - t_start
    cpu = _cpu_seconds() - cpu_start
    epoch_starts = epoch_start_s
    out = {
        "samples_per_s": n_samples / wall,
        "clips_per_s": n_clips / wall,
        "frames_per_s": n_frames / wall,
        "cpu_s_per_sample": cpu / max(1, n_samples),
        "time_to_first_batch_s": first,
        "epoch_restart_s": epoch_starts,
        "steps_per_epoch": len(ld),
        "timed_steps": args.steps,
        "timed_wall_s": wall,
        "peak_rss_mb": _rss_mb(),
    }
    if device.type == "cuda":
        out["torch_peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    del ld
    gc.collect()
    return out


def parse_peer(text: str | None) -> tuple[str, float] | None:
    """``"vicc_original=9.9"`` -> ("vicc_original", 9.9); None stays None; anything else is a one-line error."""
    if not text:
        return None
    name, _, value = text.partition("=")
    try:
        v = float(value)
    except ValueError:
        v = -1.0
    if not name or v <= 0:
        raise SystemExit(
            f"--peer {text!r}: expected NAME=SAMPLES_PER_S with a positive rate, e.g. vicc_original=9.9"
        )
    return name, v


def parse_variants(items: list[str]) -> list[tuple[str, list[str]]]:
    """``["released:data.augment.color_jitter=released", ...]`` -> [("released", ["data.augment.color_jitter=released"]), ...];
    none -> one unnamed variant; a malformed item is a one-line error."""
    out = []
    for item in items:
        name, _, sets = item.partition(":")
        overrides = [x for x in sets.split(",") if x]
        if not name or not overrides or any("=" not in x for x in overrides):
            raise SystemExit(f"--variants {item!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
        out.append((name, overrides))
    if len({n for n, _ in out}) != len(out):
        raise SystemExit("--variants: names must differ")
    return out or [("", [])]


def run(args: argparse.Namespace) -> dict[str, Any]:
    peer = parse_peer(args.peer)
    variants = parse_variants(list(getattr(args, "variants", []) or []))
    overrides = list(args.set) + [f"data.threads={args.threads}", f"train.batch_size={args.batch}"]
    if args.root:
        overrides.append(f"data.root={args.root}")
    cfg = config.load(args.config, overrides)
    if args.replicate > 1:
        config.load(args.config, overrides)  # validates before the copy
        if not (Path(cfg.data.root) / "manifest.json").is_file():
            from vicc_fast.data.base import ensure_shards

            ensure_shards(cfg)
        overrides.append(f"data.root={replicate_shards(cfg.data.root, args.replicate)}")
        cfg = config.load(args.config, overrides)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    streams = tuple(Stream(s) for s in args.streams.split(","))
    backends = ["dali", "torch"] if args.backend == "both" else [args.backend]
    if args.backends:
        backends = [b for b in args.backends.split(",") if b]
        bad = sorted(set(backends) - {"dali", "torch", "jpeg_lmdb"})
        if bad:
            raise SystemExit(f"--backends: unknown {bad}; choose from dali, torch, jpeg_lmdb")
    lmdb_root = None
    if "jpeg_lmdb" in backends:
        if args.mode != "train":
            raise SystemExit("--backends jpeg_lmdb: the released data path is measured in train mode only")
        import hashlib
        import tempfile

        from vicc_fast.bench.jpeg_lmdb import build

        tag = hashlib.sha1(str(Path(cfg.data.root).resolve()).encode()).hexdigest()[:10]
        lmdb_root = str(Path(tempfile.gettempdir()) / f"vicc_jpeg_lmdb_{tag}")
        lmdb_build = build(cfg.data.root, lmdb_root)
    result: dict[str, Any] = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "cpu_cores": os.cpu_count(),
        "load_avg_1min_at_start": os.getloadavg()[0],
        "batch": args.batch,
        "streams": [s.value for s in streams],
        "views": args.views,
        "mode": args.mode,
        "num_frames": cfg.data.num_frames,
        "stride": cfg.data.stride,
        "crop_size": cfg.data.crop_size,
        "threads": args.threads,
        "root": cfg.data.root,
        "replicate": args.replicate,
        "dtype": str(cfg.data.dtype.value),
        "note": "median of --repeat runs per backend, backends alternating (lower middle for an even count); "
        "CPU s/sample counts this process and its workers",
    }
    # one entry per backend and variant ("dali" alone without --variants, else "dali/<variant>")
    entries = {(f"{b}/{v}" if v else b): (b, extra) for b in backends for v, extra in variants}
    if variants[0][0]:
        result["variants"] = {v: extra for v, extra in variants}
    cfgs = {
        label: config.load(
            args.config, [*overrides, *extra, f"data.backend={'torch' if b == 'jpeg_lmdb' else b}"]
        )
        for label, (b, extra) in entries.items()
    }
    runs: dict[str, list[dict]] = {label: [] for label in entries}
    for _ in range(args.repeat):  # alternating A B A B: a drift of the machine hits every entry alike
        for label, (b, _) in entries.items():
            root = lmdb_root if b == "jpeg_lmdb" else None
            runs[label].append(_run_once(cfgs[label], args, streams, device, root))
    for name in entries:
        by_rate = sorted(runs[name], key=lambda r: r["samples_per_s"])
        best = by_rate[(len(by_rate) - 1) // 2]  # the median run (lower middle for an even count)
        result[name] = {**best, "all_samples_per_s": [round(r["samples_per_s"], 3) for r in runs[name]]}
        print(
            f"{name:6s} {best['samples_per_s']:.2f} samples/s  {best['clips_per_s']:.1f} clips/s  "
            f"{best['cpu_s_per_sample'] * 1000:.0f} CPU ms/sample  first batch {best['time_to_first_batch_s']:.1f} s"
        )
    if variants[0][0]:
        first = variants[0][0]
        for b in backends:
            for v, _ in variants[1:]:
                a, o = result[f"{b}/{first}"], result[f"{b}/{v}"]
                result[f"ratio_{b}_{first}_over_{v}"] = a["samples_per_s"] / o["samples_per_s"]
                result[f"cpu_ratio_{b}_{first}_over_{v}"] = a["cpu_s_per_sample"] / o["cpu_s_per_sample"]
                print(
                    f"{b}: {first}/{v} {result[f'ratio_{b}_{first}_over_{v}']:.2f}x samples/s, "
                    f"{result[f'cpu_ratio_{b}_{first}_over_{v}']:.2f}x CPU per sample"
                )
        return result
    if lmdb_root is not None:
        result["jpeg_lmdb_build"] = lmdb_build
        for b in backends:
            if b != "jpeg_lmdb":
                result[f"ratio_{b}_over_jpeg_lmdb"] = (
                    result[b]["samples_per_s"] / result["jpeg_lmdb"]["samples_per_s"]
                )
                print(f"ratio {b}/jpeg_lmdb: {result[f'ratio_{b}_over_jpeg_lmdb']:.2f}x samples/s")
    if peer:
        peer_name, rate = peer
        result["peer"] = {"name": peer_name, "samples_per_s": rate}
        for b in backends:
            ratio = result[b]["samples_per_s"] / rate
            result[f"ratio_{b}_over_{peer_name}"] = ratio
            print(f"ratio {b}/{peer_name}: {ratio:.2f}x samples/s ({rate} samples/s)")
    if "dali" in backends and "torch" in backends:
        result["ratio_dali_over_torch"] = result["dali"]["samples_per_s"] / result["torch"]["samples_per_s"]
        result["cpu_ratio_torch_over_dali"] = (
            result["torch"]["cpu_s_per_sample"] / result["dali"]["cpu_s_per_sample"]
        )
        print(f"ratio dali/torch: {result['ratio_dali_over_torch']:.2f}x samples/s")
    return result
