"""The colour jitter in the DALI graph, alone: time per clip and agreement with the reference.

``data.augment.color_jitter=released`` runs torchvision/PIL's ColorJitter as 8-bit steps (vicc_fast/data/augment.py
``jitter_slots``, vicc_fast/data/dali.py ``jitter_steps``); ``affine`` folds the jitter into one colour map. This
benchmark feeds the same clips and draws to both, in a DALI pipeline on the CPU or the GPU (the GPU graph's
contrast step is arithmetic: argument inputs must live on the host), alternating repeats, and reports the median
milliseconds per clip of each, their ratio, and how far the released steps land from ``jitter_steps_np`` (max
and mean absolute difference in 8-bit levels: rounding at .5 in float32 moves a value by one, later factors grow
it). On a GPU this is the first check that the released steps run there and agree with the CPU reference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the DALI graph runs")
    p.add_argument("--frames", type=int, default=32, help="frames per clip")
    p.add_argument("--size", type=int, default=128, help="clip height and width (the crop size)")
    p.add_argument("--batch", type=int, default=8, help="clips per batch (every one jittered)")
    p.add_argument("--threads", type=int, default=2, help="DALI CPU threads")
    p.add_argument("--iters", type=int, default=5, help="timed batches per run")
    p.add_argument(
        "--repeat", type=int, default=3, help="runs per variant, alternating; the median is reported"
    )
    p.add_argument("--seed", type=int, default=0, help="clips and draws")


def clips_and_steps(n: int, frames: int, size: int, seed: int) -> tuple[np.ndarray, Any]:
    """n uint8 clips [frames, size, size, 3] (ramps, noise, a brightness per frame: frame means away from 128)
    and the released jitter of strength (0.4, 0.4, 0.4, 0.1) for each, every op order possible."""
    from vicc_fast.data.augment import jitter_slots

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)
    h, v = np.meshgrid(ramp, ramp)
    base = np.stack([h * 200 + 20, v * 150 + 40, np.full((size, size), 90.0)], -1)
    level = rng.uniform(-60, 60, (n, frames, 1, 1, 1))
    x = np.clip(base[None, None] + level + rng.normal(0, 10, (n, frames, size, size, 3)), 0, 255).astype(
        np.uint8
    )
    factors = [rng.uniform(0.6, 1.4, n) for _ in range(3)]
    order = np.stack([rng.permutation(4) for _ in range(n)])
    return x, jitter_slots(*factors, rng.uniform(-0.1, 0.1, n), order)


def _pipeline(variant: str, x: np.ndarray, steps: Any, args: argparse.Namespace):
    from nvidia.dali import fn, pipeline_def, types

    from vicc_fast.data import dali as D
    from vicc_fast.data.augment import colour_affine

    n = len(x)
    gpu = args.device == "cuda"
    fields = [list(getattr(steps, f)) for f in D.STEP_FIELDS]
    one = np.ones(n)
    # the one-map equivalent of the same factors: brightness and contrast read off the steps
    m_aff, t_aff = colour_affine(steps.b.prod(1), steps.c.prod(1), one, np.zeros(n), np.zeros(n, bool))
    m_aff = np.einsum("nij,njk->nik", m_aff, steps.m).astype(np.float32)
    flags = [np.array(True)] * n

    @pipeline_def(
        batch_size=n, num_threads=args.threads, device_id=0 if gpu else None, enable_conditionals=True
    )
    def pipe():
        v = fn.external_source(source=lambda: list(x), batch=True, layout="FHWC")
        v = v.gpu() if gpu else v
        if variant == "affine":
            m = fn.external_source(source=lambda: list(m_aff), batch=True)
            t = fn.external_source(source=lambda: list(t_aff.astype(np.float32)), batch=True)
            return fn.coord_transform(v, M=m, T=t, dtype=types.UINT8)
        src = fn.external_source(source=lambda: fields, num_outputs=len(fields), batch=True)
        jit = fn.external_source(source=lambda: flags, batch=True)
        if jit:  # as the train graph runs them: inside a conditional
            v = D.jitter_steps(v, *src)
        return v

    p = pipe()
    p.build()
    return p


def _time(p, iters: int) -> tuple[float, Any]:
    out = p.run()  # warm
    t0 = time.perf_counter()
    for _ in range(iters):
        out = p.run()
    return (time.perf_counter() - t0) / iters, out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from vicc_fast.data.augment import jitter_steps_np

    x, steps = clips_and_steps(args.batch, args.frames, args.size, args.seed)
    pipes = {v: _pipeline(v, x, steps, args) for v in ("released", "affine")}
    times: dict[str, list[float]] = {v: [] for v in pipes}
    outs: dict[str, Any] = {}
    for _ in range(args.repeat):  # alternating: a drift of the machine hits both alike
        for v, p in pipes.items():
            dt, outs[v] = _time(p, args.iters)
            times[v].append(dt / args.batch * 1000)
    got = outs["released"][0]
    got = got.as_cpu() if hasattr(got, "as_cpu") else got
    diffs = [
        np.abs(np.array(got[i]).astype(np.float64) - jitter_steps_np(x[i], steps[i])) for i in range(len(x))
    ]
    med = {v: statistics.median(t) for v, t in times.items()}
    result = {
        "device": args.device,
        "clip": [args.frames, args.size, args.size, 3],
        "batch": args.batch,
        "threads": args.threads,
        "ms_per_clip": {v: round(m, 3) for v, m in med.items()},
        "all_ms_per_clip": {v: [round(t, 3) for t in ts] for v, ts in times.items()},
        "ratio_released_over_affine": med["released"] / med["affine"],
        "released_vs_reference": {
            "max_abs": float(max(d.max() for d in diffs)),
            "mean_abs": float(np.mean([d.mean() for d in diffs])),
        },
        "note": "every clip jittered (in training only the drawn share is); medians of alternating runs",
    }
    ok = result["released_vs_reference"]["max_abs"] <= 3 and result["released_vs_reference"]["mean_abs"] < 0.3
    result["agrees_with_reference"] = ok
    print(
        f"released {med['released']:.2f} ms/clip, affine {med['affine']:.2f} ms/clip "
        f"({result['ratio_released_over_affine']:.2f}x); vs reference max |d| "
        f"{result['released_vs_reference']['max_abs']:.0f}, mean {result['released_vs_reference']['mean_abs']:.3f}"
        f" ({'agrees' if ok else 'DISAGREES'})"
    )
    return result
