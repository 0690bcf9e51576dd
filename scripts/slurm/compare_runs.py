"""Compare two training runs of the same config: the per-step losses in metrics.jsonl and every tensor of the
latest checkpoint (model, prototypes, optimiser state). Used by local_cluster.sh to show that a 2-node Slurm job
(one torchrun agent per node, c10d rendezvous) trains exactly what a 2-process torchrun on one node trains, and
that a stopped/requeued job resumed from its checkpoint ends where an uninterrupted run ends.

Usage: python scripts/slurm/compare_runs.py RUN_A RUN_B [--atol 0]   (exit 0 = equal within atol, 1 = not)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vicc_fast import checkpoint as ckpt


def losses(run: Path) -> dict[tuple[str, int], float]:
    """(phase, step) -> loss from metrics.jsonl; a resumed run rewrites redone steps, the last line wins."""
    out: dict[tuple[str, int], float] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out[(rec["phase"], rec["step"])] = rec["loss"]
    return out


def tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out.update(tensors(v, f"{prefix}/{k}"))
    return out


def compare(a: Path, b: Path, atol: float) -> dict:
    la, lb = losses(a), losses(b)
    ca, cb = ckpt.load(ckpt.latest_path(a)), ckpt.load(ckpt.latest_path(b))
    # Weights and optimiser state; the RNG states differ by design between launchers (per-process generators).
    ta, tb = (
        tensors({"method": ca["method"], "optimizer": ca["optimizer"]}),
        tensors({"method": cb["method"], "optimizer": cb["optimizer"]}),
    )
    common = sorted(set(la) & set(lb))
    loss_diff = max((abs(la[k] - lb[k]) for k in common), default=float("inf"))
    diffs = {k: (ta[k].double() - tb[k].double()).abs().max().item() for k in ta if k in tb and ta[k].numel()}
    res = {
        "steps_a": len(la),
        "steps_b": len(lb),
        "final_position_a": [ca["phase"], ca["epoch"], ca["step"], ca["global_step"]],
        "final_position_b": [cb["phase"], cb["epoch"], cb["step"], cb["global_step"]],
        "max_abs_loss_diff": loss_diff,
        "tensors": len(diffs),
        "tensors_missing": sorted(set(ta) ^ set(tb)),
        "max_abs_tensor_diff": max(diffs.values(), default=float("inf")),
        "final_loss_a": la[max(la, key=lambda k: k[1])] if la else None,
    }
    res["equal"] = (
        len(la) == len(lb) == len(common)
        and res["final_position_a"] == res["final_position_b"]
        and not res["tensors_missing"]
        and loss_diff <= atol
        and res["max_abs_tensor_diff"] <= atol
    )
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument(
        "--atol", type=float, default=0.0, help="largest allowed absolute difference (default: 0)"
    )
    args = ap.parse_args(argv)
    try:
        res = compare(args.run_a, args.run_b, args.atol)
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(res))
    return 0 if res["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
