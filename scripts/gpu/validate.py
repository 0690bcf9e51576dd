"""GPU validation in one command: the steps of docs/gpu_validation.md, each under its own timeout.

    python scripts/gpu/validate.py run [--dry-run] [--out DIR] [--data DIR] [--only a,b] [--budget S]
    python scripts/gpu/validate.py make-data --out DIR [--tiny]       # the sets that travel (prepare.sh)
    python scripts/gpu/validate.py amp ... / nvtx ...                 # single steps, called by ``run``
    python scripts/gpu/validate.py report [--write BENCHMARKS.md]     # the GPU tables from the records

``run`` executes the steps below in order, each as a child process in its own process group under a timeout
(a hang or a crash costs that step only; DALI threads and DataLoader workers die with it), writes each step's
JSON under ``--out`` as soon as the step ends, keeps ``validate.json`` (every step so far) up to date, and
prints one summary table at the end. ``--dry-run`` runs the same steps on the CPU with tiny shapes (Triton
interpreter, DALI CPU decoder, tiny backbone), so the script is exercised by the test suite between GPU loans.

This file is the command line; each tool is a module beside it: runner.py (run), steps.py (what each step runs
and how it is judged), sets.py (make-data), single_steps.py (amp, nvtx, replicate), report.py (report), and
common.py (what they share). Only the standard library is imported: the parent process stays small and starts
in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a script, sys.path[0] is scripts/gpu: the tools are imported as the package scripts.gpu from the
# repository (first on the path), never by their bare names; the project's own modules, imported lazily by the
# single steps and the summaries, are then importable where the project is not installed (the GPU machine).
sys.path[:] = [str(HERE.parents[1]), *(p for p in sys.path if not p or Path(p).resolve() != HERE)]

from scripts.gpu import report, runner, sets, single_steps, steps  # noqa: E402
from scripts.gpu.steps import AMP_MODES, STEPS  # noqa: E402

# The steps and their pass criteria are written once, in steps.py's docstring; --help shows them after this file's.
HELP = f"{__doc__}\n{steps.__doc__.split(chr(10) + chr(10), 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu/validate.py", description=HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="every step, each under its own timeout, and a summary table")
    r.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny shapes: exercises the script without a GPU"
    )
    r.add_argument(
        "--out", default=os.environ.get("OUT") or "benchmarks/tmp/gpu", help="folder for the JSON records"
    )
    r.add_argument("--data", default="gpu_data", help="folder of the sets built by prepare.sh (make-data)")
    r.add_argument("--scratch", default=None, help="scratch folder (replicated shards, runs, trace)")
    r.add_argument("--only", default="", help=f"comma list of steps: {','.join(s.name for s in STEPS)}")
    r.add_argument(
        "--budget", type=float, default=None, help="wall seconds for all steps (default 470 GPU, 290 dry)"
    )
    m = sub.add_parser("make-data", help="build the sets that travel to the GPU machine")
    m.add_argument("--out", required=True, help="output folder")
    m.add_argument("--tiny", action="store_true", help="small sets for the CPU dry run")
    a = sub.add_parser("amp", help="one AMP training run, judged from its metrics.jsonl")
    a.add_argument("--root", required=True, help="shard folder (the replicated set: 1200 videos on the GPU)")
    a.add_argument("--amp", choices=AMP_MODES, required=True, help="mixed precision mode")
    a.add_argument("--run", required=True, help="run folder")
    a.add_argument("--json", required=True, help="record to write")
    a.add_argument(
        "--trace", default="", help="torch.profiler trace folder (profiles 5 steps, with NVTX ranges)"
    )
    a.add_argument("--dry-run", action="store_true", help="tiny CPU run")
    n = sub.add_parser("nvtx", help="check the step ranges in a torch.profiler trace")
    n.add_argument("--trace", required=True, help="trace folder")
    n.add_argument("--json", required=True, help="record to write")
    rp = sub.add_parser("replicate", help="replicate a shard set K times into DST")
    rp.add_argument("--root", required=True, help="shard folder")
    rp.add_argument("--k", type=int, required=True, help="copies of each sample")
    rp.add_argument("--dst", required=True, help="destination folder")
    rep = sub.add_parser("report", help="the GPU tables of BENCHMARKS.md from benchmarks/results/gpu/*")
    rep.add_argument("--write", default="", help="replace the marked block in this file (else print it)")
    args = p.parse_args(argv)
    try:
        return _dispatch(args)
    except SystemExit as exc:  # the tools' own checks name what they could not use
        if not isinstance(exc.code, str):
            raise
        print(f"error: {exc.code.removeprefix('error: ')}", file=sys.stderr)
        return 1
    except _input_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _input_errors() -> tuple[type[Exception], ...]:
    """What the package raises on purpose about a given input (settings, shards, checkpoints): one line each."""
    from vicc_fast.bench.common import BenchError
    from vicc_fast.checkpoint import CheckpointError
    from vicc_fast.config import ConfigError
    from vicc_fast.data.manifest import DataError

    return (BenchError, ConfigError, DataError, CheckpointError, FileNotFoundError)


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "report":
        if args.write:
            changed = report.write_report(Path(args.write), report.result_dirs())
            print(f"{args.write}: {'updated' if changed else 'already up to date'}")
        else:
            print(report.report(report.result_dirs()))
        return 0
    if args.cmd == "run":
        if args.budget is None:
            args.budget = 290.0 if args.dry_run else 470.0
        return runner.run(args)
    if args.cmd == "make-data":
        sets.make_data(Path(args.out), args.tiny)
        return 0
    if args.cmd == "amp":
        return single_steps.amp(args)
    if args.cmd == "nvtx":
        return single_steps.nvtx(args)
    single_steps.replicate(Path(args.root), args.k, Path(args.dst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
