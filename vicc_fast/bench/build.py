"""What building shards costs: ``data_prep.build`` and ``data_prep.verify`` as a user runs them, timed whole.

A synthetic set (the default one of ``python -m data_prep.synthetic`` unless told otherwise) is built once per
``--flow`` method, each as its own process (``python -m data_prep.build ... --workers W``): wall seconds, CPU
seconds of the process and its workers (``resource.getrusage`` of the children), frame pairs per wall second;
then the same command again (a rerun with every video cached: the resume path) and ``python -m data_prep.verify``.
Bytes per video come from the build's per-video meta, as in ``bench storage``. ``--limit`` caps the videos per
split for slow methods (``tvl1``: ``method:limit``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vicc_fast.bench.common import BenchError, add_synthetic_arguments, synthetic_config
from vicc_fast.config import FlowMethod


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--flow",
        type=parse_flows,
        default="dis,tvl1:5",
        help="comma-separated flow methods, each optionally METHOD:LIMIT (at most LIMIT videos per split, "
        "evenly spread; default: dis on the whole set, tvl1 on 5 + 5 videos)",
    )
    add_synthetic_arguments(p, height=128, width=171)  # the default synthetic set; its size is the shards'
    p.add_argument("--workers", type=int, default=2, help="data_prep.build --workers")
    p.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "vicc_fast_bench_build"),
        help="where the synthetic sources (reused when settings match) and the shard folders (rebuilt) go",
    )


def parse_flows(text: str) -> list[tuple[FlowMethod, int | None]]:
    """'dis,tvl1:5' -> [(dis, None), (tvl1, 5)]; a ValueError names a bad entry."""
    out = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        name, _, limit = item.partition(":")
        try:
            out.append((FlowMethod(name), int(limit) if limit else None))
        except ValueError:
            raise argparse.ArgumentTypeError(f"--flow entry {item!r} is not METHOD or METHOD:LIMIT") from None
    return out


def timed(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd`` (it must succeed); wall seconds and CPU seconds (user + system) of it and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from data_prep import synthetic
    from vicc_fast.bench.storage import _per_video

    flows = args.flow  # parse_flows' list
    load = os.getloadavg()[0]
    cfg = synthetic_config(args)
    work = Path(args.workdir)
    src = synthetic.generate(work / "source", cfg, workers=args.workers, progress=False, overwrite=True)
    py = sys.executable
    rows = []
    for method, limit in flows:
        out = work / f"shards_{method.value}_{limit or 'all'}"
        cmd = [py, "-m", "data_prep.build", "--source", "ucf101", "--root", str(src), "--out", str(out),
               "--flow", method.value, "--workers", str(args.workers), "--height", str(args.height),
               "--width", str(args.width), "--no-progress", *(["--limit", str(limit)] if limit else [])]  # fmt: skip
        if out.exists():
            shutil.rmtree(out)  # a cold build: nothing cached
        first = timed(cmd)
        sizes = _per_video(out)
        videos, frames = sizes["videos"], sizes["frames_per_video"]
        again = timed(cmd)
        check = timed([py, "-m", "data_prep.verify", str(out), "--no-progress"])
        row = {
            "flow": method.value,
            "limit_per_split": limit,
            "command": " ".join(["python", *cmd[1:]]),
            "build": {
                **first,
                "cpu_s_per_video": round(first["cpu_s"] / videos, 3),
                "frame_pairs_per_wall_s": round(videos * (frames - 1) / first["wall_s"], 2),
            },
            "rerun_all_cached": again,
            "verify": check,
            **sizes,
            "shards_bytes": sum(p.stat().st_size for p in out.glob("*.tar")),
            "tars": len(list(out.glob("*.tar"))),
        }
        print(f"{method.value}: {videos} videos, build {first['wall_s']} s wall", file=sys.stderr)
        rows.append(row)
    return {
        "command": "python -m vicc_fast.bench " + " ".join(sys.argv[1:]),
        "source": {
            "kind": "synthetic",
            "classes": args.classes,
            "train_per_class": args.train_per_class,
            "test_per_class": args.test_per_class,
            "frames": args.frames,
            "size": [args.height, args.width],
        },  # fmt: skip
        "workers": args.workers,
        "load_avg_1min_at_start": load,
        "rows": rows,
    }
