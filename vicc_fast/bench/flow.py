"""Optical flow methods on the synthetic set: frame pairs/s and end-point error, and tvl1-torch against OpenCV.

Frames are decoded from the written source videos (codec noise included, as in a real build) and scored against
the exact ground-truth flow of the generator (camera pan included). Reported per method: pairs/s on
`--threads` threads (1 = what one process-pool worker of data_prep.build gets), mean EPE, EPE after the
papers' [-20, 20] -> uint8 quantisation, and the zero-flow EPE as the baseline.

Speed on shared cores is noisy: with --repeats R every method is timed R times over the whole set, in
alternating order (forward, then backward), and the record gives the median pairs/s and the median of the
per-repeat ratios to OpenCV's TV-L1 and DIS (ratios taken within one repeat, so a load change hits both).

tvl1-torch (data_prep.flow_torch) runs on --device with the pairs of all videos batched --batch at a time; its
first call (the torch.compile compilation) is outside the timing. When tvl1 is measured too, ``vs_opencv_tvl1``
gives the mean EPE between the two flows, the ratio of their EPEs against the truth, and the share of stored
uint8 values that differ after quantisation.

With ``--stored-size HxW`` it compares instead the two recipes of ``data_prep.build --flow-at`` per video, for
each of --methods: ``source`` (flow between the --height x --width source frames, then the flow field resized to
the stored size with its vectors scaled: the released ViCC / CoCLR recipe) against ``stored`` (frames resized
to the stored size, flow between them). Both variants include resizing the RGB frames for storage (what a build
does besides decoding, which they share); their cost per video is timed --repeats times in alternating order,
and the record gives medians, the median per-repeat cost ratio source / stored, and each variant's EPE at the
stored size against the resized ground truth.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from data_prep.flow import compute_flow, dequantize_flow, endpoint_error, quantize_flow
from data_prep.flow_torch import default_batch
from data_prep.synthetic import decode_video, generate
from vicc_fast.bench.common import FLOW_TORCH as TORCH
from vicc_fast.bench.common import FLOW_TORCH_NOCOMPACT as TORCH_NOCOMPACT
from vicc_fast.config import FlowMethod, SyntheticConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--methods",
        default=",".join(m.value for m in FlowMethod),
        help="comma-separated flow methods to measure (default: all)",
    )
    p.add_argument(
        "--classes", type=int, default=10, help="classes of the synthetic set (one test video each)"
    )
    p.add_argument("--frames", type=int, default=12, help="frames per video (frames - 1 pairs are scored)")
    p.add_argument("--height", type=int, default=128, help="video height")
    p.add_argument("--width", type=int, default=171, help="video width")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic set")
    p.add_argument(
        "--threads", type=int, default=1, help="OpenCV and torch CPU threads (1 = one pool worker)"
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device of tvl1-torch (default: cuda when available)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tvl1-torch through torch.compile (compiled before the timing)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="tvl1-torch frame pairs per call (default: data_prep.flow_torch.default_batch: 8 CPU, 256 GPU; "
        "--stored-size always uses the default, as data_prep.build does)",
    )
    p.add_argument(
        "--compact",
        choices=("on", "off", "both"),
        default="on",
        help="tvl1-torch runs only a warp's still-active pairs once a quarter have stopped (on, the default), "
        "keeps the whole batch to the end (off), or both, timed side by side as tvl1-torch and "
        "tvl1-torch-nocompact (same flow; the work differs)",
    )
    p.add_argument(
        "--repeats", type=int, default=1, help="timed passes per method, alternating order; medians reported"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="one more tvl1-torch pass with each block timed (inner step, median, warp, resize): where time goes",
    )
    p.add_argument(
        "--stored-size",
        default=None,
        help="HEIGHTxWIDTH (e.g. 128x171): compare the build's two recipes per video instead, flow at the "
        "--height x --width source then resized to this size vs frames resized to it then flow (see above)",
    )
    p.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "vicc_fast_bench"),
        help="where the synthetic set with ground-truth flow is generated (reused when settings match)",
    )


def _torch_runner(
    items: list, args: argparse.Namespace, compact: bool = True
) -> Callable[[], list[np.ndarray]]:
    """A function computing tvl1-torch flow for every video, the pairs of all videos batched together."""
    from data_prep.flow_torch import rgb_to_grey, tvl1

    dev = torch.device(args.device)
    batch = args.batch or default_batch(dev)
    lengths = [v.shape[0] for _, v, _ in items]
    frames = np.concatenate([v for _, v, _ in items])
    # pair k = (frame a[k], frame a[k] + 1) inside one video
    starts = np.cumsum([0, *lengths[:-1]])
    first = np.concatenate([s + np.arange(n - 1) for s, n in zip(starts, lengths)])

    def run() -> list[np.ndarray]:
        with torch.inference_mode():
            grey = rgb_to_grey(torch.from_numpy(frames).to(dev))
            idx = torch.from_numpy(first).to(dev)
            parts = [
                tvl1(grey[idx[k : k + batch]], grey[idx[k : k + batch] + 1], None, args.compile, compact)
                for k in range(0, len(first), batch)
            ]
            flow = torch.cat(parts).cpu().numpy()
        out, k = [], 0
        for n in lengths:
            f = flow[k : k + n - 1]
            out.append(np.concatenate([f, f[-1:]]))  # the last flow frame repeats, as in compute_flow
            k += n - 1
        return out

    return run


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def alternate(
    runners: dict[Any, Callable[[], list[np.ndarray]]],
    keys: list,
    repeats: int,
    device: str,
    describe: Callable[[Any, float], str],
    flows: dict | None = None,
) -> tuple[dict[Any, list[float]], dict[Any, list[np.ndarray]]]:
    """Time every runner ``repeats`` times, alternating the order each round (A B, B A, ...) so drift on a shared
    machine hits both alike; returns (key -> seconds per repeat, key -> first output, or ``flows``' entry)."""
    seconds: dict[Any, list[float]] = {k: [] for k in keys}
    out_flows: dict[Any, list[np.ndarray]] = dict(flows or {})
    for rep in range(repeats):
        for k in keys if rep % 2 == 0 else keys[::-1]:
            _sync(device)
            t0 = time.perf_counter()
            out = runners[k]()
            _sync(device)
            seconds[k].append(time.perf_counter() - t0)
            out_flows.setdefault(k, out)
            print(f"repeat {rep} {describe(k, seconds[k][-1])}", file=sys.stderr)
    return seconds, out_flows


def run(args: argparse.Namespace) -> dict[str, Any]:
    methods = [FlowMethod(m.strip()) for m in args.methods.split(",") if m.strip()]
    cfg = SyntheticConfig(
        num_classes=args.classes,
        train_per_class=1,
        test_per_class=1,
        frames=args.frames,
        height=args.height,
        width=args.width,
        seed=args.seed,
    )
    name = f"flow_{cfg.num_classes}c_{cfg.frames}f_{cfg.height}x{cfg.width}_s{cfg.seed}"
    root = generate(Path(args.workdir) / name, cfg, gt_flow=True, workers=1, overwrite=True)
    items = []
    for line in (root / "splits" / "testlist01.txt").read_text().split("\n"):
        if line.strip():
            rel = Path(line.split()[0])
            gt = np.load(root / "gt_flow" / rel.parent / (rel.stem + ".npy")).astype(np.float32)
            items.append((rel.parent.name, decode_video(root / "videos" / rel), gt))
    pairs = sum(v.shape[0] - 1 for _, v, _ in items)
    zero = float(np.mean([endpoint_error(np.zeros_like(g[:-1]), g[:-1]) for _, _, g in items]))
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    if args.stored_size:
        return run_recipes(args, methods, items)
    result: dict[str, Any] = {
        "command": "python -m vicc_fast.bench " + " ".join(sys.argv[1:]),
        "videos": len(items),
        "pairs": pairs,
        "size": [args.height, args.width],
        "threads": args.threads,
        "tvl1_torch": {
            "device": args.device,
            "compile": args.compile,
            "batch": args.batch or default_batch(args.device),
            "compact": args.compact,
        },
        "load_avg_1min_at_start": os.getloadavg()[0],
        "repeats": args.repeats,
        "zero_flow_epe": round(zero, 4),
        "methods": {},
    }
    runners: dict[str, Callable[[], list[np.ndarray]]] = {}
    for method in methods:
        if method is FlowMethod.tvl1_torch:
            for label, compact in _torch_variants(args.compact):
                runners[label] = _torch_runner(items, args, compact)
        else:
            runners[method.value] = lambda m=method: [compute_flow(v, m) for _, v, _ in items]
    labels = list(runners)
    # outside the timing: OpenCV builds its objects, torch.compile compiles (every batch shape of the run)
    warm = {k: runners[k]() for k in labels if k.startswith(TORCH) and args.compile}
    for m in methods:
        if m is not FlowMethod.tvl1_torch:
            compute_flow(items[0][1][:2], m)
    seconds, flows = alternate(
        runners, labels, args.repeats, args.device, lambda k, s: f"{k}: {pairs / s:.2f} pairs/s", warm
    )
    for k in labels:
        epe, epe_q, per_class = [], [], {}
        for (cls, _, gt), flow in zip(items, flows[k]):
            e = endpoint_error(flow[:-1], gt[:-1])
            epe.append(e)
            epe_q.append(endpoint_error(dequantize_flow(quantize_flow(flow[:-1])), gt[:-1]))
            per_class[cls] = round(e, 4)
        med = statistics.median(seconds[k])
        result["methods"][k] = {
            "pairs_per_s": round(pairs / med, 2),
            "ms_per_pair": round(1000 * med / pairs, 2),
            "pairs_per_s_each_repeat": [round(pairs / s, 2) for s in seconds[k]],
            "epe": round(float(np.mean(epe)), 4),
            "epe_quantized": round(float(np.mean(epe_q)), 4),
            "epe_over_zero_flow": round(float(np.mean(epe)) / zero, 3),
            "epe_per_class": per_class,
        }
        for ref in (FlowMethod.tvl1.value, FlowMethod.dis.value, TORCH_NOCOMPACT):
            if ref in seconds and ref != k:
                ratios = [r / s for s, r in zip(seconds[k], seconds[ref])]  # > 1: k is faster
                result["methods"][k][f"speed_over_{ref}"] = round(statistics.median(ratios), 3)
    if args.profile and FlowMethod.tvl1_torch in methods:
        for label, compact in _torch_variants(args.compact):
            key = "tvl1_torch_profile" + ("" if compact else "_nocompact")
            result[key] = profile_blocks(runners[label], args.device, args.compile)
    if TORCH in flows and FlowMethod.tvl1.value in flows:
        result["vs_opencv_tvl1"] = compare(flows[TORCH], flows[FlowMethod.tvl1.value], items)
    if TORCH in flows and TORCH_NOCOMPACT in flows:
        a, b = (np.concatenate([f[:-1] for f in flows[k]]) for k in (TORCH, TORCH_NOCOMPACT))
        result["compact_vs_nocompact"] = {
            "epe_between": round(endpoint_error(a, b), 6),
            "max_abs_difference": float(np.abs(a - b).max()),
        }
    return result


def _torch_variants(compact: str) -> list[tuple[str, bool]]:
    """(label, compact) of the tvl1-torch runs --compact asks for."""
    return [(TORCH, True)] * (compact != "off") + [(TORCH_NOCOMPACT, False)] * (compact != "on")


def _recipe_runner(
    method: FlowMethod, variant: str, items: list, stored: tuple[int, int], args: argparse.Namespace
) -> Callable[[], list[np.ndarray]]:
    """A function computing every video's stored flow [T, H, W, 2] by one recipe, as data_prep.build does:
    the RGB frames resized for storage in both, flow per video (tvl1-torch in default_batch chunks)."""
    from data_prep.build import resize_frames
    from data_prep.flow import resize_flow

    def flow_of(frames: np.ndarray) -> np.ndarray:
        return compute_flow(frames, method, device=args.device, compile=args.compile)

    def run() -> list[np.ndarray]:
        out = []
        for _, src, _ in items:
            rgb = resize_frames(src, *stored)
            out.append(resize_flow(flow_of(src), *stored) if variant == "source" else flow_of(rgb))
        return out

    return run


def run_recipes(args: argparse.Namespace, methods: list[FlowMethod], items: list) -> dict[str, Any]:
    """Cost per video and EPE of flow at the source size then resized vs flow at the stored size."""
    from data_prep.build import FlowAt
    from data_prep.flow import resize_flow
    from vicc_fast.bench.storage import parse_size

    load = os.getloadavg()[0]
    stored = parse_size(args.stored_size)
    variants = [FlowAt.source.value, FlowAt.stored.value]
    keys = [(m, v) for m in methods for v in variants]
    runners = {k: _recipe_runner(*k, items, stored, args) for k in keys}
    gt = [resize_flow(g[:-1], *stored) for _, _, g in items]
    # outside the timing: OpenCV builds its objects (one pair), torch.compile compiles every shape (a full pass)
    first_pair = [(items[0][0], items[0][1][:2], items[0][2])]
    for m, v in keys:
        compiled = m is FlowMethod.tvl1_torch and args.compile
        (runners[m, v] if compiled else _recipe_runner(m, v, first_pair, stored, args))()
    seconds, flows = alternate(
        runners,
        keys,
        args.repeats,
        args.device,
        lambda k, s: f"{k[0].value} at {k[1]}: {s / len(items):.3f} s/video",
    )
    rows: dict[str, Any] = {}
    for m in methods:
        row: dict[str, Any] = {}
        for v in variants:
            sec = seconds[m, v]
            epe = [endpoint_error(f[:-1], g) for f, g in zip(flows[m, v], gt)]
            row[v] = {
                "s_per_video": round(statistics.median(sec) / len(items), 4),
                "s_per_video_each_repeat": [round(x / len(items), 4) for x in sec],
                "epe_at_stored_size": round(float(np.mean(epe)), 4),
            }
        ratios = [a / b for a, b in zip(seconds[m, variants[0]], seconds[m, variants[1]])]
        row["cost_source_over_stored"] = round(statistics.median(ratios), 3)
        a = np.concatenate([f[:-1] for f in flows[m, variants[0]]])
        b = np.concatenate([f[:-1] for f in flows[m, variants[1]]])
        row["epe_between_recipes"] = round(endpoint_error(a, b), 4)
        rows[m.value] = row
    return {
        "command": "python -m vicc_fast.bench " + " ".join(sys.argv[1:]),
        "mode": "recipes",
        "videos": len(items),
        "frames_per_video": int(items[0][1].shape[0]),
        "source_size": [args.height, args.width],
        "stored_size": list(stored),
        "threads": args.threads,
        "tvl1_torch": {
            "device": args.device,
            "compile": args.compile,
            "batch": default_batch(args.device),
            "compact": "on",  # as data_prep.build runs it
        },
        "load_avg_1min_at_start": load,
        "repeats": args.repeats,
        "zero_flow_epe_at_stored_size": round(
            float(np.mean([endpoint_error(np.zeros_like(g), g) for g in gt])), 4
        ),
        "methods": rows,
    }


def compare(ours: list[np.ndarray], theirs: list[np.ndarray], items: list) -> dict[str, Any]:
    """tvl1-torch against OpenCV's TV-L1 over the same videos: EPE between them, EPE ratio against the truth,
    and the share of stored uint8 values (both components) that differ after quantisation."""
    a = np.concatenate([f[:-1] for f in ours])
    b = np.concatenate([f[:-1] for f in theirs])
    gt = np.concatenate([g[:-1] for _, _, g in items])
    qa, qb = quantize_flow(a).astype(np.int16), quantize_flow(b).astype(np.int16)
    diff = np.abs(qa - qb)
    ea, eb = endpoint_error(a, gt), endpoint_error(b, gt)
    return {
        "epe_between": round(endpoint_error(a, b), 4),
        "epe_torch": round(ea, 4),
        "epe_opencv": round(eb, 4),
        "epe_ratio_torch_over_opencv": round(ea / eb, 4),
        "uint8_values_differing": round(float((diff > 0).mean()), 5),
        "uint8_values_differing_by_more_than_1": round(float((diff > 1).mean()), 6),
        "uint8_max_difference": int(diff.max()),
    }


def profile_blocks(run_once: Callable[[], Any], device: str, compiled: bool) -> dict[str, Any]:
    """Seconds, calls and share of one tvl1-torch pass spent in each block of data_prep.flow_torch.

    The blocks are timed by wrapping the module's functions for the pass (the device is synchronised around
    each call, which itself costs a little on a GPU); they are restored afterwards. ``step_work_active``: the
    share of the inner steps' pixel work (rows x level area, summed over calls) spent on pairs still active,
    the rest on stopped pairs a batch carries (frozen, but computed).
    """
    import data_prep.flow_torch as ft

    seconds: dict[str, float] = {}
    calls: dict[str, int] = {}
    work = {"run": 0, "active": 0}  # pixel-steps of the inner step: all rows, active rows

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*a: Any, **k: Any) -> Any:
            if name == "inner step":  # masked_tv_step(u, p, active, ...)
                area = a[0].shape[-2] * a[0].shape[-1]
                work["run"] += a[2].numel() * area
                work["active"] += int(a[2].sum()) * area
            _sync(device)
            t0 = time.perf_counter()
            out = fn(*a, **k)
            _sync(device)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
            calls[name] = calls.get(name, 0) + 1
            return out

        return wrapper

    names = {"masked_tv_step": "inner step", "masked_median": "median", "_masked_median_eager": "median"}
    # compiled blocks come from ft._compiled(fn) (cached), so wrap what it returns; eager ones directly
    patches = {
        "warp_bicubic": timed("warp", ft.warp_bicubic),
        "resize_linear": timed("resize", ft.resize_linear),
    }
    original_compiled = ft._compiled
    if compiled:
        patches["_compiled"] = lambda fn: timed(names[fn.__name__], original_compiled(fn))
    else:
        patches["masked_tv_step"] = timed("inner step", ft.masked_tv_step)
        patches["_masked_median_eager"] = timed("median", ft._masked_median_eager)
    saved = {k: getattr(ft, k) for k in patches}
    try:
        for k, v in patches.items():
            setattr(ft, k, v)
        _sync(device)
        t0 = time.perf_counter()
        run_once()
        _sync(device)
        total = time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            setattr(ft, k, v)
    blocks = {
        name: {
            "seconds": round(sec, 3),
            "calls": calls[name],
            "ms_per_call": round(1000 * sec / calls[name], 3),
            "share": round(sec / total, 3),
        }
        for name, sec in sorted(seconds.items(), key=lambda kv: -kv[1])
    }
    return {
        "compiled": compiled,
        "total_s": round(total, 3),
        "blocks": blocks,
        "step_work_active": round(work["active"] / max(work["run"], 1), 3),
    }
