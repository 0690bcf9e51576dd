"""docs/optical_flow.md's tables, generated from the ``bench flow --json`` records (see vicc_fast.bench.report).

Each generator takes the runs of one record file (a list, appended in order) and renders the runs that carry
what its table shows; a row names the commit of the code it measured.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vicc_fast.bench.common import FLOW_TORCH as TORCH
from vicc_fast.bench.common import FLOW_TORCH_NOCOMPACT as NOCOMPACT
from vicc_fast.bench.common import commits, machine

FLOW_RECORD = Path("benchmarks/results/flow_torch_cpu.json")
RECIPES_RECORD = Path("benchmarks/results/flow_recipes_cpu.json")
COMPACT_RECORD = Path("benchmarks/results/flow_compact_cpu.json")
UCF101_PAIRS = 2.5e6  # UCF101's 13,320 videos of ~186 frames: the flow pairs a full build computes
# What the tvl1-torch code of a commit did differently (the records say which commit they measured, not why
# it matters): earlier commits' rows trace how the CPU speed was reached.
CODE_NOTES = {
    "d7c699e": "median by a 25-value network",
    "642c2d3": "median by a 25-value network",
    "9d85cae": "median by a 25-value network",
    "89cd9b5": "separable median",
}


def _head(*cols: str) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]


def _size(res: dict[str, Any]) -> str:
    h, w = res["size"]
    return f"{h}x{w}"


def _batch(res: dict[str, Any]) -> str:
    """tvl1-torch's batch, whether it compacted, and the code note of the run's commit."""
    t = res["tvl1_torch"]
    text = str(t["batch"])
    if "compact" in t:
        text += ", compaction " + t["compact"]
    return text


def _note(run: dict[str, Any]) -> str:
    return CODE_NOTES.get((run["env"].get("git_commit") or "")[:7], "")


def _where(run: dict[str, Any]) -> str:
    """The run's date and CPU: CPU figures compare only within one machine (records before 2026-12 did not
    name the CPU)."""
    env = run["env"]
    cpu = f"{env['cpu_model']} ({env.get('cpu_simd')})" if env.get("cpu_model") else "CPU not recorded"
    return f"{env.get('time', '?')[:10]}, {cpu}"


def _each(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _table(
    rows: list[dict[str, Any]],
    cols: tuple[str, ...],
    cells: Callable[[dict[str, Any]], list[str]],
    record: Path,
    what: str,
) -> str:
    """A markdown table, one row per run: cells(run), then the code's commit (and what it did differently) and
    where it was measured; a line under it names the machines and the record."""
    if not rows:
        return f"(no {what} record yet: `{record}`)"
    lines = _head(*cols, "code", "measured")
    for r in rows:
        note = f" ({_note(r)})" if _note(r) else ""
        lines.append("| " + " | ".join([*cells(r), f"{commits([r])}{note}", _where(r)]) + " |")
    lines += ["", f"Machines: {machine(rows)}; record `{record}`."]
    return "\n".join(lines)


def accuracy_block(runs: list[dict[str, Any]]) -> str:
    """tvl1-torch against OpenCV's TV-L1 and the ground truth, one row per run that measured both."""

    def cells(r: dict[str, Any]) -> list[str]:
        res, c = r["result"], r["result"]["vs_opencv_tvl1"]
        return [
            _size(res),
            str(res["pairs"]),
            _batch(res),
            f"{c['epe_opencv']:.4f}",
            f"{c['epe_torch']:.4f}",
            f"{c['epe_ratio_torch_over_opencv']:.4f}",
            f"{c['epe_between']:.4f}",
            f"{100 * c['uint8_values_differing']:.2f} % ({100 * c['uint8_values_differing_by_more_than_1']:.3f} %; "
            f"{c['uint8_max_difference']} levels)",
        ]

    cols = ("size", "pairs", "batch", "EPE tvl1 (OpenCV)", "EPE tvl1-torch", "ratio torch / OpenCV",
            "mean EPE between the two", "uint8 values differing (by > 1 level; most)")  # fmt: skip
    rows = [r for r in runs if "vs_opencv_tvl1" in r["result"]]
    return _table(rows, cols, cells, FLOW_RECORD, "accuracy")


def speed_block(runs: list[dict[str, Any]]) -> str:
    """Pairs/s of OpenCV's TV-L1, tvl1-torch and DIS on the same cores, one row per run that timed all three."""

    def cells(r: dict[str, Any]) -> list[str]:
        res, m = r["result"], r["result"]["methods"]
        return [
            _size(res),
            _batch(res),
            str(res["threads"]),
            f"{res['load_avg_1min_at_start']:.1f}",
            f"{m['tvl1']['pairs_per_s']:g} {_each(m['tvl1']['pairs_per_s_each_repeat'])}",
            f"{m[TORCH]['pairs_per_s']:g} {_each(m[TORCH]['pairs_per_s_each_repeat'])}",
            f"{m['dis']['pairs_per_s']:g}",
            f"**{m[TORCH]['speed_over_tvl1']:g}**",
            f"{m[TORCH]['speed_over_dis']:g}",
        ]

    cols = ("size", "tvl1-torch batch", "threads", "load avg at start", "tvl1 (OpenCV) pairs/s [each repeat]",
            "tvl1-torch pairs/s [each repeat]", "DIS pairs/s", "tvl1-torch / tvl1 (median of per-repeat ratios)",
            "tvl1-torch / DIS")  # fmt: skip
    rows = [r for r in runs if {"tvl1", TORCH, "dis"} <= set(r["result"]["methods"])]
    return _table(rows, cols, cells, FLOW_RECORD, "speed")


