"""SIGKILL a CPU training run and a shard build at random points, resume each time, compare with uninterrupted runs.

    python scripts/faults/kill_resume.py --kills 5 --work /tmp/kill_resume      # both parts
    python scripts/faults/kill_resume.py --part train --kills 10 --seed 1

train: the tiny ViCC model (rgb1 + flow1) on tiny synthetic shards, checkpoint every step, one process
(``python -m vicc_fast.train``). The killed run is SIGKILLed after a random delay, --kills times (the delays
spread over the uninterrupted run's duration, so kills land inside steps, inside checkpoint writes and between
phases), then resumed with train.resume=auto until it finishes. Bit-equal: every tensor of the final
checkpoint's model state, and the loss of every step (metrics.jsonl; a step redone after a kill counts once,
its last value).

build: ``python -m data_prep.build`` of the synthetic source videos, SIGKILLed the same way and rerun until it
finishes. Equal: the sha256 of every shard and .idx file, and the manifest's shard list.

Prints one JSON report (kills, at which progress each landed, seconds to resume, equal or not) and exits 1 on
any difference. Bounded in time: each process is given --timeout-s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.num_frames=4", "data.crop_size=16", "data.threads=1", "data.eval.clips=1", "data.backend=torch",
        "model.backbone=tiny", "model.tiny_width=4", "model.proj_hidden=16", "model.proj_dim=8",
        "model.num_prototypes=6", "method.swav.queue_size=8", "schedule.cross_cycles=0",
        "method.vicc.queue_start_rgb=1", "method.vicc.queue_start_flow=1",
        "method.vicc.single_freeze_prototypes=1", "train.batch_size=4", "train.amp='off'", "train.progress=false",
        "train.ckpt_every_steps=1", "train.log_every_steps=1", "eval.after_phase=false", "train.device=cpu",
        "data.build_if_missing=false"]  # fmt: skip
SYNTHETIC = {"num_classes": 2, "train_per_class": 4, "test_per_class": 2, "frames": 12, "height": 32,
             "width": 40}  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _run(cmd: list[str], log: Path, timeout_s: float) -> float:
    """Run cmd to the end (output appended to log); seconds it took. A failure raises naming the log."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.run(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT, timeout=timeout_s
        ).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed with {rc}; see {log}")
    return time.perf_counter() - t0


def _run_and_kill(
    cmd: list[str], log: Path, progress: Callable[[], int], target: int, delay_s: float, timeout_s: float
) -> dict[str, Any]:
    """Start cmd; once progress() reaches target, wait delay_s more (so the kill lands inside a step, a
    checkpoint write or a phase change) and SIGKILL it. Returns what happened."""
    t0 = time.perf_counter()
    start = progress()
    first = None
    with open(log, "a") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)
        while p.poll() is None and time.perf_counter() - t0 < timeout_s:
            now = progress()
            if first is None and now > start:
                first = time.perf_counter() - t0  # restart -> first new progress: the time to resume
            if now >= target:
                time.sleep(delay_s)
                break
            time.sleep(0.02)
        killed = p.poll() is None
        if killed:
            p.send_signal(signal.SIGKILL)
        p.wait()
    return {"target": target, "extra_delay_s": round(delay_s, 3), "killed": killed, "progress_at_kill": progress(),
            "restart_to_progress_s": None if first is None else round(first, 2)}  # fmt: skip


def make_sources(work: Path) -> tuple[Path, Path]:
    """Synthetic source videos (UCF layout) and their shards, built once and reused."""
    from data_prep import synthetic
    from data_prep.build import build
    from data_prep.sources import load_records
    from vicc_fast.config import FlowMethod, SyntheticConfig

    cfg = SyntheticConfig(**SYNTHETIC, flow_method=FlowMethod.dis)
    src = synthetic.generate(work / "source", cfg, progress=False)
    shards = work / "shards"
    if not (shards / "manifest.json").is_file():
        build(load_records("ucf101", src), shards, flow_method="dis", height=32, width=40, progress=False,
              log=lambda *_: None)  # fmt: skip
    return src, shards


def _rows(run: Path) -> list[dict[str, Any]]:
    rows = []
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(
                json.loads(line[line.rfind('{"phase"') :])
            )  # a line cut by a kill: the next continues it
        except ValueError:
            continue
    return rows


def _losses(run: Path) -> dict[int, float]:
    return {int(r["step"]): r["loss"] for r in _rows(run)}  # a step redone after a kill: its last value


def _targets(rng: random.Random, kills: int, total: int, must: list[int]) -> list[int]:
    """kills progress points in [1, total - 1]: the `must` ones (phase changes) first, the rest at random."""
    must = [m for m in must if 0 < m < total][:kills]
    pool = [i for i in range(1, total) if i not in must]
    return sorted(must + rng.sample(pool, min(len(pool), kills - len(must))))


