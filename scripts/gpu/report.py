"""``validate.py report``: the GPU validation tables of BENCHMARKS.md, generated from the committed records
(benchmarks/results/gpu/<run>/), each step's figure and goals judged again by today's step summaries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scripts.gpu.common import REPO, table
from scripts.gpu.steps import STEPS, Ctx

REPORT_BEGIN = "<!-- gpu-validation:begin (python scripts/gpu/validate.py report --write BENCHMARKS.md) -->"
REPORT_END = "<!-- gpu-validation:end -->"
RESULTS = REPO / "benchmarks" / "results" / "gpu"


def refreshed(run_dir: Path) -> dict[str, Any]:
    """A run's validate.json with each step's figure and goals computed again from its records (status as run)."""
    record = json.loads((run_dir / "validate.json").read_text())
    ctx = Ctx(out=run_dir, data=run_dir, dry=record["dry_run"], scratch=run_dir)
    by_name = {s.name: s for s in STEPS}
    for row in record["steps"]:
        if row["status"] == "skipped":
            continue
        try:
            _, row["figure"], row["goals"] = by_name[row["step"]].summary(ctx)
        except Exception as exc:
            row["figure"], row["goals"] = f"no record ({type(exc).__name__})", ""
    return record


def report(dirs: list[Path]) -> str:
    """The GPU validation tables of BENCHMARKS.md, generated from the committed records."""
    out = [REPORT_BEGIN]
    for d in dirs:
        rec = refreshed(d)
        env = rec["env"]
        commit = f"{(env.get('git_commit') or '?')[:7]}{' + local changes' if env.get('git_dirty') else ''}"
        if env.get("code_commit"):
            commit = env["code_commit"][:7]
        elif (d / "run.json").is_file():  # what ran, when the device's .git could not say (see the file)
            commit = json.loads((d / "run.json").read_text())["code_commit"][:7]
        out += [
            "",
            f"`{d.relative_to(REPO)}`: {env.get('gpu')} (driver {env.get('driver')}), code at commit {commit}, "
            f"{env.get('time')}",
            "",
            *table(rec).splitlines()[2:],
        ]
    out += ["", REPORT_END]
    return "\n".join(out)


def write_report(path: Path, dirs: list[Path]) -> bool:
    """Replace the block between the markers in ``path``; True when the file changed."""
    text = path.read_text()
    if REPORT_BEGIN not in text or REPORT_END not in text:
        raise SystemExit(f"{path}: the markers {REPORT_BEGIN!r} ... {REPORT_END!r} are missing")
    head, rest = text.split(REPORT_BEGIN, 1)
    tail = rest.split(REPORT_END, 1)[1]
    new = head + report(dirs) + tail
    if new != text:
        path.write_text(new)
    return new != text


def result_dirs() -> list[Path]:
    return sorted(d for d in RESULTS.iterdir() if (d / "validate.json").is_file()) if RESULTS.is_dir() else []
