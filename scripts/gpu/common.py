"""What the GPU validation's tools (scripts/gpu/validate.py) share: where the repository is, the Python that runs
the steps, the step deadline's variable, the JSON writer and the summary table.

Only the standard library is imported here and in the tools: the parent process stays small and starts in
milliseconds.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
VALIDATE = Path(__file__).resolve().with_name("validate.py")
"""the command line: the steps run its single-step commands (amp, nvtx, replicate) as child processes"""
DEADLINE_ENV = "VICC_VALIDATE_DEADLINE"  # epoch seconds at which the runner kills the command


def write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)


def table(record: dict[str, Any]) -> str:
    """A validation record (validate.json) as the summary table."""
    lines = [
        f"GPU validation ({'dry run, CPU' if record['dry_run'] else record['env'].get('gpu')}), "
        f"{record.get('wall_s', 0):.0f} s of a {record['budget_s']:.0f} s budget",
        "",
        "| step | status | s | key figure | goals |",
        "|---|---|---|---|---|",
    ]
    for r in record["steps"]:
        lines.append(
            f"| {r['step']} | {r['status']} | {r.get('seconds', 0):.0f} | {r['figure']} | {r['goals']} |"
        )
    return "\n".join(lines)
