"""Doc tables generated from committed records, so that a number cannot drift from its source.

    python -m vicc_fast.bench report            # print every generated block
    python -m vicc_fast.bench report --write    # rewrite the blocks in the docs
    python -m vicc_fast.bench report --check    # exit 1 when a doc differs from its records (the tests do this)

A block sits between ``<!-- NAME:begin ... -->`` and ``<!-- NAME:end -->`` in a markdown file; everything between
the markers is generated. Blocks: the demo (README.md: ViCC's per-phase kNN over the seeds of
``benchmarks/results/demo/vicc_seed*.json``; vicc_fast/eval/README.md: every protocol of ViCC), the comparison (README.md: stage-2 / joint
rows; and configs/compare/README.md: every row, from ``benchmarks/results/compare/``) over the seeds that have a
record for every method. The two folders are apart because a comparison is only like for like when every method's
records come from one demo recipe: a change of the demo recipe starts a new set of demo records at once, while the
comparison keeps the records of the recipe it was run with (each names its commit and resolved config) until it
is run again. The data README's three-loader table comes from ``benchmarks/results/loader_three_cpu.json``
(``python -m vicc_fast.bench loader --backends dali,torch,jpeg_lmdb ... --json``). docs/optical_flow.md's tables come
from the ``bench flow`` records (vicc_fast/bench/report_flow.py). The README's times of the path with UCF101 come
from the flow record and the GPU validation's training record (``benchmarks/results/gpu/``).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vicc_fast.atomic import write_text
from vicc_fast.bench import report_flow
from vicc_fast.bench.common import BenchError, commits, load_bench, machine
from vicc_fast.eval.report import rows_from_engine

ROOT = Path(__file__).resolve().parents[2]
RECORDS = Path("benchmarks/results/demo")
COMPARE_RECORDS = Path("benchmarks/results/compare")
LOADER_RECORD = Path("benchmarks/results/loader_three_cpu.json")
LOADER_BACKENDS = ("dali", "torch", "jpeg_lmdb")
SUPERVISED_RECORD = Path("benchmarks/results/supervised_cpu.json")
JITTER_RECORD = Path("benchmarks/results/loader_jitter_cpu.json")
BUILD_RECORD = Path("benchmarks/results/build_cpu.json")
KERNELS_RECORD = Path("kernels/bench_cpu.json")
GPU_TRAIN_RUN = Path("benchmarks/results/gpu/h200_run2")  # the first training rate at the paper shape
UCF101_TRAIN_VIDEOS = 9537  # split 1's trainlist01.txt
JITTER_CMD = (
    "python -m vicc_fast.bench loader --root /tmp/lb/shards --replicate 8 --batch 8 --steps 20 --warmup 3 "
    "--repeat 3 --set data.dtype=float32 --variants released:data.augment.color_jitter=released "
    "affine:data.augment.color_jitter=affine --json benchmarks/results/loader_jitter_cpu.json"
)
METHOD_NAMES = {"vicc": "ViCC", "coclr": "CoCLR", "goca": "GOCA", "sview": "SView"}
DEMO_ROWS = ("RGB-1", "Flow-1", "RGB-2", "Flow-2", "R+F-2")
DEMO_COLS = ("R@1", "R@5", "R@10")
COMPARE_COLS = ("R@1", "R@5", "R@10", "R@20", "linear", "kmeans acc", "kmeans nmi", "proto acc")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", default=str(RECORDS), help="folder of the demo records")
    p.add_argument("--compare-records", default=str(COMPARE_RECORDS), help="folder of the comparison records")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="rewrite the generated blocks in the docs")
    g.add_argument("--check", action="store_true", help="exit 1 when a doc's block differs from its records")


def load_records(folder: str | Path) -> list[dict[str, Any]]:
    """Every ``*_seed*.json`` record, sorted by method then seed."""
    recs = []
    for p in sorted(Path(folder).glob("*_seed*.json")):
        try:
            rec = json.loads(p.read_text())
        except ValueError as exc:
            raise BenchError(f"{p}: not a JSON record ({exc})") from None
        if rec.get("record") != "demo_run":
            raise BenchError(f"{p}: not a demo_run record")
        recs.append(rec)
    order = list(METHOD_NAMES)
    return sorted(recs, key=lambda r: (order.index(r["method"]), r["seed"]))


def mean_spread(values: list[float]) -> str:
    """'m ± s' (sample standard deviation) for two or more values, the value alone for one."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _label(row: str) -> str:
    return "R+F" if row == "R+F-2" else row