def train_part(
    work: Path, kills: int, rng: random.Random, timeout_s: float, epochs: int = 12
) -> dict[str, Any]:
    import torch

    from vicc_fast import checkpoint as ckpt

    _, shards = make_sources(work)
    cmd = [
        sys.executable,
        "-m",
        "vicc_fast.train",
        f"data.root={shards}",
        *TINY,
        f"schedule.single_epochs={epochs}",
    ]
    ref, hit = work / "train_ref", work / "train_killed"
    for d in (ref, hit):
        shutil.rmtree(d, ignore_errors=True)
        d.with_suffix(".log").unlink(missing_ok=True)
    full_s = _run([*cmd, f"train.out_dir={ref}"], work / "train_ref.log", timeout_s)
    rows = _rows(ref)
    total = len(rows)
    step_s = (rows[-1]["time"] - rows[0]["time"]) / max(1, total - 1)
    phase_change = [i for i in range(1, total) if rows[i]["phase"] != rows[i - 1]["phase"]]

    def progress() -> int:
        return len(_rows(hit))  # logged steps (log_every_steps=1), redone ones included

    points = []
    for target in _targets(rng, kills, total, phase_change):
        # the run restarts from its checkpoint: progress counts lines, so aim past the lines already there
        done = len(_losses(hit))
        goal = progress() + max(1, target - done)
        points.append(_run_and_kill([*cmd, f"train.out_dir={hit}"], work / "train_killed.log", progress, goal,
                                    rng.uniform(0, 1.5 * step_s), timeout_s))  # fmt: skip
        last = ckpt.latest_path(hit)
        points[-1]["checkpoint_step"] = ckpt.load(last)["global_step"] if last.is_file() else None
    resume_s = _run([*cmd, f"train.out_dir={hit}"], work / "train_killed.log", timeout_s)
    a, b = ckpt.load(ckpt.latest_path(ref)), ckpt.load(ckpt.latest_path(hit))
    diff = [
        k
        for k, v in a["method"].items()
        if isinstance(v, torch.Tensor) and not torch.equal(v, b["method"][k])
    ]
    return {
        "kills": points,
        "uninterrupted_s": round(full_s, 1),
        "step_s": round(step_s, 3),
        "last_resume_to_end_s": round(resume_s, 1),
        "steps": a["global_step"],
        "weights_equal": not diff and a["global_step"] == b["global_step"],
        "different_tensors": diff[:5],
        "loss_curve_equal": _losses(ref) == _losses(hit),
    }


def _hashes(out: Path) -> dict[str, str]:
    files = sorted(out.glob("*-*.tar")) + sorted(out.glob("*-*.idx"))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def build_part(work: Path, kills: int, rng: random.Random, timeout_s: float) -> dict[str, Any]:
    src, _ = make_sources(work)
    ref, hit = work / "build_ref", work / "build_killed"
    for d in (ref, hit):
        shutil.rmtree(d, ignore_errors=True)
        d.with_suffix(".log").unlink(missing_ok=True)

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "data_prep.build", "--source", "ucf101", "--root", str(src), "--out",
                str(out), "--flow", "dis", "--height", "32", "--width", "40", "--workers", "1", "--shard-size", "3",
                "--no-progress"]  # fmt: skip

    full_s = _run(cmd(ref), work / "build_ref.log", timeout_s)
    n = sum(SYNTHETIC["num_classes"] * SYNTHETIC[k] for k in ("train_per_class", "test_per_class"))

    def progress() -> int:
        return len(list((hit / ".work").glob("*/meta.json"))) if (hit / ".work").is_dir() else 0

    points = []
    # targets up to n: n kills while packing the shards (every video cached, before the manifest)
    for target in sorted(rng.choice(range(1, n + 1)) for _ in range(kills)):
        t = max(target, progress() + 1) if progress() < n else n
        points.append(
            _run_and_kill(cmd(hit), work / "build_killed.log", progress, t, rng.uniform(0, 0.3), timeout_s)
        )
    resume_s = _run(cmd(hit), work / "build_killed.log", timeout_s)
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (ref, hit))
    return {
        "kills": points,
        "uninterrupted_s": round(full_s, 1),
        "last_resume_to_end_s": round(resume_s, 1),
        "shard_hashes_equal": _hashes(ref) == _hashes(hit) and bool(_hashes(ref)),
        "manifest_shards_equal": ma["splits"] == mb["splits"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["train", "build", "both"], default="both", help="what to kill")
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs per part (each followed by a restart)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random kill delays")
    ap.add_argument("--work", type=Path, default=Path("runs/kill_resume"), help="scratch folder")
    ap.add_argument("--timeout-s", type=float, default=600, help="limit per process run")
    ap.add_argument(
        "--epochs", type=int, default=12, help="epochs per phase of the training run (2 steps each)"
    )
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(a.seed)
    report: dict[str, Any] = {"seed": a.seed}
    t0 = time.perf_counter()
    if a.part in ("train", "both"):
        report["train"] = train_part(a.work, a.kills, rng, a.timeout_s, a.epochs)
    if a.part in ("build", "both"):
        report["build"] = build_part(a.work, a.kills, rng, a.timeout_s)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=1))
    ok = all(
        v for part in ("train", "build") if part in report
        for k, v in report[part].items() if k.endswith("_equal")
    )  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
