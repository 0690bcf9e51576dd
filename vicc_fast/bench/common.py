"""What every benchmark record carries, and the atomic JSON append."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vicc_fast.atomic import write_text

if TYPE_CHECKING:
    import argparse

    from vicc_fast.config import SyntheticConfig


class BenchError(ValueError):
    """An input a benchmark cannot use, or a run it started that failed: ``python -m vicc_fast.bench`` prints
    it as one ``error:`` line (a ValueError: bad records were ValueErrors before this class)."""


# The labels under which bench flow records tvl1-torch with and without compaction (report_flow reads them).
FLOW_TORCH = "tvl1-torch"
FLOW_TORCH_NOCOMPACT = "tvl1-torch-nocompact"


def cpu_description(cpuinfo: str | None = None) -> dict[str, Any]:
    """CPU model and widest vector extension: float sums are bit-exact on one machine, not across these."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {"cpu_model": platform.processor() or None, "cpu_simd": None}
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    simd = next((f for f in ("avx512f", "avx2", "avx", "sse4_2") if f in flags), None)
    return {"cpu_model": fields.get("model name") or platform.processor() or None, "cpu_simd": simd}


def environment() -> dict[str, Any]:
    """Machine, versions and git commit, so a figure can always be traced to where it was measured."""
    import torch

    env: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        **cpu_description(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for mod in ("triton", "nvidia.dali"):
        try:
            env[mod] = __import__(mod, fromlist=["__version__"]).__version__
        except Exception:
            env[mod] = None
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except Exception:
        env["git_commit"] = None
    return env


def write_json(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append ``record`` to the JSON list in ``path`` atomically (temp file, fsync, rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(p.read_text()) if p.exists() else []
    if not isinstance(records, list):
        records = [records]
    records.append(record)
    write_text(p, json.dumps(records, indent=2, default=str))


def load_bench(path: str | Path) -> list[dict[str, Any]]:
    """A ``--json`` benchmark file (a list of runs, appended in order); missing: none."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        runs = json.loads(p.read_text())
    except ValueError as exc:
        raise BenchError(f"{p}: not a JSON record ({exc})") from None
    if not isinstance(runs, list):
        raise BenchError(f"{p}: expected a list of benchmark runs")
    return runs


def commits(recs: list[dict[str, Any]]) -> str:
    """The short git commits of the records' code, sorted, comma-separated."""
    return (
        ", ".join(sorted({r["env"]["git_commit"][:7] for r in recs if r["env"].get("git_commit")}))
        or "unknown"
    )


def machine(recs: list[dict[str, Any]]) -> str:
    """Each distinct machine of the records: GPU, cores, and the CPU model where the record names it (records
    before it did say so)."""
    envs = {
        (r["env"].get("cpu_count"), r["env"].get("gpu"), r["env"].get("cpu_model"), r["env"].get("cpu_simd"))
        for r in recs
    }
    out = []
    for n, gpu, model, simd in sorted(envs, key=str):
        cpu = f"{model} ({simd})" if model and simd else model or "CPU model not recorded"
        out.append(f"{gpu or 'no GPU'}, {n} CPU cores, {cpu}")
    return "; ".join(out)


def add_synthetic_arguments(
    p: Any, height: int, width: int, seed_help: str = "seed of the synthetic set"
) -> None:
    """The synthetic set's size flags (--classes, --train-per-class, --test-per-class, --frames, --height,
    --width, --seed) on parser or group ``p``; :func:`synthetic_config` reads them back."""
    p.add_argument("--classes", type=int, default=10, help="classes of the synthetic set")
    p.add_argument("--train-per-class", type=int, default=40, help="training videos per class")
    p.add_argument("--test-per-class", type=int, default=10, help="test videos per class")
    p.add_argument("--frames", type=int, default=48, help="frames per video")
    p.add_argument("--height", type=int, default=height, help="video height")
    p.add_argument("--width", type=int, default=width, help="video width")
    p.add_argument("--seed", type=int, default=0, help=seed_help)


def synthetic_config(args: argparse.Namespace) -> SyntheticConfig:
    """The SyntheticConfig of :func:`add_synthetic_arguments`' flags."""
    from vicc_fast.config import SyntheticConfig

    return SyntheticConfig(
        num_classes=args.classes,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        frames=args.frames,
        height=args.height,
        width=args.width,
        seed=args.seed,
    )
