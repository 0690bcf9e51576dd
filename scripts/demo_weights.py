"""The refactor safety net: train the default demo (seed 0, no evaluation) and digest its weights per phase.

A commit that only restructures must leave these digests unchanged (the demo is bit-reproducible on one kind of
machine, not across CPUs: compare two commits on the same machine, never against a record from another one).

    python scripts/demo_weights.py --out /tmp/w_head                     # digests of this checkout -> JSON
    python scripts/demo_weights.py --out /tmp/w_head --against base.json  # ... and exit 1 if any phase differs
    python scripts/demo_weights.py --out /tmp/w --short                  # 3 epochs per phase: a quick check

``--short`` trains 3 epochs per phase (both cycles): every code path of the demo in about a tenth of the time,
for checks while working; a refactor is done when the full run matches.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SHORT = ["schedule.single_epochs=3", "schedule.cross_epochs=3"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, required=True, help="run folder (created; its digests go to OUT.json)"
    )
    ap.add_argument("--short", action="store_true", help="3 epochs per phase instead of the demo's schedule")
    ap.add_argument(
        "--against", type=Path, help="a JSON from an earlier run of this script: exit 1 on a difference"
    )
    ap.add_argument(
        "overrides", nargs="*", help="extra key=value overrides (e.g. for keys renamed since the base)"
    )
    args = ap.parse_args(argv)

    from vicc_fast.bench.demo import train_command, weights_digest

    # The demo's own command (bench demo's, the README's), run by this interpreter's torchrun, without evaluation.
    demo = train_command("vicc", 0, args.out)
    cmd = [sys.executable, "-m", "torch.distributed.run", *demo[1:], "eval.after_phase=false",
           "train.progress=false", *(SHORT if args.short else []), *args.overrides]  # fmt: skip
    log = args.out.with_suffix(".log")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            print(f"error: training failed; its output is in {log}", file=sys.stderr)
            return 2
    # One checkpoint per finished phase; last.pt / previous.pt are copies for resuming.
    phases = [p for p in (args.out / "checkpoints").glob("*.pt") if p.stem not in ("last", "previous")]
    digests = {p.stem: weights_digest(p) for p in sorted(phases, key=lambda p: p.stat().st_mtime)}
    out = {"short": args.short, "command": cmd[1:], "weights_sha256": digests}
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(digests, indent=1))
    if args.against is None:
        return 0
    ref = json.loads(args.against.read_text())["weights_sha256"]
    differ = [ph for ph in ref.keys() | digests.keys() if ref.get(ph) != digests.get(ph)]
    for ph in sorted(differ):
        print(f"DIFFERENT {ph}: {ref.get(ph)} vs {digests.get(ph)}")
    print("same weights at every phase" if not differ else f"{len(differ)} phase(s) differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
