"""The demo and the method comparison as committed records: one JSON per (method, seed).

    python -m vicc_fast.bench demo [--methods vicc,coclr,goca,sview] [--seeds 0,1,2] [--protocols retrieval,...]

For each seed and method it runs exactly the README's commands in subprocesses (the default training command
``torchrun --standalone --nproc_per_node=1 -m vicc_fast.train`` for ViCC, with ``--config configs/compare/<m>.yaml``
on top of the demo config for the others; ``train.seed`` and ``train.out_dir`` added), then the evaluation
protocols of the comparison (``python -m vicc_fast.eval <protocol> --ckpt RUN``), and writes
``<out>/<method>_seed<seed>.json``: machine and versions, commit, commands, the resolved config, wall times with
the load average around them (so a reader can tell a quiet run from a shared one), the table rows the run
produced, the engine's and the evaluation's ``results.json``, and a hash of the weights at the end of every phase
(two records of one seed on one machine with equal hashes are bit-identical runs). A run folder that is already
timed step is not run again (``<run>/record_timing.json``), so an interrupted record resumes. ``python -m vicc_fast.bench
report`` turns the records into the README tables.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vicc_fast.atomic import write_text
from vicc_fast.bench.common import BenchError, environment

METHODS = ("vicc", "coclr", "goca", "sview")
PROTOCOLS = ("retrieval", "cluster", "linear")
DEMO_CONFIG = Path("configs/synthetic_demo.yaml")
# The comparison's evaluation settings (scripts/compare_methods.sh): R@20 too, a 30-epoch linear probe.
EVAL_OVERRIDES = ("eval.retrieval.recall_ks=[1,5,10,20]", "eval.linear.epochs=30")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default="vicc", help="comma list of vicc,coclr,goca,sview (default: vicc)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of train.seed values (default: 0,1,2)")
    p.add_argument(
        "--protocols",
        default="",
        help="comma list of evaluation protocols run after training (retrieval,cluster,linear for the "
        "comparison; default: none, the demo's own per-phase kNN only)",
    )
    p.add_argument("--runs", default="runs/records", help="parent folder of the run folders")
    p.add_argument("--out", default="benchmarks/results/demo", help="folder of the records")


def record_name(method: str, seed: int) -> str:
    return f"{method}_seed{seed}.json"


def train_command(method: str, seed: int, run_dir: Path) -> list[str]:
    """The README's command for ``method`` (the default command for ViCC) with its seed and run folder."""
    cmd = ["torchrun", "--standalone", "--nproc_per_node=1", "-m", "vicc_fast.train"]
    if method != "vicc":
        cmd += ["--config", str(DEMO_CONFIG), "--config", f"configs/compare/{method}.yaml"]
    return [*cmd, f"train.seed={seed}", f"train.out_dir={run_dir}"]


def eval_command(protocol: str, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "vicc_fast.eval", protocol, "--ckpt", str(run_dir), "--no-progress",
            *EVAL_OVERRIDES]  # fmt: skip


def weights_digest(ckpt: Path) -> str:
    """sha256 over the method's tensors (names and bytes, sorted), independent of pickling details."""
    import torch

    from vicc_fast.checkpoint import read_state

    state = read_state(ckpt)  # weights_only, and a damaged or unsafe file named as such
    h = hashlib.sha256()

    def walk(obj: Any, prefix: str) -> None:
        if torch.is_tensor(obj):
            h.update(prefix.encode())
            h.update(obj.detach().contiguous().cpu().numpy().tobytes())
        elif isinstance(obj, dict):
            for k in sorted(obj, key=str):
                walk(obj[k], f"{prefix}{k}.")

    walk(state.get("method", state), "")
    return h.hexdigest()


def _shown(cmd: list[str]) -> str:
    """The command as a user types it (``python`` for this interpreter)."""
    return shlex.join(["python", *cmd[1:]] if cmd[0] == sys.executable else cmd)


def _timed(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` (output to ``log``); wall seconds and the 1-minute load average before and after."""
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    out = {
        "wall_s": round(time.perf_counter() - t0, 1),
        "load_before": load0,
        "load_after": os.getloadavg()[0],
    }
    if rc != 0:
        raise BenchError(f"{shlex.join(cmd)} failed with exit {rc}; its output is in {log}")
    return out


def collect(run_dir: Path, method: str, seed: int, timing: dict[str, Any]) -> dict[str, Any]:
    """The record of one finished run folder."""
    import yaml

    from vicc_fast.eval.report import run_rows

    def doc(rel: str) -> Any:
        p = run_dir / rel
        return json.loads(p.read_text()) if p.is_file() else None

    engine = doc("results.json")
    if engine is None:
        raise FileNotFoundError(f"{run_dir}/results.json is missing: the training did not finish")
    phases = list(engine["phases"])
    digests = {ph: weights_digest(run_dir / "checkpoints" / f"{ph}.pt") for ph in phases}
    return {
        "record": "demo_run",
        "method": method,
        "seed": seed,
        "env": environment(),
        "commands": timing.get("commands", []),
        "timing": timing,
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
        "rows": run_rows(run_dir),
        "weights_sha256": digests,
        "engine_results": engine,
        "eval_results": doc("eval/results.json"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    protocols = [p for p in args.protocols.split(",") if p]
    bad = [m for m in methods if m not in METHODS] + [p for p in protocols if p not in PROTOCOLS]
    if bad:
        raise SystemExit(f"unknown method/protocol {bad}: methods {METHODS}, protocols {PROTOCOLS}")
    out, written = Path(args.out), []
    for seed in seeds:
        for method in methods:
            run_dir = Path(args.runs) / f"{method}_seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            log = run_dir / "record.log"
            # Steps already timed in this run folder are not run again, so an interrupted record resumes and
            # a later call can add protocols without losing the training's wall time.
            tfile = run_dir / "record_timing.json"
            timing: dict[str, Any] = json.loads(tfile.read_text()) if tfile.is_file() else {"commands": []}
            steps = [("train", train_command(method, seed, run_dir))]
            steps += [(p, eval_command(p, run_dir)) for p in protocols]
            for name, cmd in steps:
                if name in timing:
                    continue
                if name == "train":
                    timing["resumed"] = (run_dir / "checkpoints").is_dir()
                timing[name] = _timed(cmd, log)
                timing["commands"].append(_shown(cmd))
                write_text(tfile, json.dumps(timing, indent=1))
            path = out / record_name(method, seed)
            out.mkdir(parents=True, exist_ok=True)
            write_text(path, json.dumps(collect(run_dir, method, seed, timing), indent=1, default=str) + "\n")
            print(f"wrote {path}", flush=True)
            written.append(str(path))
    return {"records": written}
