"""Result tables: one per run, and runs side by side in the form of the ViCC paper's Table 1.

Rows are models (RGB-1, Flow-1, RGB-2, Flow-2, R+F-2, ...), columns retrieval Recall@k, linear-probe and finetune
top-1, and cluster accuracy/NMI (K-means on features, and the prototypes' own assignments). Two sources are merged:
- ``<run>/results.json``, written by the training engine after every phase (``{"phases": {name: {"report",
  "metrics"}}}``, metrics ``"{stream}/R@k"``, ``"rf_sum/R@k"``): the retrieval numbers of each stage;
- ``<run>/eval/results.json``, written by ``python -m vicc_fast.eval`` (``{"checkpoints": {name: entry}}``):
  every protocol of each evaluated checkpoint; it wins over the engine's numbers for the same row and column.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vicc_fast import atomic

Rows = dict[str, dict[str, float]]  # row label -> column -> value

ROW_ORDER = ["RGB-0", "Flow-0", "R+F-0", "RGB-1", "Flow-1", "R+F-1", "RGB-2", "Flow-2", "R+F", "R+F-2"]
STREAM_OF = {"RGB": "rgb", "Flow": "flow"}
EVAL_RESULTS = Path("eval") / "results.json"
ENGINE_RESULTS = Path("results.json")


# GOCA 4.3's cluster measures (eval.cluster.protocol=majority), in its table's order
MAJORITY = ("acc", "nmi", "f1")


def _row_key(label: str) -> tuple[int, str, int, str]:
    """Known labels in ROW_ORDER; others (e.g. GOCA's "RGB-joint", "Flow-joint", "R+F-joint") after them,
    grouped by stage, RGB then Flow then R+F."""
    base = label.split(" ")[0]
    if base in ROW_ORDER:
        return (ROW_ORDER.index(base), "", 0, label)
    stream, _, stage = base.partition("-")
    order = ["RGB", "Flow", "R+F"]
    return (len(ROW_ORDER), stage, order.index(stream) if stream in order else len(order), label)


def _recalls(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k.split("/", 1)[1]: float(v) for k, v in metrics.items() if re.fullmatch(rf"{prefix}/R@\d+", k)}


def rows_from_engine(doc: dict[str, Any]) -> Rows:
    """Retrieval rows from the engine's per-phase results (phases without a report label are skipped)."""
    rows: Rows = {}
    for ph in doc.get("phases", {}).values():
        label, metrics = ph.get("report", ""), ph.get("metrics", {})
        if not label:
            continue
        # "rows" (stream -> row label) is written by the engine; older results.json files lack it
        stream = STREAM_OF.get(label.split("-")[0])
        own = ph.get("rows") or ({stream: label} if stream else {})
        for s, row in own.items():
            rows.setdefault(row, {}).update(_recalls(metrics, s))
        if any(k.startswith("rf_sum/") for k in metrics):
            rows.setdefault(f"R+F-{label.rsplit('-', 1)[-1]}", {}).update(_recalls(metrics, "rf_sum"))
    return rows


def rows_from_entry(entry: dict[str, Any]) -> Rows:
    """Rows of one evaluated checkpoint (an entry of ``eval/results.json``)."""
    rows: Rows = {}
    labels: dict[str, str] = entry.get("labels", {})
    ret, lin, ft, cl = (entry.get(k, {}) for k in ("retrieval", "linear", "finetune", "cluster"))
    for key, label in labels.items():
        row = rows.setdefault(label, {})
        row.update(_recalls(ret, "rf_sum" if key == "rf" else key))
        for name, src in (("linear", lin), ("finetune", ft)):
            if f"{key}/top1" in src:
                row[name] = float(src[f"{key}/top1"])
        for algo, measures in (("kmeans", ("acc", "nmi")), ("proto", ("acc", "nmi")), ("majority", MAJORITY)):
            for m in measures:
                if f"{key}/{algo}/{m}" in cl:
                    row[f"{algo} {m}"] = float(cl[f"{key}/{algo}/{m}"])
        if key == "rf" and any(k.startswith("rf_concat/") for k in ret):
            rows[f"{label} (concat)"] = _recalls(ret, "rf_concat")
    return rows


def merge_rows(*sources: Rows) -> Rows:
    out: Rows = {}
    for rows in sources:
        for label, cols in rows.items():
            out.setdefault(label, {}).update(cols)
    return dict(sorted(out.items(), key=lambda kv: _row_key(kv[0])))


def run_rows(run_dir: str | Path) -> Rows:
    """All rows of a run folder (engine results, then evaluated checkpoints in evaluation order)."""
    r = Path(run_dir)
    sources: list[Rows] = []
    for rel, fn in ((ENGINE_RESULTS, rows_from_engine), (EVAL_RESULTS, None)):
        p = r / rel
        if not p.is_file():
            continue
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{p}: unreadable results ({exc})") from None
        if fn is not None:
            sources.append(fn(doc))
        else:
            sources += [rows_from_entry(e) for e in doc.get("checkpoints", {}).values()]
    if not sources:
        raise FileNotFoundError(f"{r}: no results.json or eval/results.json (train or evaluate first)")
    return merge_rows(*sources)


def columns_of(rows: Rows) -> list[str]:
    ks = sorted({int(c[2:]) for cols in rows.values() for c in cols if c.startswith("R@")})
    cols = [f"R@{k}" for k in ks]
    rest = ["linear", "finetune", "kmeans acc", "kmeans nmi", "proto acc", "proto nmi"]
    rest += [f"majority {m}" for m in MAJORITY]
    return cols + [c for c in rest if any(c in r for r in rows.values())]


def markdown_table(rows: Rows, first: str = "model", columns: list[str] | None = None) -> str:
    cols = columns or columns_of(rows)
    head = [first, *cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for label, vals in rows.items():
        cells = [f"{vals[c]:.1f}" if c in vals else "–" for c in cols]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def run_report(run_dir: str | Path) -> str:
    """The markdown report of one run: its Table-1 rows (retrieval R@k, linear, finetune, clusters; percent)."""
    rows = run_rows(run_dir)
    return (
        f"# Evaluation of {Path(run_dir)}\n\n"
        "Percent. R@k: test videos query train videos (cosine kNN); linear / finetune: top-1; "
        "kmeans / proto: cluster accuracy (Hungarian) and NMI of K-means (K = classes) and of the prototypes' "
        "hard assignments on the test set (ViCC supp. 3.1.2); majority: K-means with majority-vote labels, "
        "Acc / NMI / F1, mean of eval.cluster.runs runs (GOCA 4.3). R+F: summed similarities / averaged probabilities; (concat): "
        "retrieval with concatenated features.\n\n" + markdown_table(rows) + "\n"
    )


def write_run_report(run_dir: str | Path) -> Path:
    p = Path(run_dir) / "eval" / "results.md"
    atomic.write_text(p, run_report(run_dir))
    return p


def short_names(paths: list[str | Path]) -> list[str]:
    """The shortest distinct path tails: runs a/x and b/x are named "a/x" and "b/x", a/x and a/y "x" and "y"."""
    parts = [Path(p).resolve().parts for p in paths]
    for n in range(1, max((len(p) for p in parts), default=1) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def compare(run_dirs: list[str | Path]) -> str:
    """Several runs side by side: one block of rows per run, the same columns for all."""
    all_rows: Rows = {}
    for r, name in zip(run_dirs, short_names(run_dirs)):
        for label, vals in run_rows(r).items():
            all_rows[f"{name} / {label}"] = vals
    return markdown_table(all_rows, first="run / model") + "\n"


def update_eval_results(run_dir: str | Path, name: str, entry: dict[str, Any]) -> Path:
    """Merge one checkpoint's entry into ``<run>/eval/results.json`` (protocols not re-run are kept)."""
    p = Path(run_dir) / EVAL_RESULTS
    doc: dict[str, Any] = {"checkpoints": {}}
    if p.is_file():
        try:
            doc = json.loads(p.read_text())
        except ValueError as exc:
            raise ValueError(f"{p} is corrupt ({exc}); move it away to start a fresh one") from None
    old = doc.setdefault("checkpoints", {}).get(name, {})
    if old.get("sha256") not in (None, entry.get("sha256")):
        old = {}  # the checkpoint file changed: its old numbers no longer describe it
    for k, v in entry.items():
        if isinstance(v, dict) and isinstance(old.get(k), dict):
            old[k] = {**old[k], **v}
        else:
            old[k] = v
    doc["checkpoints"][name] = old
    atomic.write_text(p, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return p
