"""Doc tables generated from committed records, so that a number cannot drift from its source.

    python -m vicc_fast.bench report            # print every generated block
    python -m vicc_fast.bench report --write    # rewrite the blocks in the docs
    python -m vicc_fast.bench report --check    # exit 1 when a doc differs from its records (the tests do this)

A block sits between ``<!-- NAME:begin ... -->`` and ``<!-- NAME:end -->`` in a markdown file; everything between
the markers is generated. Blocks: the demo (README.md: ViCC's per-phase kNN over the seeds of
``benchmarks/results/demo/vicc_seed*.json``; and every protocol of ViCC), the comparison (README.md: stage-2 / joint
rows; and configs/compare/README.md: every row, from ``benchmarks/results/compare/``) over the seeds that have a
record for every method. The two folders are apart because a comparison is only like for like when every method's
records come from one demo recipe: a change of the demo recipe starts a new set of demo records at once, while the
comparison keeps the records of the recipe it was run with (each names its commit and resolved config) until it
is run again. The data README's three-loader table comes from ``benchmarks/results/loader_three_cpu.json``
(``python -m vicc_fast.bench loader --backends dali,torch,jpeg_lmdb ... --json``). docs/optical_flow.md's tables come
from the ``bench flow`` records (vicc_fast/bench/report_flow.py).
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
JITTER_CMD = (
    "python -m vicc_fast.bench loader --root /tmp/lb/shards --replicate 8 --batch 8 --steps 20 --warmup 3 "
    "--repeat 3 --set data.dtype=float32 --variants released:data.color_jitter=released "
    "affine:data.color_jitter=affine --json benchmarks/results/loader_jitter_cpu.json"
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


def _complete_seeds(recs: list[dict[str, Any]]) -> list[int]:
    """Seeds with a record of every method that has any record (the comparison must be like for like)."""
    methods = {r["method"] for r in recs}
    by_seed: dict[int, set[str]] = {}
    for r in recs:
        by_seed.setdefault(r["seed"], set()).add(r["method"])
    return sorted(s for s, ms in by_seed.items() if ms == methods)


def compare_block(
    recs: list[dict[str, Any]],
    stage2_only: bool,
    methods: tuple[str, ...] = (),
    columns: tuple[str, ...] = COMPARE_COLS,
    folder: Path = COMPARE_RECORDS,
) -> str:
    """Method/model rows, mean ± sd over the seeds every method has (``methods``: only these; empty = all);
    stage2_only keeps stage-2 / joint rows."""
    recs = [r for r in recs if not methods or r["method"] in methods]
    seeds = _complete_seeds(recs)
    use = [r for r in recs if r["seed"] in seeds and r.get("eval_results") is not None]
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
        f"Mean ± sd over seeds {', '.join(map(str, seeds))}; median wall time per method (training with its "
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
        f"(`data.color_jitter=affine`; {rel['samples_per_s']:.2f} against {aff['samples_per_s']:.2f})"
        f"{torch_part}; medians of alternating runs, code at {commits([r])}, record `{JITTER_RECORD}`{earlier}, "
        f"command:\n\n```bash\n"
        f"{JITTER_CMD}\n```"
    )


def jitter_trade_block(runs: list[dict[str, Any]]) -> str:
    """README: the CPU trade-off of the released colour jitter, in one clause."""
    r = _jitter_run(runs)
    if r is None:
        return f"(no jitter-cost record yet: `{JITTER_RECORD}`)"
    ratio = 1 / r["result"]["ratio_dali_released_over_affine"]
    return (
        f"On a CPU-only machine, `data.color_jitter=affine` trades the released jitter's 8-bit steps for one colour "
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
BLOCKS: dict[tuple[str, str], tuple[str, Callable[[list[dict[str, Any]]], str]]] = {
    ("README.md", "demo-table"): ("demo", demo_block),
    ("README.md", "vicc-eval-table"): (
        "demo",
        lambda recs: compare_block(
            recs, stage2_only=False, methods=("vicc",), columns=(*COMPARE_COLS, "proto nmi"), folder=RECORDS
        ),
    ),
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
    ("README.md", "jitter-trade"): ("jitter", jitter_trade_block),
    ("docs/shard_format.md", "build-table"): ("build", build_block),
    ("kernels/README.md", "kernels-cpu-table"): ("kernels", kernels_cpu_block),
    ("docs/optical_flow.md", "flow-accuracy"): ("flow", report_flow.accuracy_block),
    ("docs/optical_flow.md", "flow-speed"): ("flow", report_flow.speed_block),
    ("docs/optical_flow.md", "flow-profile"): ("flow", report_flow.profile_block),
    ("docs/optical_flow.md", "flow-recipes"): ("flow_recipes", report_flow.recipes_block),
    ("docs/optical_flow.md", "flow-compact"): ("flow_compact", report_flow.compact_block),
    ("docs/optical_flow.md", "flow-extraction"): ("flow", report_flow.extraction_block),
}


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
        "flow": load_bench(root / report_flow.FLOW_RECORD),
        "flow_recipes": load_bench(root / report_flow.RECIPES_RECORD),
        "flow_compact": load_bench(root / report_flow.COMPACT_RECORD),
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
