"""The steps of the GPU validation (docs/gpu_validation.md): for each, the commands it runs and how its records are
judged (ok, key figure, goals). The runner (runner.py) runs them; the report (report.py) judges committed records
again.

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
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.gpu.common import PY, VALIDATE

STREAMS = ("two-stream", "rgb")


@dataclass
class Step:
    """One step: its commands (run in order, each under a share of the step's time) and its summary."""

    name: str
    what: str
    timeout: float  # seconds on the GPU (the dry run is bounded by its budget only)
    commands: Callable[[Ctx], list[tuple[list[str], dict[str, str]]]]
    summary: Callable[[Ctx], tuple[bool, str, str]]  # (ok, key figure, goals) from the step's JSON
    default: bool = True  # in the default run; the others only when --only names them


@dataclass
class Ctx:
    """Where a step's commands write and read: the records folder, the sets, dry run or GPU, scratch space."""

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
    return ([PY, str(VALIDATE), "replicate", "--root", str(ctx.data / "lb"), "--k", k,
             "--dst", str(ctx.scratch / "replicated")], {})  # fmt: skip


def amp_cmds(ctx: Ctx):
    out = [_replicate_cmd(ctx)]
    for mode in AMP_MODES:
        args = [PY, str(VALIDATE), "amp", "--root", str(ctx.scratch / "replicated"), "--amp", mode,
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
    return [([PY, str(VALIDATE), "nvtx", "--trace", str(ctx.scratch / "trace"),
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
