"""scripts/gpu/validate.sh cannot rot between GPU loans: its dry run (every step on the CPU, tiny shapes) passes
and leaves the records the GPU run leaves; a hanging step costs only its own time limit."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.gpu import report, runner, steps

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dry_run_passes_and_writes_every_record(tmp_path) -> None:
    out, data = tmp_path / "out", tmp_path / "data"
    proc = subprocess.run(
        # a generous budget: about a minute on 2 quiet cores, but CI machines can be busy
        ["bash", "scripts/gpu/validate.sh", "--dry-run", "--out", str(out), "--data", str(data), "--budget", "1500"],
        cwd=REPO, capture_output=True, text=True, timeout=1700,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads((out / "validate.json").read_text())
    names = [s["step"] for s in rec["steps"]]
    assert names == [s.name for s in steps.STEPS if s.default]
    assert all(s["status"] == "pass" for s in rec["steps"]), rec["steps"]
    for name in ("kernels", "decode", "loader", "amp_bf16", "amp_fp16", "step", "head", "nvtx"):
        assert (out / f"{name}.json").is_file(), name
    amp = json.loads((out / "amp_fp16.json").read_text())
    assert amp["steps"] == 4 and len(amp["losses"]) == 4 and amp["ok"]
    nv = json.loads((out / "nvtx.json").read_text())
    assert all(nv["ranges"][k] >= 1 for k in ("data", "forward", "backward", "optimizer"))
    dec = json.loads((out / "decode.json").read_text())[-1]["result"]
    assert dec["alignment"]["clips"] > 0 and not dec["alignment"]["problems"]
    table = (out / "summary.md").read_text()
    assert table.count("| pass |") == len(names)


def test_hanging_command_is_killed_with_its_children(tmp_path) -> None:
    marker = tmp_path / "child_alive"
    # the child of the child would touch the marker after 3 s if the process group were not killed
    cmd = ["bash", "-c", f"(sleep 3; touch {marker}) & sleep 60"]
    t0 = time.perf_counter()
    with open(tmp_path / "log", "w") as log:
        rc = runner.run_cmd(cmd, {}, 1.0, log)
    assert rc is None and time.perf_counter() - t0 < 10
    time.sleep(3.5)
    assert not marker.exists()


def test_budget_leaves_later_steps_a_chance(tmp_path) -> None:
    """With a budget smaller than the steps' limits, every step still runs (each gets a share), none is
    skipped, and a failing step is reported as FAIL without stopping the others."""
    calls = []

    def cmds(ctx):
        calls.append(ctx)
        return [([sys.executable, "-c", "import sys; sys.exit(3)"], {})]

    failing = [steps.Step(f"s{i}", "x", 100, cmds, lambda ctx: (True, "fig", "")) for i in range(3)]
    data = tmp_path / "data"
    for need in ("lb", "codes", "ramps"):
        (data / need).mkdir(parents=True)
        (data / need / "manifest.json").write_text("{}")
    args = argparse.Namespace(out=str(tmp_path / "out"), data=str(data), scratch=str(tmp_path / "s"),
                                dry_run=False, only="", budget=90.0)  # fmt: skip
    assert runner.run(args, failing) == 1
    rec = json.loads((tmp_path / "out" / "validate.json").read_text())
    assert [r["status"] for r in rec["steps"]] == ["FAIL"] * 3
    assert rec["steps"][0]["limit_s"] <= 90 - 2 * 20


def test_benchmarks_gpu_tables_equal_what_the_records_generate() -> None:
    """BENCHMARKS.md's GPU validation block is generated from benchmarks/results/gpu/*: no figure can drift."""
    text = (REPO / "BENCHMARKS.md").read_text()
    block = text.split(report.REPORT_BEGIN, 1)[1].split(report.REPORT_END, 1)[0]
    want = report.report(report.result_dirs())
    assert report.REPORT_BEGIN + block + report.REPORT_END == want, (
        "run: python scripts/gpu/validate.py report --write BENCHMARKS.md"
    )
    assert len(report.result_dirs()) >= 2 and "NVIDIA H200" in want


def test_step_rows_are_recovered_from_the_log() -> None:
    log = (
        "[step] s3d 32x1 b48 bf16 cl=on compile=off rgb1 fast    : 713.6 clips/s, step 144.1 ms (data_wait=2.4 "
        "forward=63.5 loss_head=2.7 backward=69.1 optimizer=6.2 other=0.1) repeats [144.06]\n"
        "[step] s3d 32x1 b48 bf16 cl=on compile=off rgb1 baseline: 57.0 clips/s, step 1885.6 ms (data_wait=1739.6 "
        "forward=63.7 loss_head=4.8 backward=69.8 optimizer=7.5 other=0.2) repeats [1885.61]\n"
    )
    (row,) = steps.step_rows_from_log(log)
    assert row["point"] == {"backbone": "s3d", "frames": 32, "stride": 1}
    assert row["fast"]["breakdown_ms"]["loss_head"] == 2.7
    assert abs(row["ratio"]["clips_per_s"] - 713.6 / 57.0) < 1e-9


@pytest.mark.parametrize(
    "step,figure", [("flow", "pairs/s"), ("evalwin", "ten-crop"), ("augment", "vs reference max |d|")]
)
def test_opt_in_steps_run_when_asked(tmp_path, step, figure) -> None:
    """The opt-in steps in a dry run: flow (tvl1-torch: pairs/s with and without compaction, EPE, and its flow
    against OpenCV's), evalwin (both
    backends read the overlapping test windows, centre and ten-crop) and augment (the released jitter's steps
    against the reference: passes only when they agree)."""
    args = argparse.Namespace(out=str(tmp_path / "out"), data=str(tmp_path / "data"), scratch=None,
                                dry_run=True, only=step, budget=900.0)  # fmt: skip
    assert runner.run(args) == 0
    rec = json.loads((tmp_path / "out" / "validate.json").read_text())
    assert [r["step"] for r in rec["steps"]] == [step] and rec["steps"][0]["status"] == "pass"
    assert figure in rec["steps"][0]["figure"]
    if step == "flow":  # both commands: speed with and without compaction, then the flow against OpenCV's
        assert "compaction" in rec["steps"][0]["figure"] and "against OpenCV" in rec["steps"][0]["figure"]
