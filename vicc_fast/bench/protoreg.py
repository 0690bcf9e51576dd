"""GOCA's prototype initialisation (eq. 11): how far apart it leaves the prototypes.

For each (N prototypes, D dims) shape, random unit prototypes (seeded) are regularised by the annealed
per-prototype steps (``method.goca.proto_reg_init_anneal=true``, the default) and by eq. 11's constant
mean-gradient steps (before issue 25); reported: the mean over prototypes of the cosine to the nearest other
prototype (eq. 11's loss; lower = further apart) and its largest value. Where N <= D + 1 the optimum is the
regular simplex, cosine -1/(N-1), reported as ``simplex``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

from vicc_fast.methods.goca import regularise_prototypes_


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shapes",
        default="300x128,32x32,1000x128",
        help="N x D prototype shapes (ViCC's K with a 128-d head; the demo's; the GOCA paper config's)",
    )
    p.add_argument("--steps", default="1000", help="comma-separated numbers of initialisation steps")
    p.add_argument(
        "--mean-steps", default="1000,20000", help="steps of the mean-gradient variant (constant lr)"
    )
    p.add_argument("--lr", type=float, default=0.1, help="proto_reg_init_lr")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prototypes")


def _measure(w: torch.Tensor) -> dict[str, float]:
    nearest = (w @ w.t() - 2 * torch.eye(w.shape[0])).max(dim=1).values
    return {"mean_largest_cosine": float(nearest.mean()), "max_cosine": float(nearest.max())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for shape in args.shapes.split(","):
        n, d = (int(x) for x in shape.lower().split("x"))
        w0 = F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(args.seed)), dim=1)
        base: dict[str, Any] = {"N": n, "D": d, "simplex": -1.0 / (n - 1) if n <= d + 1 else None}
        rows.append({**base, "variant": "random", "steps": 0, **_measure(w0)})
        plan = [(True, int(s)) for s in args.steps.split(",")]
        plan += [(False, int(s)) for s in args.mean_steps.split(",")]
        for anneal, steps in plan:
            w = w0.clone()
            regularise_prototypes_(w, steps, args.lr, anneal=anneal)
            variant = "annealed (default)" if anneal else "mean gradient (before issue 25)"
            rows.append({**base, "variant": variant, "steps": steps, **_measure(w)})
            print(rows[-1], flush=True)
    return {"lr": args.lr, "seed": args.seed, "rows": rows}