def profile_block(runs: list[dict[str, Any]]) -> str:
    """Where tvl1-torch's time goes: each block's ms per call and share of one pass, one row per profiled run."""
    blocks = ("inner step", "median", "warp", "resize")

    def cells(r: dict[str, Any]) -> list[str]:
        res, prof = r["result"], r["result"]["tvl1_torch_profile"]
        timed = [prof["blocks"].get(b) for b in blocks]
        return [
            _size(res),
            _batch(res),
            "compiled" if prof["compiled"] else "eager",
            *(f"{x['ms_per_call']:g} ({100 * x['share']:.0f} %)" if x else "" for x in timed),
            f"{prof['total_s']:g} s",
        ]

    cols = ("size", "batch", "mode", *(f"{b}: ms/call (share)" for b in blocks), "whole pass")
    rows = [r for r in runs if "tvl1_torch_profile" in r["result"]]
    return _table(rows, cols, cells, FLOW_RECORD, "profile")


def recipes_block(runs: list[dict[str, Any]]) -> str:
    """The build's two --flow-at recipes per video (the last ``--stored-size`` run)."""
    found = [r for r in runs if r["result"].get("mode") == "recipes"]
    if not found:
        return f"(no recipes record yet: `{RECIPES_RECORD}`)"
    r = found[-1]
    res = r["result"]
    names = {"tvl1": "OpenCV TV-L1", TORCH: "tvl1-torch (CPU, compiled)"}
    lines = _head(
        "method",
        "source: s/video (repeats)",
        "stored: s/video (repeats)",
        "source / stored",
        "EPE at stored size, source / stored",
        "EPE between the recipes",
    )
    for m, row in res["methods"].items():
        src, sto = row["source"], row["stored"]
        lines.append(
            f"| {names.get(m, m)} | {src['s_per_video']:g} {_each(src['s_per_video_each_repeat'])} | "
            f"{sto['s_per_video']:g} {_each(sto['s_per_video_each_repeat'])} | "
            f"{row['cost_source_over_stored']:g}x | {src['epe_at_stored_size']:.3f} / {sto['epe_at_stored_size']:.3f} | "
            f"{row['epe_between_recipes']:.3f} |"
        )
    (sh, sw), (th, tw) = res["source_size"], res["stored_size"]
    lines += [
        "",
        f"{res['videos']} synthetic videos of {res['frames_per_video']} frames at {sw}x{sh}, stored at {th}x{tw}; "
        f"{res['threads']} thread(s), {res['repeats']} alternating repeats, medians; 1-min load average "
        f"{res['load_avg_1min_at_start']:.1f} at the start; EPE against the ground truth (a zero field scores "
        f"{res['zero_flow_epe_at_stored_size']:g}). Code at {commits([r])}, machine: {machine([r])}, "
        f"record `{RECIPES_RECORD}`, command: `{res['command']}`.",
    ]
    return "\n".join(lines)


def compact_block(runs: list[dict[str, Any]]) -> str:
    """tvl1-torch with and without compaction, side by side (``--compact both``), one row per run."""

    def cells(r: dict[str, Any]) -> list[str]:
        res, m = r["result"], r["result"]["methods"]
        work = [
            res.get(k, {}).get("step_work_active")
            for k in ("tvl1_torch_profile_nocompact", "tvl1_torch_profile")
        ]
        return [
            _size(res),
            str(res["pairs"]),
            str(res["tvl1_torch"]["batch"]),
            str(res["threads"]),
            " / ".join(f"{100 * w:.0f} %" for w in work) if None not in work else "not profiled",
            f"{m[NOCOMPACT]['pairs_per_s']:g} {_each(m[NOCOMPACT]['pairs_per_s_each_repeat'])}",
            f"{m[TORCH]['pairs_per_s']:g} {_each(m[TORCH]['pairs_per_s_each_repeat'])}",
            f"**{m[TORCH][f'speed_over_{NOCOMPACT}']:g}x**",
            f"{res['compact_vs_nocompact']['max_abs_difference']:g}",
        ]

    cols = ("size", "pairs", "batch", "threads", "inner-step work on active pairs: whole batch / compacted",
            "pairs/s whole batch [each repeat]", "pairs/s compacted [each repeat]",
            "compacted / whole (median of per-repeat ratios)", "max flow difference")  # fmt: skip
    rows = [r for r in runs if "compact_vs_nocompact" in r["result"]]
    return _table(rows, cols, cells, COMPACT_RECORD, "compaction")


def extraction_block(runs: list[dict[str, Any]]) -> str:
    """What extracting UCF101's flow costs on CPU cores at the last measured per-core speed at 320x240."""
    rows = [
        r
        for r in runs
        if r["result"]["size"] == [240, 320] and {"tvl1", TORCH} <= set(r["result"]["methods"])
    ]
    if not rows:
        return f"(no 320x240 speed record yet: `{FLOW_RECORD}`)"
    r = rows[-1]
    m, threads = r["result"]["methods"], r["result"]["threads"]
    hours = {k: UCF101_PAIRS / (m[k]["pairs_per_s"] / threads) / 3600 for k in ("tvl1", TORCH)}
    return (
        f"On CPU cores (one build process per core), at the last measured speed at 320x240 ({_where(r)}, code "
        f"{commits([r])}: tvl1-torch {m[TORCH]['pairs_per_s']:g} and OpenCV's TV-L1 {m['tvl1']['pairs_per_s']:g} "
        f"pairs/s on {threads} thread(s)), UCF101's ~2.5 million pairs take about {hours[TORCH]:.0f} core-hours "
        f"with tvl1-torch and {hours['tvl1']:.0f} with OpenCV, e.g. {hours[TORCH] / 32:.1f} h against "
        f"{hours['tvl1'] / 32:.1f} h on 32 cores if the cores scale alike (a 2-core machine cannot show that). "
        f"Record `{FLOW_RECORD}`; on a GPU: below."
    )
