"""Optical flow methods on the synthetic set: frames/s (frame pairs per second) and end-point error.

Frames are decoded from the written source videos (codec noise included, as in a real build) and scored against
the exact ground-truth flow of the generator (camera pan included). Reported per method: pairs/s on
`--threads` OpenCV threads (1 = what one process-pool worker of data_prep.build gets), mean EPE, EPE after the
papers' [-20, 20] -> uint8 quantisation, and the zero-flow EPE as the baseline.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from data_prep.flow import compute_flow, dequantize_flow, endpoint_error, quantize_flow
from data_prep.synthetic import decode_video, generate
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
    p.add_argument("--threads", type=int, default=1, help="OpenCV threads (1 = one pool worker)")
    p.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "vicc_fast_bench"),
        help="where the synthetic set with ground-truth flow is generated (reused when settings match)",
    )


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
    result: dict[str, Any] = {
        "videos": len(items),
        "pairs": pairs,
        "size": [args.height, args.width],
        "threads": args.threads,
        "zero_flow_epe": round(zero, 4),
        "methods": {},
    }
    for method in methods:
        compute_flow(items[0][1][:2], method)  # build the OpenCV object outside the timing
        seconds, epe, epe_q, per_class = 0.0, [], [], {}
        for cls, frames, gt in tqdm(items, desc=method.value, unit="video"):
            t0 = time.perf_counter()
            flow = compute_flow(frames, method)
            seconds += time.perf_counter() - t0
            e = endpoint_error(flow[:-1], gt[:-1])
            epe.append(e)
            epe_q.append(endpoint_error(dequantize_flow(quantize_flow(flow[:-1])), gt[:-1]))
            per_class[cls] = round(e, 4)
        result["methods"][method.value] = {
            "pairs_per_s": round(pairs / seconds, 2),
            "ms_per_pair": round(1000 * seconds / pairs, 2),
            "epe": round(float(np.mean(epe)), 4),
            "epe_quantized": round(float(np.mean(epe_q)), 4),
            "epe_over_zero_flow": round(float(np.mean(epe)) / zero, 3),
            "epe_per_class": per_class,
        }
    return result