def demo_block(recs: list[dict[str, Any]]) -> str:
    """README: the default command's kNN table over seeds, the per-seed R@1 and the RGB-2 / RGB-1 ratio."""
    vicc = [r for r in recs if r["method"] == "vicc"]
    if not vicc:
        return "(no ViCC records yet: `python -m vicc_fast.bench demo --seeds 0,1,2`)"
    seeds = [r["seed"] for r in vicc]
    # the training command's own per-phase kNN (the eval protocols' rows are the other table's)
    rows = [rows_from_engine(r["engine_results"]) for r in vicc]
    head = ["", *(f"{c} (mean ± sd)" for c in DEMO_COLS), *(f"R@1 seed {s}" for s in seeds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in DEMO_ROWS:
        cells = [mean_spread([rr[row][c] for rr in rows]) for c in DEMO_COLS]
        cells += [f"{rr[row]['R@1']:.2f}" for rr in rows]
        lines.append("| " + " | ".join([_label(row), *cells]) + " |")
    ratios = [rr["RGB-2"]["R@1"] / max(rr["RGB-1"]["R@1"], 1e-9) for rr in rows]
    walls = [r["timing"]["train"] for r in vicc]
    lines += [
        "",
        f"RGB-2 / RGB-1 R@1 per seed: {', '.join(f'{x:.2f}x' for x in ratios)}. "
        f"Wall time of the training command per seed: "
        + ", ".join(
            f"{w['wall_s'] / 60:.1f} min (load {w['load_before']:.1f} -> {w['load_after']:.1f})"
            for w in walls
        )
        + f". {len(vicc)} seed(s), code at {commits(vicc)}, machine: {machine(vicc)}; records: "
        f"`{RECORDS}/vicc_seed*.json`.",
    ]
    return "\n".join(lines)


def _seed_text(use: list[dict[str, Any]], present: list[str], seeds: list[int]) -> str:
    """ "0, 1, 2", or per method where a method has other seeds ("0, 1, 2 (CoCLR: 0, 1)")."""
    own = {m: sorted(r["seed"] for r in use if r["method"] == m) for m in present}
    odd = {m: s for m, s in own.items() if s != seeds}
    text = ", ".join(map(str, seeds))
    if odd:
        text += " (" + "; ".join(f"{METHOD_NAMES[m]}: {', '.join(map(str, s))}" for m, s in odd.items()) + ")"
    return text


def compare_block(
    recs: list[dict[str, Any]],
    stage2_only: bool,
    methods: tuple[str, ...] = (),
    columns: tuple[str, ...] = COMPARE_COLS,
    folder: Path = COMPARE_RECORDS,
) -> str:
    """Method/model rows, mean ± sd over each method's seeds (``methods``: only these; empty = all);
    stage2_only keeps stage-2 / joint rows."""
    use = [r for r in recs if (not methods or r["method"] in methods) and r.get("eval_results") is not None]
    # every record of each method: a method re-measured at fewer seeds than the others keeps its own seeds (the
    # footer names them) instead of cutting the others' down to the seeds all share
    own = [
        sorted(r["seed"] for r in use if r["method"] == m) for m in dict.fromkeys(r["method"] for r in use)
    ]
    seeds = max(own, key=len, default=[])
    present = list(dict.fromkeys(r["method"] for r in use))
    if not present or (not methods and len(present) < 2):
        return (
            "(no records with evaluations yet: `python -m vicc_fast.bench demo --methods vicc,coclr,goca,sview "
            "--protocols retrieval,cluster,linear`)"
        )
    head = ["method", "model", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for m in present:
        mine = [r for r in use if r["method"] == m]
        labels = [lb for lb in mine[0]["rows"] if not lb.endswith("(concat)")]
        if stage2_only:
            labels = [lb for lb in labels if lb.endswith(("-2", "-joint")) or lb == "R+F"]
        for lb in labels:
            cells = []
            for c in columns:
                vals = [r["rows"].get(lb, {}).get(c) for r in mine]
                cells.append("–" if any(v is None for v in vals) else mean_spread(vals))
            lines.append("| " + " | ".join([METHOD_NAMES[m], lb, *cells]) + " |")
    walls = {
        METHOD_NAMES[m]: statistics.median(
            sum(v["wall_s"] for v in r["timing"].values() if isinstance(v, dict) and "wall_s" in v)
            for r in use
            if r["method"] == m
        )
        for m in present
    }
    lines += [
        "",
        f"Mean ± sd over seeds {_seed_text(use, present, seeds)}; median wall time per method (training with its "
        "per-phase kNN, then the protocols): "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in walls.items())
        + f". Code at {commits(use)}; machine: {machine(use)}; records: `{folder}/<method>_seed<n>.json`.",
    ]
    return "\n".join(lines)


def loader_block(runs: list[dict[str, Any]]) -> str:
    """Data README: the three loaders side by side per stream set (the last run of each set counts)."""
    latest: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in runs:
        if r.get("benchmark") == "loader" and all(b in r["result"] for b in LOADER_BACKENDS):
            latest[tuple(r["result"]["streams"])] = r
    if not latest:
        return f"(no three-loader record yet: `{LOADER_RECORD}`)"
    head = ["streams", *(f"{b} samples/s (runs)" for b in LOADER_BACKENDS)]
    head += ["CPU ms/sample " + " / ".join(LOADER_BACKENDS), "dali / jpeg_lmdb", "load at start"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for streams, r in sorted(latest.items(), key=lambda kv: -len(kv[0])):
        res = r["result"]
        cells = [
            f"**{res[b]['samples_per_s']:.2f}** ({', '.join(f'{x:.2f}' for x in res[b]['all_samples_per_s'])})"
            for b in LOADER_BACKENDS
        ]
        cpu = " / ".join(f"{1000 * res[b]['cpu_s_per_sample']:.0f}" for b in LOADER_BACKENDS)
        name = "two-stream" if len(streams) == 2 else f"{'+'.join(streams)} only"
        lines.append(
            f"| {name} | {' | '.join(cells)} | {cpu} | {res['ratio_dali_over_jpeg_lmdb']:.2f}x"
            f" | {res['load_avg_1min_at_start']:.1f} |"
        )
    build = next(iter(latest.values()))["result"]["jpeg_lmdb_build"]
    used = list(latest.values())
    lines += [
        "",
        f"Medians (bold) of alternating runs, one process each. Storage from the same build: "
        f"{build['lmdb_bytes_per_video'] / 1000:.0f} kB per video in the LMDB of JPEG frames (quality "
        f"{build['jpeg_quality']}) against {build['shard_bytes_per_video'] / 1000:.0f} kB in our shards, "
        f"{build['lmdb_bytes_per_video'] / build['shard_bytes_per_video']:.1f}x. Code at {commits(used)}; machine: "
        f"{machine(used)}; record: `{LOADER_RECORD}`.",
    ]
    return "\n".join(lines)


def supervised_block(runs: list[dict[str, Any]]) -> str:
    """README: the supervised reference on the demo set (the last ``bench supervised`` run of the record)."""
    sup = [r for r in runs if r.get("benchmark") == "supervised"]
    if not sup:
        return f"(the supervised reference has no record yet: `python -m vicc_fast.bench supervised --json {SUPERVISED_RECORD}`)"
    r = sup[-1]
    res, st = r["result"], r["result"]["settings"]
    static = res.get("static_control")
    control = (
        f", but {static['accuracy']:.2f} / {static['knn_r1']:.2f} from a single frame (the static control)"
        if static
        else ""
    )
    return (
        f"A supervised tiny RGB 3D CNN trained on the labels reaches test accuracy {res['accuracy']:.2f} and kNN "
        f"R@1 {res['knn_r1']:.2f} on this set from {st['clip_len']}-frame {st['size']} px clips{control}; chance "
        f"{res['chance']:.3f}, {res['num_train']} train / {res['num_test']} test videos, {st['epochs']} epochs, "
        f"{res['total_seconds'] / 60:.1f} min (`python -m vicc_fast.bench supervised --data "
        f"data/synthetic/source`; code at {commits([r])}, machine: {machine([r])}; record: "
        f"`{SUPERVISED_RECORD}`)."
    )


def _jitter_run(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last loader run comparing the released and the one-map colour jitter (``--variants``)."""
    found = [r for r in runs if "ratio_dali_released_over_affine" in r.get("result", {})]
    return found[-1] if found else None


def jitter_cost_block(runs: list[dict[str, Any]]) -> str:
    """Data README: what the released colour jitter costs the loaders on the CPU (the last variants run)."""
    r = _jitter_run(runs)
    if r is None:
        return f"(no jitter-cost record yet: `{JITTER_CMD}`)"
    first = next(x for x in runs if "ratio_dali_released_over_affine" in x.get("result", {}))
    earlier = ""
    if first is not r:
        earlier = (
            f" (its first entry, code at {commits([first])}: the first implementation, float steps with a clip "
            f"each, {first['result']['ratio_dali_released_over_affine']:.2f}x)"
        )
    res = r["result"]
    rel, aff = res["dali/released"], res["dali/affine"]
    torch_part = ""
    if "ratio_torch_released_over_affine" in res:
        torch_part = f", the torch baseline {res['ratio_torch_released_over_affine']:.2f}x"
    return (
        f"Measured ({machine([r])}): the released jitter's steps take DALI from {aff['cpu_s_per_sample'] * 1000:.0f} to "
        f"{rel['cpu_s_per_sample'] * 1000:.0f} CPU ms per {'two-stream ' if len(res['streams']) == 2 else ''}"
        f"sample and to {res['ratio_dali_released_over_affine']:.2f}x the samples/s of the one-map jitter "
        f"(`data.augment.color_jitter=affine`; {rel['samples_per_s']:.2f} against {aff['samples_per_s']:.2f})"
        f"{torch_part}; medians of alternating runs, code at {commits([r])}, record `{JITTER_RECORD}`{earlier}, "
        f"command:\n\n```bash\n"
        f"{JITTER_CMD}\n```"
    )


def jitter_trade_block(runs: list[dict[str, Any]]) -> str:
    """BENCHMARKS.md: the CPU trade-off of the released colour jitter, in one clause."""
    r = _jitter_run(runs)
    if r is None:
        return f"(no jitter-cost record yet: `{JITTER_RECORD}`)"
    ratio = 1 / r["result"]["ratio_dali_released_over_affine"]
    return (
        f"On a CPU-only machine, `data.augment.color_jitter=affine` trades the released jitter's 8-bit steps for one colour "
        f"map: {ratio:.2f}x the DALI samples/s on {r['env'].get('cpu_count', '?')} cores here (`{JITTER_RECORD}`, "
        f"code at {commits([r])})."
    )


def build_block(runs: list[dict[str, Any]]) -> str:
    """docs/shard_format.md: what building and verifying shards cost (the last ``bench build`` run)."""
    found = [r for r in runs if r.get("benchmark") == "build"]
    if not found:
        return f"(no build record yet: `python -m vicc_fast.bench build --json {BUILD_RECORD}`)"
    r = found[-1]
    res = r["result"]
    head = ["flow", "videos", "build: wall s", "CPU s (per video)", "frame pairs / wall s", "rerun, all cached: wall s",
            "verify: wall s / CPU s", "RGB / flow kB per video", "shards"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in res["rows"]:
        b, v = row["build"], row["verify"]
        lines.append(
            f"| {row['flow']} | {row['videos']} | {b['wall_s']:g} | {b['cpu_s']:g} ({b['cpu_s_per_video']:g}) | "
            f"{b['frame_pairs_per_wall_s']:g} | {row['rerun_all_cached']['wall_s']:g} | {v['wall_s']:g} / {v['cpu_s']:g} | "
            f"{row['rgb_bytes_per_video'] / 1000:.1f} / {row['flow_bytes_per_video'] / 1000:.1f} | "
            f"{row['tars']} tars, {row['shards_bytes'] / 1e6:.1f} MB |"
        )
    src = res["source"]
    h, w = src["size"]
    lines += [
        "",
        f"Synthetic set: {src['classes']} classes x ({src['train_per_class']} train + {src['test_per_class']} test) "
        f"videos of {src['frames']} frames at {h} x {w}; `--workers {res['workers']}`; whole processes (Python start "
        f"and imports included), CPU = the process and its workers; 1-min load average {res['load_avg_1min_at_start']:.1f} "
        f"at the start. Code at {commits([r])}; machine: {machine([r])}; record `{BUILD_RECORD}`; commands in it "
        f"(`python -m vicc_fast.bench build --json {BUILD_RECORD}`).",
    ]
    return "\n".join(lines)


def _ms(case: dict[str, Any], impl: str) -> str:
    x = case.get(impl)
    if not isinstance(x, dict):
        return "not run"
    ms = x["ms_median"]
    return f"{ms / 1000:.1f} s" if ms >= 10_000 else f"{ms:.1f} ms"


def kernels_cpu_block(runs: list[dict[str, Any]]) -> str:
    """kernels/README.md: the loss head fwd + bwd on the CPU, one table per ``bench kernels`` run of the record."""
    found = [r for r in runs if r.get("benchmark") == "kernels" and "cases" in r.get("result", {})]
    if not found:
        return f"(no CPU kernels record yet: `python -m vicc_fast.bench kernels --json {KERNELS_RECORD}`)"
    out = []
    for r in found:
        res = r["result"]
        before, after = res["loadavg_1m_before_after"]
        out += [
            f"{r['env'].get('time', '?')}, code {commits([r])}, {res['device']}, {res['torch_threads']} torch thread(s), "
            f"1-minute load average {before:g} before / {after:g} after, median of {res['repeats']} runs after "
            f"{res['warmup']} warm-up:",
            "",
            "| V | B | queue | eager | torch.compile | compile speed-up | Triton (interpreter) |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in res["cases"]:
            out.append(
                f"| {c['V']} | {c['B']} | {c['queue']} | {_ms(c, 'eager')} | {_ms(c, 'compile')} | "
                f"{c['compile_speedup_vs_eager']:.2f}x | {_ms(c, 'triton')} |"
            )
        out.append("")
    out.append(f"Record `{KERNELS_RECORD}` (machine, versions, commit of each run).")
    return "\n".join(out)


# (doc, block name) -> (which records: a key of the dict blocks() loads, generator)
K400 = {"clips": 260_000, "seconds": 10, "fps": 25}
"""Kinetics-400 as the cost table assumes it (inputs, not measurements): ~240k train + ~20k validate clips of
~10 s (issue 27; the Kinetics paper), sampled to 25 frames/s (``--fps 25``)."""
NODE_CORES = 64
"""CPU cores of the node the table assumes (scripts/slurm/*.sbatch ask for 64 per task)."""
DAY_S = 86_400
SLURM_BUILD_RECORD = Path("benchmarks/results/slurm_build_local.json")


def _cost_flow_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per frame size, the newest one-thread ``bench flow`` run that timed every method. Runs whose env carries a
    note are left out: they re-run older code beside newer runs (e.g. 89cd9b5 on 2026-12-07), not the current."""
    newest: dict[tuple[int, ...], dict[str, Any]] = {}
    for r in runs:
        res = r.get("result", {})
        if r.get("benchmark") != "flow" or res.get("threads") != 1 or "note" in r.get("env", {}):
            continue
        if not {"tvl1", "tvl1-torch", "dis"} <= set(res.get("methods", {})):
            continue
        size = tuple(res["size"])
        if size not in newest or r["env"]["time"] > newest[size]["env"]["time"]:
            newest[size] = r
    return [newest[k] for k in sorted(newest)]


def build_cost_block(recs: dict[str, list[dict[str, Any]]]) -> str:
    """docs/cluster.md: what K400's flow and shards cost, from the measured per-core pairs/s (``bench flow``,
    one thread per method, per frame size) and the measured bytes per frame of the last ``bench build`` run."""
    builds = [r for r in recs["build"] if r.get("benchmark") == "build"]
    flows = _cost_flow_runs(recs["flow"])
    if not builds or not flows:
        return f"(no records yet: `python -m vicc_fast.bench build --json {BUILD_RECORD}` and `bench flow`)"
    b = builds[-1]
    frames = K400["seconds"] * K400["fps"]
    pairs = K400["clips"] * (frames - 1)
    head = ["flow (where)", "frames flow sees", "pairs/s per core, measured",
            f"K400: core-hours ({pairs / 1e6:.0f} M pairs)", f"1 node ({NODE_CORES} cores): days",
            "8 nodes: days"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for name in ("tvl1", "tvl1-torch", "dis"):
        for f in flows:
            rate = f["result"]["methods"][name]["pairs_per_s"]
            h, w = f["result"]["size"]
            days = pairs / rate / NODE_CORES / DAY_S
            where = "PyTorch, CPU" if name == "tvl1-torch" else "OpenCV, CPU"
            lines.append(
                f"| {name} ({where}) | {h} x {w} | {rate:g} | {pairs / rate / 3600:,.0f} | {days:.2f} | "
                f"{days / 8:.2f} |"
            )
    lines.append("| tvl1-torch (GPU) | - | not measured yet | - | - | - |")
    need = pairs / DAY_S / 8
    rows = {row["flow"]: row for row in b["result"]["rows"]}
    row = rows.get("tvl1") or next(iter(rows.values()))
    per_frame = row["shard_bytes_per_video"] / row["frames_per_video"]
    cache_per_frame = row["rgb_plus_flow_bytes_per_video"] / row["frames_per_video"]
    shards_gb = per_frame * frames * K400["clips"] / 1e9
    cache_gb = cache_per_frame * frames * K400["clips"] / 1e9
    bh, bw = b["result"]["source"]["size"]
    lines += [
        "",
        f"Goal (issue 27): K400's flow and shards in under a day on one 8-GPU node, i.e. at least "
        f"**{need:.0f} frame pairs/s per GPU** ({pairs / 1e6:.0f} M pairs / 86,400 s / 8), decode and encode "
        f"included; the GPU row waits for a `bench flow --device cuda` record.",
        "",
        f"Disk: shards {per_frame / 1000:.2f} kB per frame at {bh} x {bw} (measured, `{row['flow']}` row of "
        f"`{BUILD_RECORD}`) -> **{shards_gb:.0f} GB** for K400; the per-video cache (`<out>/.work/`, on shared "
        f"storage, every part writes into it) holds another **{cache_gb:.0f} GB** until the pack (delete it "
        "afterwards; a rebuild then recomputes), so provision both plus the source download.",
        "",
        f"Inputs, not measured: K400 = {K400['clips']:,} clips x {K400['seconds']} s at {K400['fps']} frames/s "
        f"(`--fps {K400['fps']}`), {frames - 1} pairs per clip; a node = {NODE_CORES} cores, one flow process per core "
        f"(`--workers {NODE_CORES}`). Measured: pairs/s per core = one thread per method "
        f"(`{report_flow.FLOW_RECORD}`, flow alone; 128 x 171 is the stored size, flow between the resized frames; "
        "240 x 320 is the released recipe's, `--flow-at source --flow-short-side 240`; the build adds decode + VP9 encode: "
        f"{row['build']['frame_pairs_per_wall_s']:g} pairs/s with {b['result']['workers']} workers end to end in "
        f"`{BUILD_RECORD}`); code at {commits([*flows, b])}; machine: {machine(flows)}. Synthetic video compresses "
        "unlike YouTube clips: measure bytes on a K400 sample before ordering disks "
        "(`python -m data_prep.build --source kinetics --limit 200 ...`). Node figures assume the per-core rate "
        "scales with cores (not measured beyond 2 cores).",
    ]
    slurm = recs.get("slurm_build") or []
    if slurm:
        s = slurm[-1]
        a, c = s["array"], s["cancelled_part"]
        res = c["resumed"]
        refused = s["pack_refused"]["message"]
        said = refused[refused.find("Missing from") :].split(";")[0] if "Missing from" in refused else refused
        lines += [
            "",
            f"On the local Slurm cluster (`{SLURM_BUILD_RECORD}`, `{s['command']}`; two 1-CPU nodes on this host, "
            f"TV-L1 on the CPU): {s['set']['videos']} synthetic Kinetics-layout videos, {len(s['set']['rejected'])} "
            f"of them missing or broken, in {a['parts']} array tasks: {a['wall_s_submit_to_pack']:g} s from submit "
            f"to packed shards (including Slurm's ~120 s hold of a requeued job, the two pack jobs and Python starts on "
            f"2 busy cores), against {s['single']['wall_s']:g} s for one process. Part {res['part']}/{a['parts']} "
            f"was cancelled while running ({c['state_after_scancel']}); the first pack ended "
            f'{s["pack_refused"]["state"]} with "{said}"; the requeued part ({c["restarts"]} restart) reused '
            f"{res['reused']} cached video(s) and processed {res['processed']}; the second pack "
            f"{s['pack']['state']}; shards ({s['byte_identical']['files']} files) byte-identical to the single "
            f"build: {s['byte_identical']['equal']}.",
        ]
    return "\n".join(lines)


def real_data_block(recs: dict[str, Any]) -> str:
    """README: what each step of the path with UCF101 costs, from the records that measured it (machine named);
    the steps no record covers yet are said to be unmeasured."""
    rows = ["| step | measured | machine | record |", "|---|---|---|---|"]
    flow = [
        r
        for r in recs["flow"]
        if r["result"]["size"] == [240, 320] and {"tvl1", report_flow.TORCH} <= set(r["result"]["methods"])
    ]
    if flow:
        r = flow[-1]
        m, threads = r["result"]["methods"], r["result"]["threads"]
        per_core = {k: m[k]["pairs_per_s"] / threads for k in ("tvl1", report_flow.TORCH)}
        hours = {k: report_flow.UCF101_PAIRS / v / 3600 for k, v in per_core.items()}
        rows.append(
            f"| build: TV-L1 flow at 320x240 for UCF101's ~2.5 M frame pairs (the build's largest cost) | about "
            f"{hours[report_flow.TORCH]:.0f} core-hours with `--flow tvl1-torch` on CPU cores, "
            f"{hours['tvl1']:.0f} with OpenCV's TV-L1 ({per_core[report_flow.TORCH]:.2f} / "
            f"{per_core['tvl1']:.2f} frame pairs/s per core); on a GPU not measured yet | "
            f"{report_flow._where(r)}, code {commits([r])} | `{report_flow.FLOW_RECORD}` |"
        )
    else:
        rows.append(f"| build: TV-L1 flow at 320x240 | no record yet | | `{report_flow.FLOW_RECORD}` |")
    gpu = recs["gpu_train"]
    if gpu["amp"] and gpu["validate"]:
        a, env = gpu["amp"][0], gpu["validate"][0]["env"]
        commit = (gpu["run"][0].get("code_commit") if gpu["run"] else env.get("git_commit", "")) or "unknown"
        videos_s = a["clips_per_s"] / 2  # two views of each video per step: the engine counts views
        epoch_s = UCF101_TRAIN_VIDEOS / videos_s
        rows.append(
            f"| train: `configs/ucf101_s3d.yaml`, RGB-1 ({a['amp']}, {a['steps']} steps, from 128x171 synthetic "
            f"shards) | {a['clips_per_s']:.0f} clips/s = {videos_s:.0f} videos/s, data-wait "
            f"{a['data_wait_pct']:.0f} %: at that rate an epoch of split 1's {UCF101_TRAIN_VIDEOS:,} training videos "
            f"takes {epoch_s:.0f} s, RGB-1's 300 epochs {300 * epoch_s / 3600:.1f} h | {env.get('gpu', 'GPU')}, "
            f"{env.get('time', '?')[:10]}, code {commit[:7]} | `{GPU_TRAIN_RUN}/amp_{a['amp']}.json` |"
        )
    else:
        rows.append(f"| train: S3D at the paper shape | no record yet | | `{GPU_TRAIN_RUN}` |")
    rows.append(
        "| train: Flow-1 and the cross-stream stage; evaluate, extract, export on UCF101 | not measured yet (no "
        "UCF101 here; the first whole run on a GPU is issue 28) | | |"
    )
    return "\n".join(rows)


BLOCKS: dict[tuple[str, str], tuple[str, Callable[[list[dict[str, Any]]], str]]] = {
    ("README.md", "demo-table"): ("demo", demo_block),
    ("vicc_fast/eval/README.md", "vicc-eval-table"): (
        "demo",
        lambda recs: compare_block(
            recs, stage2_only=False, methods=("vicc",), columns=(*COMPARE_COLS, "proto nmi"), folder=RECORDS
        ),
    ),
    ("README.md", "compare-table"): ("compare", lambda recs: compare_block(recs, stage2_only=True)),
    ("configs/compare/README.md", "compare-table"): (
        "compare",
        lambda recs: compare_block(recs, stage2_only=False),
    ),
    ("README.md", "supervised-bound"): ("supervised", supervised_block),
    ("vicc_fast/data/README.md", "loader-three-table"): ("loader", loader_block),
    ("vicc_fast/data/README.md", "jitter-cost"): ("jitter", jitter_cost_block),
    ("README.md", "real-data-times"): ("real_data", real_data_block),
    ("BENCHMARKS.md", "jitter-trade"): ("jitter", jitter_trade_block),
    ("docs/shard_format.md", "build-table"): ("build", build_block),
    ("docs/cluster.md", "k400-cost"): ("build_cost", build_cost_block),
    ("kernels/README.md", "kernels-cpu-table"): ("kernels", kernels_cpu_block),
    ("docs/optical_flow.md", "flow-accuracy"): ("flow", report_flow.accuracy_block),
    ("docs/optical_flow.md", "flow-speed"): ("flow", report_flow.speed_block),
    ("docs/optical_flow.md", "flow-profile"): ("flow", report_flow.profile_block),
    ("docs/optical_flow.md", "flow-recipes"): ("flow_recipes", report_flow.recipes_block),
    ("docs/optical_flow.md", "flow-compact"): ("flow_compact", report_flow.compact_block),
    ("docs/optical_flow.md", "flow-extraction"): ("flow", report_flow.extraction_block),
}


def _load_single(path: Path) -> list[dict[str, Any]]:
    """A record file holding one JSON object (the scripts' records) as a one-run list; missing: none."""
    return [json.loads(path.read_text())] if path.is_file() else []


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {name}:begin[^\n]*-->\n)(.*?)(<!-- {name}:end -->)", re.S)


def render(doc_text: str, name: str, body: str, doc: str = "") -> str:
    """``doc_text`` with block ``name``'s content replaced by ``body``; an error names a missing marker."""
    pat = _pattern(name)
    if not pat.search(doc_text):
        raise BenchError(f"{doc or 'document'}: no '<!-- {name}:begin -->' ... '<!-- {name}:end -->' markers")
    return pat.sub(lambda m: m.group(1) + "\n" + body + "\n\n" + m.group(3), doc_text, count=1)


def blocks(
    records: str | Path = RECORDS, compare_records: str | Path = COMPARE_RECORDS, root: Path = ROOT
) -> dict[tuple[str, str], str]:
    """(doc, block name) -> the block's generated content (each records folder read once)."""
    recs = {
        "demo": load_records(root / records),
        "compare": load_records(root / compare_records),
        "loader": load_bench(root / LOADER_RECORD),
        "supervised": load_bench(root / SUPERVISED_RECORD),
        "jitter": load_bench(root / JITTER_RECORD),
        "build": load_bench(root / BUILD_RECORD),
        "kernels": load_bench(root / KERNELS_RECORD),
        "build_cost": {
            "build": load_bench(root / BUILD_RECORD),
            "flow": load_bench(root / report_flow.FLOW_RECORD),
            "slurm_build": _load_single(root / SLURM_BUILD_RECORD),
        },
        "flow": load_bench(root / report_flow.FLOW_RECORD),
        "flow_recipes": load_bench(root / report_flow.RECIPES_RECORD),
        "flow_compact": load_bench(root / report_flow.COMPACT_RECORD),
        "real_data": {
            "flow": load_bench(root / report_flow.FLOW_RECORD),
            "gpu_train": {
                "amp": _load_single(root / GPU_TRAIN_RUN / "amp_fp16.json"),
                "validate": _load_single(root / GPU_TRAIN_RUN / "validate.json"),
                "run": _load_single(root / GPU_TRAIN_RUN / "run.json"),
            },
        },
    }
    return {key: gen(recs[which]) for key, (which, gen) in BLOCKS.items()}


def documents(found: dict[tuple[str, str], str], root: Path = ROOT) -> dict[str, str]:
    """doc path -> its text with the blocks ``found`` put in."""
    out: dict[str, str] = {}
    for (doc, name), body in found.items():
        out[doc] = render(out.get(doc) or (root / doc).read_text(), name, body, doc)
    return out


def generated(
    records: str | Path = RECORDS, compare_records: str | Path = COMPARE_RECORDS, root: Path = ROOT
) -> dict[str, str]:
    """doc path -> its text with every block regenerated from the records."""
    return documents(blocks(records, compare_records, root), root)


def run(args: argparse.Namespace) -> dict[str, Any]:
    found = blocks(args.records, args.compare_records)
    docs = documents(found)
    stale = [d for d, text in docs.items() if (ROOT / d).read_text() != text]
    if args.write:
        for d in stale:
            write_text(ROOT / d, docs[d])
            print(f"rewrote {d}")
    elif args.check and stale:
        raise SystemExit(
            f"out of date with {args.records}: {', '.join(stale)} (python -m vicc_fast.bench report --write)"
        )
    else:
        for (doc, name), body in found.items():
            print(f"## {doc} / {name}\n\n{body}\n")
    return {"stale": stale if not args.write else []}
