"""GPU validation in one command: the steps of docs/gpu_validation.md, each under its own timeout.

    python scripts/gpu/validate.py run [--dry-run] [--out DIR] [--data DIR] [--only a,b] [--budget S]
    python scripts/gpu/validate.py make-data --out DIR [--tiny]       # the sets that travel (prepare.sh)
    python scripts/gpu/validate.py amp ... / nvtx ...                 # single steps, called by ``run``

``run`` executes the steps below in order, each as a child process in its own process group under a timeout
(a hang or a crash costs that step only; DALI threads and DataLoader workers die with it), writes each step's
JSON under ``--out`` as soon as the step ends, keeps ``validate.json`` (every step so far) up to date, and
prints one summary table at the end. ``--dry-run`` runs the same steps on the CPU with tiny shapes (Triton
interpreter, DALI CPU decoder, tiny backbone), so the script is exercised by the test suite between GPU loans.

Steps (GPU figures are compared with the targets in docs/gpu_validation.md; a missed target is reported, not a
failed step, since a throughput depends on the machine while a failed check means wrong output):
  kernels   python -m kernels.check --sizes both: every compiled Triton kernel within the tests' tolerances
  decode    python -m vicc_fast.bench decode: NVDEC frames vs the CPU decoder, RGB/flow alignment, frames/s
  loader    python -m vicc_fast.bench loader: DALI GPU pipeline vs the DataLoader baseline (goal >= 5x)
  amp       200 training steps of configs/ucf101_s3d.yaml in bf16, then fp16 + GradScaler, channels_last_3d:
            loss falls, nothing non-finite, clips/s, peak memory (and a torch.profiler trace of 5 steps)
  step      python -m vicc_fast.bench step --paper: data-wait (< 2 %), loss head (< 1 %), >= 3x the baseline
  head      python -m vicc_fast.bench kernels --quick: Triton loss head vs eager vs torch.compile (>= 2x, >= 1x)
  nvtx      the step ranges (data, forward, backward, optimizer) in the amp step's torch.profiler trace
  flow      (only with --only) bench flow --methods tvl1-torch at 320x240: pairs/s (goal >= 700) and EPE
  augment   (only with --only) bench augment: the released colour jitter's DALI steps on the GPU vs the CPU
            reference (max / mean level difference) and ms per clip beside the one-map jitter
  evalwin   (only with --only) bench loader --mode eval with the released overlapping test windows, centre and
            ten-crop: both backends run them on the GPU; clips/s

Only the standard library is imported here: the parent process stays small and starts in milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# run as a script (sys.path[0] is scripts/gpu): the project's own modules, imported lazily by the single steps
# and the decode summary, must be importable where the project is not installed (the GPU machine)
sys.path.insert(0, str(REPO))
PY = sys.executable
STREAMS = ("two-stream", "rgb")
DEADLINE_ENV = "VICC_VALIDATE_DEADLINE"  # epoch seconds at which the runner kills the command


# --------------------------------------------------------------------------------------------- the sets
def make_data(out: Path, tiny: bool) -> None:
    """The sets a validation reads, built here because the GPU machine has no video encoder (no PyAV):
    ``lb`` (the loader benchmark's synthetic set: 48 + 12 videos of 64 frames at 128 x 171, DIS flow),
    ``codes`` / ``ramps`` (data_prep.patterns, at 128 x 171: NVDEC refuses very small frames) and ``demo``
    (the default demo set, 64 x 64, probed on NVDEC). ``tiny``: small versions for the CPU dry run."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if tiny:
        lb = ["--classes", "2", "--train-per-class", "4", "--test-per-class", "1", "--frames", "16",
              "--height", "64", "--width", "80"]  # fmt: skip
        hw = ["--height", "48", "--width", "64"]
    else:
        lb = ["--classes", "6", "--train-per-class", "8", "--test-per-class", "2", "--frames", "64"]
        hw = ["--height", "128", "--width", "171"]
    src = out / "src_lb"
    steps = [
        [PY, "-m", "data_prep.synthetic", "--out", str(src), *lb, "--workers", "2", "--quiet"],
        [PY, "-m", "data_prep.build", "--source", "ucf101", "--root", str(src), "--out", str(out / "lb"),
         "--flow", "dis", "--no-progress", *(["--height", "64", "--width", "80"] if tiny else [])],
        [PY, "-m", "data_prep.patterns", "--kind", "codes", "--out", str(out / "codes"), *hw],
        [PY, "-m", "data_prep.patterns", "--kind", "ramps", "--out", str(out / "ramps"), "--test", "2", *hw],
    ]  # fmt: skip
    if not tiny:
        demo = ["--classes", "8", "--train-per-class", "2", "--test-per-class", "2", "--frames", "32",
                "--height", "64", "--width", "64"]  # fmt: skip
        steps += [
            [PY, "-m", "data_prep.synthetic", "--out", str(out / "src_demo"), *demo, "--workers", "2", "--quiet"],
            [PY, "-m", "data_prep.build", "--source", "ucf101", "--root", str(out / "src_demo"),
             "--out", str(out / "demo"), "--flow", "dis", "--no-progress", "--height", "64", "--width", "64"],
        ]  # fmt: skip
    built = {
        "src_lb": out / "lb",
        "src_demo": out / "demo",
    }  # a source folder is only needed to build its set
    for cmd in steps:
        target = Path(cmd[cmd.index("--out") + 1])
        if (built.get(target.name, target) / "manifest.json").is_file():
            continue  # built before (an interrupted prepare resumes)
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
    for name in built:  # sources are not needed on the GPU machine
        shutil.rmtree(out / name, ignore_errors=True)


# --------------------------------------------------------------------------------------------- steps
@dataclass
class Step:
    name: str
    what: str
    timeout: float  # seconds on the GPU (the dry run is bounded by its budget only)
    commands: Callable[[Ctx], list[tuple[list[str], dict[str, str]]]]
    summary: Callable[[Ctx], tuple[bool, str, str]]  # (ok, key figure, goals) from the step's JSON
    default: bool = True  # in the default run; the others only when --only names them


@dataclass
class Ctx:
    out: Path
    data: Path
    dry: bool
    scratch: Path

    def json(self, name: str) -> Path:
        return self.out / f"{name}.json"

    def last(self, name: str, key: str = "") -> dict[str, Any]:
        """The last record of a bench/kernels JSON list (or the dict itself); with ``key``, the last holding it
        (the first GPU run wrote the kernel check and the head benchmark into one file)."""
        doc = json.loads(self.json(name).read_text())
        recs = doc if isinstance(doc, list) else [doc]
        recs = [r for r in recs if not key or key in r]
        if not recs:
            raise KeyError(f"{self.json(name)}: no record with {key!r}")
        return recs[-1]


def _bench(ctx: Ctx, name: str, *args: str, record: str = "") -> list[str]:
    """``python -m vicc_fast.bench NAME`` appending its record to OUT/<record or NAME>.json."""
    return [PY, "-m", "vicc_fast.bench", name, "--json", str(ctx.json(record or name)), *args]


def kernels_cmds(ctx: Ctx):
    if ctx.dry:  # the interpreter, small shapes, one family of kernels: a minute at most
        shapes, env = ["--device", "cpu", "--sizes", "small", "-k", "sinkhorn"], {"TRITON_INTERPRET": "1"}
    else:
        shapes, env = ["--device", "cuda", "--sizes", "both"], {}
    return [([PY, "-m", "kernels.check", *shapes, "--json", str(ctx.json("kernels"))], env)]


def kernels_summary(ctx: Ctx):
    r = ctx.last("kernels", "checks")
    n = len(r["checks"])
    worst = max(
        (c for c in r["checks"] if c["dtype"] == "float32" and isinstance(c["max_abs_err"], float)),
        key=lambda c: c["max_abs_err"] / max(c["atol"], 1e-30),
        default=None,
    )
    fig = f"{n - r['failed']}/{n} within tolerance ({r['seconds']:.0f} s)"
    if worst:
        fig += f"; worst fp32 {worst['name']} {worst['max_abs_err']:.1e} (atol {worst['atol']:.0e})"
    fails = [f"{c['name']} {c['dtype']}" for c in r["checks"] if not c["ok"]]
    return r["failed"] == 0 and n > 0, fig, ("failed: " + ", ".join(fails[:6])) if fails else ""


def decode_cmds(ctx: Ctx):
    d = ctx.data
    args = ["--root", str(d / "lb"), "--codes", str(d / "codes"), "--ramps", str(d / "ramps")]
    if (d / "demo").is_dir():
        args += ["--probe", str(d / "demo")]
    args += ["--threads", "2" if ctx.dry else "8", "--passes", "1" if ctx.dry else "2"]
    return [(_bench(ctx, "decode", *args), {})]


def decode_summary(ctx: Ctx):
    r = ctx.last("decode")["result"]
    eq = " ".join(f"{s} max|d| {r[f'equality_{s}']['max_abs']} mean {r[f'equality_{s}']['mean_abs']:.3f};"
                  for s in ("rgb", "flow"))  # fmt: skip
    fps = r["throughput_rgb_gpu"]["frames_per_s"]
    fig = f"{eq} {r['decoder']} {fps:.0f} RGB frames/s ({r['ratio_rgb_gpu_over_cpu']:.1f}x cpu)"
    probes = "; ".join(
        f"probe {Path(k).name}: {'ok' if v['ok'] else 'FAILS'}" for k, v in r["probes"].items()
    )
    from vicc_fast.bench.decode import BOUNDS, out_of_bounds  # today's bounds, for older records too

    now = [f"{s}: {m}" for s in ("rgb", "flow") for m in out_of_bounds(r[f"equality_{s}"], BOUNDS[s])]
    verdict = "within today's bounds" if not now else f"outside today's bounds: {'; '.join(now)}"
    problems = [p for p in r["problems"] if "bound" not in p]  # judged again below, with today's bounds
    ok = not problems and not now
    return ok, fig, "; ".join(filter(None, [probes, *problems[:3], verdict, json.dumps(BOUNDS)]))


def _loader_args(ctx: Ctx, steps: int, repeat: int) -> tuple[list[str], list[str]]:
    """``bench loader``'s shared arguments and ``--set`` overrides: tiny CPU shapes in the dry run; on the GPU the
    paper's clip (32 frames, 128 px crops, 2 views per stream), the same CPU threads for both backends."""
    if ctx.dry:
        return (["--device", "cpu", "--batch", "2", "--steps", "2", "--warmup", "0", "--repeat", "1",
                 "--threads", "1", "--replicate", "2"],
                ["data.num_frames=4", "data.crop_size=32", "data.dtype=float32"])  # fmt: skip
    return (["--device", "cuda", "--batch", "16", "--steps", str(steps), "--warmup", "2", "--repeat", str(repeat),
             "--threads", "12", "--replicate", "8"], [])  # fmt: skip


def loader_cmds(ctx: Ctx):
    common, sets = _loader_args(ctx, steps=8, repeat=2)
    root = ["--root", str(ctx.data / "lb")]
    return [
        (_bench(ctx, "loader", *root, *common, "--set", *sets), {}),
        (_bench(ctx, "loader", *root, *common, "--set", *sets, "--streams", "rgb"), {}),
    ]


def loader_summary(ctx: Ctx):
    doc = json.loads(ctx.json("loader").read_text())[-2:]
    parts, goals = [], []
    for tag, rec in zip(STREAMS, doc):
        r = rec["result"]
        ratio = r["ratio_dali_over_torch"]
        parts.append(
            f"{tag} {r['dali']['samples_per_s']:.0f} vs {r['torch']['samples_per_s']:.0f} samples/s ({ratio:.2f}x)"
        )
        goals.append(f"{tag} >= 5x: {'met' if ratio >= 5 else 'missed'}")
    return True, "; ".join(parts), "; ".join(goals)


AMP_MODES = ("bf16", "fp16")


def _replicate_cmd(ctx: Ctx) -> tuple[list[str], dict[str, str]]:
    """lb with every sample 25x (2x in the dry run): epochs long enough for 200 steps and a steady state; built
    once, as a command of its own so that its time does not come out of a training run's share."""
    k = "2" if ctx.dry else "25"
    return ([PY, str(Path(__file__).resolve()), "replicate", "--root", str(ctx.data / "lb"), "--k", k,
             "--dst", str(ctx.scratch / "replicated")], {})  # fmt: skip


def amp_cmds(ctx: Ctx):
    out = [_replicate_cmd(ctx)]
    for mode in AMP_MODES:
        args = [PY, str(Path(__file__).resolve()), "amp", "--root", str(ctx.scratch / "replicated"), "--amp", mode,
                "--run", str(ctx.scratch / f"amp_{mode}"), "--json", str(ctx.json(f"amp_{mode}"))]  # fmt: skip
        if mode == "bf16":
            args += ["--trace", str(ctx.scratch / "trace")]
        if ctx.dry:
            args += ["--dry-run"]
        out.append((args, {}))
    return out


def amp_summary(ctx: Ctx):
    parts, ok, goals = [], True, []
    for mode in AMP_MODES:
        p = ctx.json(f"amp_{mode}")
        if not p.is_file():
            ok = False
            parts.append(f"{mode}: no record")
            continue
        r = json.loads(p.read_text())
        ok = ok and r["ok"]
        mem = f", peak {r['gpu_peak_mem_gib']:.1f} GiB" if r.get("gpu_peak_mem_gib") else ""
        pq = r.get("loss_before_queue_first_last")
        before = f" (before the queue {pq[0]:.3f} -> {pq[1]:.3f})" if pq else ""
        parts.append(
            f"{mode}: {r['steps']} steps, loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}{before}, "
            f"{r['clips_per_s']:.0f} clips/s, wait {r['data_wait_pct']:.0f}%{mem}"
        )
        goals += r["problems"]
    return ok, "; ".join(parts), "; ".join(goals)


def step_cmds(ctx: Ctx):
    root = f"data.root={ctx.scratch / 'replicated'}"
    if ctx.dry:
        args = ["--backbone", "tiny", "--clip", "4x1", "--crop", "32", "--batch", "2", "--steps", "1",
                "--warmup", "1", "--device", "cpu", "--amp", "bf16", root, "data.dtype=float32",
                "method.swav.queue_size=8", "data.threads=1"]  # fmt: skip
    else:
        args = ["--paper", "--device", "gpu", "--amp", "bf16", "--steps", "6", "--warmup", "1", root,
                "data.threads=12"]  # fmt: skip
    return [_replicate_cmd(ctx), (_bench(ctx, "step", *args), {})]


STEP_LINE = re.compile(
    r"\[step\] (?P<backbone>\S+) (?P<frames>\d+)x(?P<stride>\d+) b\d+ .*? (?P<variant>fast|baseline)\s*: "
    r"(?P<clips>[\d.]+) clips/s, step [\d.]+ ms \((?P<parts>[^)]*)\)"
)


def step_rows_from_log(log: str) -> list[dict[str, Any]]:
    """The step benchmark's rows rebuilt from its ``[step]`` lines, for a run stopped at its time limit before
    it wrote its JSON (it prints each point as soon as it is measured)."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for m in STEP_LINE.finditer(log):
        key = (m["backbone"], m["frames"], m["stride"])
        row = rows.setdefault(
            key,
            {"point": {"backbone": key[0], "frames": int(key[1]), "stride": int(key[2])}, "from_log": True},
        )
        parts = {k: float(v) for k, v in (x.split("=") for x in m["parts"].split())}
        row[m["variant"]] = {"clips_per_s": float(m["clips"]), "breakdown_ms": parts}
    for row in rows.values():
        if "fast" in row and "baseline" in row:
            row["ratio"] = {"clips_per_s": row["fast"]["clips_per_s"] / row["baseline"]["clips_per_s"]}
    return [r for r in rows.values() if "fast" in r]


def step_summary(ctx: Ctx):
    if ctx.json("step").is_file():
        rows = ctx.last("step")["result"]["rows"]
    else:  # stopped before writing: what it printed
        rows = step_rows_from_log((ctx.out / "validate.log").read_text())
    parts, goals = [], []
    for row in rows:
        pt, f = row["point"], row["fast"]
        b = f["breakdown_ms"]
        step_ms = sum(b.values())
        wait, head = 100 * b["data_wait"] / step_ms, 100 * b["loss_head"] / step_ms
        ratio = row.get("ratio", {}).get("clips_per_s")
        parts.append(
            f"{pt['backbone']} {pt['frames']}x{pt['stride']}: {f['clips_per_s']:.0f} clips/s, wait {wait:.1f}%, "
            f"head {head:.1f}%" + (f", {ratio:.2f}x baseline" if ratio else "")
        )
        goals.append(
            f"{pt['backbone']}: wait<2% {'met' if wait < 2 else 'missed'}, head<1% {'met' if head < 1 else 'missed'}"
            + (f", >=3x {'met' if ratio >= 3 else 'missed'}" if ratio else "")
        )
    src = " (from validate.log: stopped before its JSON)" if rows and rows[0].get("from_log") else ""
    return bool(rows) and not src, "; ".join(parts) + src, "; ".join(goals)


def head_cmds(ctx: Ctx):
    if ctx.dry:
        return [(_bench(ctx, "kernels", "--batch", "8", "--repeats", "1", "--warmup", "1", "-K", "16", "-D", "8",
                        "--impls", "triton", "eager", "--device", "cpu", record="head"), {"TRITON_INTERPRET": "1"})]  # fmt: skip
    return [(_bench(ctx, "kernels", "--quick", "--device", "cuda", record="head"), {})]


def head_summary(ctx: Ctx):
    name = "head" if ctx.json("head").is_file() else "kernels"  # the first GPU run shared kernels.json
    r = ctx.last(name, "result")["result"]
    parts, goals = [], []
    for c in r["cases"]:
        t = {k: c[k]["ms_median"] for k in ("triton", "eager", "compile") if isinstance(c.get(k), dict)}
        if "triton" not in t or "eager" not in t:
            continue
        tag = f"V={c['V']} B={c['B']} q={c['queue']}"
        vs_eager = t["eager"] / t["triton"]
        line = f"{tag}: triton {t['triton']:.3f} ms = {vs_eager:.1f}x eager"
        met = vs_eager >= 2
        if "compile" in t:
            line += f", {t['compile'] / t['triton']:.1f}x compile"
            met = met and t["compile"] >= t["triton"]
        parts.append(line)
        goals.append(f"{tag} {'met' if met else 'missed'}")
    return bool(parts), "; ".join(parts), "goal >=2x eager, >=1x compile: " + ", ".join(goals)


def flow_cmds(ctx: Ctx):
    """tvl1-torch (data_prep/flow_torch.py) at UCF101's 320x240: pairs/s (goal >= 700 on one H100) and EPE, with
    and without compaction; then its flow on the GPU against OpenCV's TV-L1 (CPU) on the same 32 pairs."""
    work = ["--workdir", str(ctx.scratch / "flowset")]
    if ctx.dry:
        dev = ["--device", "cpu", "--no-compile"]
        speed = [*dev, "--classes", "1", "--frames", "3", "--height", "32", "--width", "40", "--repeats", "1"]
        accuracy = [*dev, "--classes", "1", "--frames", "3", "--height", "32", "--width", "40"]
    else:
        speed = ["--device", "cuda", "--classes", "4", "--frames", "65", "--height", "240", "--width", "320",
                 "--batch", "256", "--repeats", "2"]  # fmt: skip
        accuracy = ["--device", "cuda", "--classes", "4", "--frames", "9", "--height", "128", "--width", "171",
                    "--threads", "8"]  # fmt: skip
    # --compact both: what running only the still-active pairs buys on the GPU, beside the whole batch
    return [
        (_bench(ctx, "flow", "--methods", "tvl1-torch", "--compact", "both", *speed, *work), {}),
        (_bench(ctx, "flow", "--methods", "tvl1,tvl1-torch", *accuracy, *work), {}),
    ]


def flow_summary(ctx: Ctx):
    runs = [x["result"] for x in json.loads(ctx.json("flow").read_text())]
    r = next(x for x in reversed(runs) if "compact_vs_nocompact" in x)
    m = r["methods"]["tvl1-torch"]
    h, w = r["size"]
    pps = m["pairs_per_s"]
    fig = f"{pps:.0f} pairs/s at {w}x{h} ({r['tvl1_torch']}), EPE {m['epe']:.3f} px ({r['pairs']} pairs)"
    same = r["compact_vs_nocompact"]["max_abs_difference"]
    fig += f"; compaction {m['speed_over_tvl1-torch-nocompact']:.2f}x the whole batch (max flow difference {same:g})"
    acc = next(x for x in reversed(runs) if "vs_opencv_tvl1" in x)
    c = acc["vs_opencv_tvl1"]
    fig += (
        f"; against OpenCV at {acc['size'][1]}x{acc['size'][0]}: EPE {c['epe_torch']:.4f} vs {c['epe_opencv']:.4f} "
        f"(ratio {c['epe_ratio_torch_over_opencv']:.4f}), {c['epe_between']:.4f} px between the two"
    )
    goal = f">= 700 pairs/s at 320x240: {'met' if pps >= 700 else 'missed'}" if (h, w) == (240, 320) else ""
    # tvl1-torch stands in for OpenCV's TV-L1: it may be at most 5 % less accurate
    ok = c["epe_ratio_torch_over_opencv"] <= 1.05
    return ok, fig, goal + ("; EPE within 5 % of OpenCV's" if ok else "; EPE more than 5 % above OpenCV's")


def augment_cmds(ctx: Ctx):
    """The released colour jitter's DALI steps on the GPU (its arithmetic contrast step) against the CPU
    reference, and their cost per clip beside the one-map jitter."""
    if ctx.dry:
        args = [
            "--device",
            "cpu",
            "--frames",
            "4",
            "--size",
            "16",
            "--batch",
            "2",
            "--iters",
            "1",
            "--repeat",
            "1",
        ]
    else:
        args = ["--device", "cuda", "--threads", "4", "--repeat", "3"]
    return [(_bench(ctx, "augment", *args), {})]


def augment_summary(ctx: Ctx):
    r = ctx.last("augment")["result"]
    ms, ref = r["ms_per_clip"], r["released_vs_reference"]
    fig = (
        f"released {ms['released']:.2f} vs one-map {ms['affine']:.2f} ms/clip; vs reference max |d| "
        f"{ref['max_abs']:.0f}, mean {ref['mean_abs']:.3f}"
    )
    return bool(r["agrees_with_reference"]), fig, "max |d| <= 3, mean < 0.3 levels"


def evalwin_cmds(ctx: Ctx):
    """The eval pipelines with the released test windows (data.eval.windows=overlap, the default: each video's
    count looked up, the batch padded, the padding dropped), centre crop and ten-crop, both backends."""
    common, sets = _loader_args(ctx, steps=6, repeat=1)
    root = ["--root", str(ctx.data / "lb"), "--mode", "eval"]
    tencrop = [*sets, "data.eval.crop=tencrop"]
    return [
        (_bench(ctx, "loader", *root, *common, "--set", *sets, record="evalwin"), {}),
        (_bench(ctx, "loader", *root, *common, "--set", *tencrop, record="evalwin"), {}),
    ]


def evalwin_summary(ctx: Ctx):
    doc = json.loads(ctx.json("evalwin").read_text())[-2:]
    parts = []
    for tag, rec in zip(("centre", "ten-crop"), doc):
        r = rec["result"]
        parts.append(f"{tag} {r['dali']['clips_per_s']:.0f} vs {r['torch']['clips_per_s']:.0f} clips/s")
    return True, "; ".join(parts), ""


def nvtx_cmds(ctx: Ctx):
    return [([PY, str(Path(__file__).resolve()), "nvtx", "--trace", str(ctx.scratch / "trace"),
              "--json", str(ctx.json("nvtx"))], {})]  # fmt: skip


def nvtx_summary(ctx: Ctx):
    r = json.loads(ctx.json("nvtx").read_text())
    counts = ", ".join(f"{k} {v}" for k, v in r["ranges"].items())
    return (
        r["ok"],
        counts + (f"; on GPU: {r['gpu_ranges']}" if r.get("gpu_ranges") else ""),
        "; ".join(r["problems"]),
    )


STEPS = [
    Step("kernels", "compiled Triton kernels vs references", 75, kernels_cmds, kernels_summary),
    Step("decode", "NVDEC vs CPU frames, alignment, frames/s", 40, decode_cmds, decode_summary),
    Step("amp", "200 bf16 + 200 fp16 S3D steps", 130, amp_cmds, amp_summary),
    Step("step", "step breakdown at paper shapes vs baseline", 110, step_cmds, step_summary),
    Step("loader", "GPU pipeline vs DataLoader, paper clips", 60, loader_cmds, loader_summary),
    Step("head", "loss head: Triton vs eager vs compile", 45, head_cmds, head_summary),
    Step("nvtx", "step ranges in the profiler trace", 10, nvtx_cmds, nvtx_summary),
    # not in the default run, which must fit 8 minutes: `--only flow` (about 2-3 min with compilation; two variants)
    Step("flow", "TV-L1 in PyTorch (tvl1-torch) at 320x240", 210, flow_cmds, flow_summary, default=False),
    # `--only augment`: the released colour jitter's steps on the GPU against the CPU reference (under 30 s)
    Step(
        "augment",
        "released colour jitter on the GPU vs reference",
        45,
        augment_cmds,
        augment_summary,
        default=False,
    ),
    # `--only evalwin`: the released test windows through the GPU eval pipeline (about 1 min)
    Step(
        "evalwin",
        "eval pipelines, overlapping test windows",
        90,
        evalwin_cmds,
        evalwin_summary,
        default=False,
    ),
]


# --------------------------------------------------------------------------------------------- runner
def _run_cmd(cmd: list[str], env_extra: dict[str, str], timeout: float, log) -> int | None:
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


def run(args: argparse.Namespace) -> int:
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
    only = [s for s in args.only.split(",") if s] if args.only else [s.name for s in STEPS if s.default]
    unknown = set(only) - {s.name for s in STEPS}
    if unknown:
        print(
            f"validate: unknown step(s) {sorted(unknown)}; steps: {[s.name for s in STEPS]}", file=sys.stderr
        )
        return 2
    steps = [s for s in STEPS if s.name in only]
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
                t0 = time.perf_counter()
                rcs = []
                cmds = s.commands(ctx)
                for j, (cmd, env_extra) in enumerate(cmds):
                    # each command gets an equal share of what is left (unused time carries over), so that
                    # one slow command (bf16 training) cannot starve the next (fp16)
                    share = (limit - (time.perf_counter() - t0)) / (len(cmds) - j)
                    rc = _run_cmd(cmd, env_extra, share, log)
                    rcs.append(rc)
                    if rc is None:
                        break
                row["seconds"] = round(time.perf_counter() - t0, 1)
                row["returncodes"] = rcs
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
                row.update(status=status, figure=fig, goals=goals)
            record["steps"].append(row)
            record["wall_s"] = round(time.perf_counter() - t_start, 1)
            _write_json(out / "validate.json", record)  # after every step: a killed run keeps what it did
            print(f"[{s.name}] {row['status']} {row.get('seconds', 0):.0f} s: {row['figure']}", flush=True)
            if row["goals"]:
                print(f"[{s.name}]   {row['goals']}", flush=True)
    print(_table(record))
    (out / "summary.md").write_text(_table(record) + "\n")
    return 0 if all(r["status"] == "pass" for r in record["steps"]) else 1


def _table(record: dict[str, Any]) -> str:
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


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- records -> docs
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
            *_table(rec).splitlines()[2:],
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


# --------------------------------------------------------------------------------------------- single steps
def amp(args: argparse.Namespace) -> int:
    """Train 200 steps (4 in the dry run) of configs/ucf101_s3d.yaml (rgb1) with one AMP mode on ``--root`` (the
    replicated set) and judge the run from its metrics.jsonl: finite, loss falling before the queue joins,
    clips/s, data-wait, peak memory."""
    run_dir = Path(args.run)
    shutil.rmtree(run_dir, ignore_errors=True)
    if args.dry_run:
        epochs, spe = 2, 2
        size = ["model.backbone=tiny", "data.num_frames=4", "data.crop_size=32", "train.batch_size=2",
                "method.swav.queue_size=8", "data.threads=1", "data.dtype=float32", "train.log_every_steps=1",
                "method.vicc.single_freeze_prototypes=1", "method.vicc.queue_start_rgb=1",
                f"schedule.steps_per_epoch={spe}"]  # fmt: skip
        window = "[1,3]"
    else:  # 48 videos x 25 = 1200 at batch 48: 25 steps per epoch, 8 epochs = 200 steps
        epochs = 8
        size = ["data.threads=12", "train.log_every_steps=5", "method.vicc.single_freeze_prototypes=1",
                "method.vicc.queue_start_rgb=2"]  # fmt: skip
        window = "[5,8]"  # early: a run cut short by its time limit still leaves its trace
    # --root is already replicated (the step's first command): 25x on the GPU, 2x in the dry run
    # the paper config on the replicated synthetic set: not the released data recipe, accepted on purpose
    cmd = [PY, "-m", "vicc_fast.train", "--config", "configs/ucf101_s3d.yaml", f"data.root={args.root}",
           "data.build_if_missing=false", "data.require_recipe=none", "schedule.phase=rgb1",
           f"schedule.single_epochs={epochs}", f"train.amp={args.amp}", "train.channels_last=true",
           f"train.out_dir={run_dir}", "train.resume=never", "eval.after_phase=false", "train.progress=false",
           "train.ckpt_every_steps=0", *size]  # fmt: skip
    if args.trace:
        cmd += ["profile.nvtx=true", f"profile.steps={window}", f"profile.torch_trace={args.trace}"]
    # stop training a few seconds before the runner's deadline, so that a slow run is still judged
    deadline = float(os.environ.get(DEADLINE_ENV, time.time() + 3600))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=max(5.0, deadline - time.time() - 8)
        )
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = None
        stdout, stderr = (x.decode() if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr))
    wall = time.perf_counter() - t0
    sys.stdout.write(stdout[-4000:])
    sys.stderr.write(stderr[-4000:])
    rows = []
    mpath = run_dir / "metrics.jsonl"
    if mpath.is_file():
        rows = [json.loads(x) for x in mpath.read_text().splitlines() if x.strip()]
    problems = []
    if rc is None:
        problems.append(f"stopped at the step's time limit after {wall:.0f} s")
    elif rc != 0:
        problems.append(f"train exited {rc}: {(stderr.strip().splitlines() or ['?'])[-1][:300]}")
    losses = [r["loss"] for r in rows]
    if not rows:
        problems.append("no metrics logged")
    nonfinite = [
        r["step"] for r in rows if any(isinstance(v, float) and not math.isfinite(v) for v in r.values())
    ]
    if nonfinite:
        problems.append(f"non-finite values at logged steps {nonfinite[:5]}")
    first, last = _fifths(losses)
    # Judged before the queue joins: from then on the Sinkhorn targets equipartition over batch + queue rows, a
    # harder assignment, and SwAV's loss may rise (seen on the H200: fp16 5.34 at step 115 -> 6.05 at 200)
    # without anything being wrong with the arithmetic, which is what this step is about.
    pre = [r["loss"] for r in rows if not r.get("queue_active")]
    pre_first, pre_last = _fifths(pre)
    if len(pre) >= 2 and not pre_last < pre_first and not args.dry_run:  # a 4-step tiny run need not fall
        problems.append(f"loss did not fall before the queue: first {pre_first:.4f}, last {pre_last:.4f}")
    steady = rows[len(rows) // 5 :] or rows  # skip the first fifth: cudnn autotuning, allocator, DALI start
    res = {
        "amp": args.amp,
        "steps": rows[-1]["step"] if rows else 0,  # the run-wide step count at the last log
        "loss_first": first,
        "loss_last": last,
        "loss_before_queue_first_last": [pre_first, pre_last],
        "queue_from_step": next((r["step"] for r in rows if r.get("queue_active")), None),
        "logged_steps": [r["step"] for r in rows],
        "losses": losses,
        "clips_per_s": _median([r["clips_per_s"] for r in steady]),
        "data_wait_pct": _median([r["data_wait_pct"] for r in steady]),
        "gpu_peak_mem_gib": max((r.get("gpu_peak_mem_gib", 0.0) for r in rows), default=0.0),
        "wall_s": wall,
        "command": cmd,
        "problems": problems,
        "ok": not problems,
        "note": "clips/s and data-wait: medians over the logged intervals after the first fifth of the run"
        + ("; a few early steps ran under torch.profiler (profile.steps)" if args.trace else ""),
    }
    _write_json(Path(args.json), res)
    print(json.dumps({k: v for k, v in res.items() if k not in ("losses", "command")}, indent=1))
    return 0 if res["ok"] else 1


def _fifths(xs: list[float]) -> tuple[float, float]:
    """Means of the first and the last fifth of ``xs`` (at least one value each; NaN when empty)."""
    if not xs:
        return math.nan, math.nan
    n = max(1, len(xs) // 5)
    return sum(xs[:n]) / n, sum(xs[-n:]) / n


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def replicate(root: Path, k: int, dst: Path) -> Path:
    """``root`` with every sample ``k`` times (vicc_fast.bench.loader.replicate_shards) at ``dst``."""
    if (dst / "manifest.json").is_file():
        return dst
    from vicc_fast.bench.loader import replicate_shards

    src = replicate_shards(str(root), k)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.move(src, dst)
    return dst


NVTX_NAMES = ("data", "forward", "backward", "optimizer")


def nvtx(args: argparse.Namespace) -> int:
    """Count the step ranges in the torch.profiler Chrome trace(s) under ``--trace``."""
    problems = []
    counts = dict.fromkeys(NVTX_NAMES, 0)
    gpu = dict.fromkeys(NVTX_NAMES, 0)
    traces = sorted(Path(args.trace).glob("*.json"))
    if not traces:
        problems.append(f"no trace in {args.trace}")
    for t in traces:
        for ev in json.loads(t.read_text()).get("traceEvents", []):
            name = ev.get("name")
            if name in counts and ev.get("ph") == "X":
                if ev.get("cat") == "gpu_user_annotation":
                    gpu[name] += 1
                elif ev.get("cat") == "user_annotation":
                    counts[name] += 1
    missing = [k for k, v in counts.items() if v == 0]
    if traces and missing:
        problems.append(f"ranges missing from the trace: {missing}")
    res = {"traces": [str(t) for t in traces], "ranges": counts, "gpu_ranges": {k: v for k, v in gpu.items() if v},
           "problems": problems, "ok": not problems}  # fmt: skip
    _write_json(Path(args.json), res)
    print(json.dumps(res, indent=1))
    return 0 if res["ok"] else 1


# --------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu/validate.py", description=__doc__,
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
            changed = write_report(Path(args.write), result_dirs())
            print(f"{args.write}: {'updated' if changed else 'already up to date'}")
        else:
            print(report(result_dirs()))
        return 0
    if args.cmd == "run":
        if args.budget is None:
            args.budget = 290.0 if args.dry_run else 470.0
        return run(args)
    if args.cmd == "make-data":
        make_data(Path(args.out), args.tiny)
        return 0
    if args.cmd == "amp":
        return amp(args)
    if args.cmd == "nvtx":
        return nvtx(args)
    replicate(Path(args.root), args.k, Path(args.dst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
