"""Step-time breakdown plot from the step benchmark's JSON records.

``python -m vicc_fast.bench.plots benchmarks/results/step_cpu.json -o benchmarks/step_breakdown_cpu.png [--table]``

One horizontal stacked bar per (grid point, variant): data-wait / forward / loss head / backward / optimiser /
other, in ms per step, the fast path directly above its baseline, with clips/s at the end of each bar. By default
the newest record of each grid point is drawn (``--all`` draws every record).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vicc_fast.bench.step import PARTS

COLORS = {
    "data_wait": "#d62728",
    "forward": "#1f77b4",
    "loss_head": "#ff7f0e",
    "backward": "#2ca02c",
    "optimizer": "#9467bd",
    "other": "#7f7f7f",
}


def _label(point: dict[str, Any]) -> str:
    cl = "cl" if point.get("channels_last") else "no-cl"
    comp = " compile" if point.get("compile") else ""
    q = "" if point.get("queue", True) else " no-queue"
    return (
        f"{point['backbone']} {point['frames']}x{point['stride']} {point['crop']}px b{point['batch']} "
        f"{point['amp']} {cl}{comp} {point['phase']}{q}"
    )


def _step_rows(records: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(point label [GPU name or CPU], row) of every step-benchmark row, in record order."""
    for rec in records:
        if rec.get("benchmark") != "step":
            continue
        where = (rec.get("env") or {}).get("gpu") or "CPU"
        for row in rec["result"]["rows"]:
            yield f"{_label(row['point'])} [{where}]", row


def bars(records: list[dict[str, Any]], newest_only: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """(label, measurement) pairs in drawing order from a list of step-benchmark records."""
    rows: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for key, row in _step_rows(records):
        drawn = [(f"{key}  {v}", row[v]) for v in ("fast", "baseline") if v in row]
        if newest_only:
            rows[key] = drawn
        else:
            rows.setdefault(key, []).extend(drawn)
    return [b for group in rows.values() for b in group]


def step_table(records: list[dict[str, Any]], newest_only: bool = True) -> str:
    """Markdown table of step-benchmark rows: fast, baseline and their ratio per grid point."""
    rows: dict[str, dict[str, Any]] = {}
    for key, row in _step_rows(records):
        if newest_only or key not in rows:
            rows[key] = row
    head = (
        "| point | variant | clips/s | step ms | data-wait | forward | loss head | backward | optimiser | "
        "data-wait % | loss head % | peak |\n|" + " --- |" * 12
    )
    lines = [head]
    for key, row in rows.items():
        for v in ("fast", "baseline"):
            if v not in row:
                continue
            m = row[v]
            b = m["breakdown_ms"]
            peak = m.get("peak_mem_mb")
            peak_s = (
                f"{peak:.0f} MB GPU" if peak is not None else f"{m.get('peak_rss_mb_process', 0):.0f} MB RSS"
            )
            lines.append(
                f"| {key if v == 'fast' else ''} | {v} | {m['clips_per_s']:.2f} | {m['step_ms']:.0f} | "
                + " | ".join(f"{b[p]:.0f}" for p in PARTS)
                + f" | {m['data_wait_pct']:.1f} | {m['loss_head_pct']:.1f} | {peak_s} |"
            )
        if "ratio" in row:
            r = row["ratio"]
            lines.append(
                f"| | fast / baseline | **{r['clips_per_s']:.2f}x** | | "
                + " | ".join(f"{r[p + '_speedup']:.2f}x" for p in PARTS)
                + " | | | |"
            )
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], out: Path, newest_only: bool = True, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = bars(records, newest_only)
    if not drawn:
        raise ValueError("no step-benchmark rows in the records")
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(drawn) + 2.0))
    labels = []
    for i, (label, m) in enumerate(reversed(drawn)):
        left = 0.0
        for part in (*PARTS, "other"):
            w = max(0.0, m["breakdown_ms"].get(part, 0.0))
            ax.barh(i, w, left=left, color=COLORS[part], label=part if i == 0 else None)
            left += w
        ax.text(left, i, f"  {m['clips_per_s']:.1f} clips/s", va="center", fontsize=8)
        labels.append(label)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("ms per training step (best of the repeats)")
    ax.set_title(
        title
        or "Training step: fast (DALI + kernels.backend=auto) vs baseline (DataLoader + eager loss head)",
        fontsize=10,
    )
    ax.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.22 if len(drawn) < 6 else -0.08), fontsize=8, ncols=6
    )
    ax.set_xlim(0, ax.get_xlim()[1] * 1.15)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vicc_fast.bench.plots", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("json", nargs="+", type=Path, help="step-benchmark JSON files (lists of records)")
    ap.add_argument("-o", "--out", type=Path, default=None, help="PNG to write")
    ap.add_argument("--table", action="store_true", help="print a markdown table of the step records")
    ap.add_argument(
        "--all", action="store_true", help="draw every record, not only the newest per grid point"
    )
    ap.add_argument("--title", default="", help="plot title")
    args = ap.parse_args(argv)
    records: list[dict[str, Any]] = []
    for p in args.json:
        if not p.is_file():
            ap.error(f"{p}: no such file")
        data = json.loads(p.read_text())
        records += data if isinstance(data, list) else [data]
    if args.table:
        print(step_table(records, not args.all))
    if args.out is None:
        if not args.table:
            ap.error("give -o OUT.png and/or --table")
        return 0
    try:
        print(plot(records, args.out, not args.all, args.title))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
