"""``validate.py run``: the steps in order, each command a child process in its own process group under a
timeout (a hang or a crash costs that step only; DALI threads and DataLoader workers die with it), each step's
JSON under ``--out`` as soon as the step ends, ``validate.json`` (every step so far) kept up to date, and one
summary table at the end. ``--dry-run`` runs the same steps on the CPU with tiny shapes."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.gpu.common import DEADLINE_ENV, REPO, table, write_json
from scripts.gpu.sets import make_data
from scripts.gpu.steps import STEPS, Ctx, Step


def run_cmd(cmd: list[str], env_extra: dict[str, str], timeout: float, log) -> int | None:
    """Run ``cmd`` in its own process group; on timeout kill the whole group. The return code, None on timeout."""
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1", DEADLINE_ENV: str(time.time() + timeout)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    if "TRITON_INTERPRET" not in env_extra:
        env.pop("TRITON_INTERPRET", None)
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        rc: int | None = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers too (DALI threads, DataLoader workers)
        proc.wait()
    return rc


def run(args: argparse.Namespace, all_steps: list[Step] = STEPS) -> int:
    """The steps of ``all_steps`` that ``--only`` names (else the default ones); 0 when every one passed."""
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data).resolve()
    scratch = Path(
        args.scratch or ("/tmp/vicc_gpu_validate" if not args.dry_run else out / "scratch")
    ).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    if args.dry_run and not (data / "lb" / "manifest.json").is_file():
        print(f"dry run: building the tiny sets in {data}", flush=True)
        make_data(data, tiny=True)
    for need in ("lb", "codes", "ramps"):
        if not (data / need / "manifest.json").is_file():
            print(
                f"validate: {data / need}/manifest.json is missing: run scripts/gpu/prepare.sh first",
                file=sys.stderr,
            )
            return 2
    ctx = Ctx(out=out, data=data, dry=args.dry_run, scratch=scratch)
    only = [s for s in args.only.split(",") if s] if args.only else [s.name for s in all_steps if s.default]
    unknown = set(only) - {s.name for s in all_steps}
    if unknown:
        print(
            f"validate: unknown step(s) {sorted(unknown)}; steps: {[s.name for s in all_steps]}",
            file=sys.stderr,
        )
        return 2
    steps = [s for s in all_steps if s.name in only]
    for s in steps:  # a previous run's records must not pass for this run's
        for p in out.glob(f"{s.name}*.json"):
            p.unlink()
    record: dict[str, Any] = {"dry_run": args.dry_run, "budget_s": args.budget, "env": _env(), "steps": []}
    t_start = time.perf_counter()
    with open(out / "validate.log", "a") as log:
        for i, s in enumerate(steps):
            left = args.budget - (time.perf_counter() - t_start)
            reserve = sum(min(20.0, x.timeout) for x in steps[i + 1 :])  # later steps keep a chance to run
            # the dry run has no per-step cap but the budget: its steps are short unless the machine is busy
            limit = min(args.budget if args.dry_run else s.timeout, left - reserve)
            row: dict[str, Any] = {"step": s.name, "what": s.what, "limit_s": round(limit, 1)}
            if limit < 5:
                row.update(status="skipped", figure="no time left in the budget", goals="", seconds=0.0)
            else:
                print(f"[{s.name}] {s.what} (limit {limit:.0f} s) ...", flush=True)
                row.update(_run_step(s, ctx, limit, log))
            record["steps"].append(row)
            record["wall_s"] = round(time.perf_counter() - t_start, 1)
            write_json(out / "validate.json", record)  # after every step: a killed run keeps what it did
            print(f"[{s.name}] {row['status']} {row.get('seconds', 0):.0f} s: {row['figure']}", flush=True)
            if row["goals"]:
                print(f"[{s.name}]   {row['goals']}", flush=True)
    print(table(record))
    (out / "summary.md").write_text(table(record) + "\n")
    return 0 if all(r["status"] == "pass" for r in record["steps"]) else 1


def _run_step(s: Step, ctx: Ctx, limit: float, log) -> dict[str, Any]:
    """One step's commands within ``limit`` seconds, then its summary: the step's row of validate.json."""
    t0 = time.perf_counter()
    rcs = []
    cmds = s.commands(ctx)
    for j, (cmd, env_extra) in enumerate(cmds):
        # each command gets an equal share of what is left (unused time carries over), so that
        # one slow command (bf16 training) cannot starve the next (fp16)
        share = (limit - (time.perf_counter() - t0)) / (len(cmds) - j)
        rc = run_cmd(cmd, env_extra, share, log)
        rcs.append(rc)
        if rc is None:
            break
    try:
        ok, fig, goals = s.summary(ctx)
    except Exception as exc:  # no or partial record: say so instead of stopping the validation
        ok, fig, goals = False, f"no summary: {type(exc).__name__}: {exc}", ""
    if None in rcs:
        status = "timeout"
    elif any(rc != 0 for rc in rcs) or not ok:
        status = "FAIL"
    else:
        status = "pass"
    return {"seconds": round(time.perf_counter() - t0, 1), "returncodes": rcs, "status": status,
            "figure": fig, "goals": goals}  # fmt: skip


def _env() -> dict[str, Any]:
    env: dict[str, Any] = {
        # the device gets the working tree with the session's starting .git: prepare.sh prints the call with
        # the commit of the code, so the record names what ran
        "code_commit": os.environ.get("VICC_CODE_COMMIT"),
        "python": sys.version.split()[0],
        "host": os.uname().nodename,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        env["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                               capture_output=True, text=True).stdout.strip())  # fmt: skip
    except OSError:
        env["git_commit"] = None
    try:
        q = "--query-gpu=name,driver_version,memory.total"
        env["gpu"], env["driver"], env["gpu_memory"] = (
            x.strip()
            for x in subprocess.run(
                ["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            )
            .stdout.splitlines()[0]
            .split(",")  # fmt: skip
        )
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        env["gpu"] = None
    return env
