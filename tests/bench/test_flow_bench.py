"""bench flow on a tiny synthetic set: every method timed and scored, tvl1-torch compared with OpenCV's TV-L1."""

from __future__ import annotations

import argparse

from vicc_fast.bench import flow as flow_bench
from vicc_fast.bench import report_flow
from vicc_fast.bench.common import environment


def test_flow_bench_compares_tvl1_torch_with_opencv(tmp_path):
    p = argparse.ArgumentParser()
    flow_bench.add_arguments(p)
    args = p.parse_args(
        ["--methods", "tvl1,tvl1-torch,dis", "--classes", "2", "--frames", "3", "--height", "32"]
        + ["--width", "43", "--device", "cpu", "--no-compile", "--repeats", "2", "--workdir", str(tmp_path)]
        + ["--profile", "--compact", "both"]
    )
    r = flow_bench.run(args)
    assert r["pairs"] == 4 and r["repeats"] == 2
    torch_row = r["methods"]["tvl1-torch"]
    assert len(torch_row["pairs_per_s_each_repeat"]) == 2
    assert torch_row["speed_over_tvl1"] > 0 and torch_row["speed_over_dis"] > 0
    cmp = r["vs_opencv_tvl1"]
    assert cmp["epe_between"] < 0.1 and 0.8 < cmp["epe_ratio_torch_over_opencv"] < 1.2
    assert 0 <= cmp["uint8_values_differing"] < 0.2
    prof = r["tvl1_torch_profile"]
    assert {"inner step", "median", "warp", "resize"} <= set(prof["blocks"])
    assert 0 < sum(b["share"] for b in prof["blocks"].values()) <= 1.01
    # --compact both: the batch kept whole to the end, timed beside; same flow, less active work
    assert r["methods"]["tvl1-torch"]["speed_over_tvl1-torch-nocompact"] > 0
    assert r["compact_vs_nocompact"]["max_abs_difference"] == 0
    whole = r["tvl1_torch_profile_nocompact"]["step_work_active"]
    assert 0 < whole <= prof["step_work_active"] <= 1
    # docs/optical_flow.md's tables render this run
    runs = [{"benchmark": "flow", "env": environment(), "result": r}]
    for block in (report_flow.accuracy_block, report_flow.speed_block, report_flow.profile_block):
        rows = [line for line in block(runs).splitlines() if line.startswith("| 32x43 |")]
        assert len(rows) == 1, block.__name__
    acc = report_flow.accuracy_block(runs)
    assert f"| {cmp['epe_opencv']:.4f} | {cmp['epe_torch']:.4f} |" in acc
    assert f"**{torch_row['speed_over_tvl1']:g}**" in report_flow.speed_block(runs)
    compact = report_flow.compact_block(runs)
    assert f"{100 * whole:.0f} % / {100 * prof['step_work_active']:.0f} %" in compact
    assert f"**{torch_row['speed_over_tvl1-torch-nocompact']:g}x**" in compact
    assert "no recipes record" in report_flow.recipes_block(runs)


def test_flow_bench_compares_the_two_build_recipes_per_video(tmp_path):
    """--stored-size: flow at the source size then resized vs flow at the stored size, OpenCV's TV-L1 and
    tvl1-torch, each timed per repeat (structure only: no timing is asserted)."""
    p = argparse.ArgumentParser()
    flow_bench.add_arguments(p)
    args = p.parse_args(
        ["--methods", "tvl1,tvl1-torch", "--classes", "1", "--frames", "3", "--height", "32", "--width", "48"]
        + ["--stored-size", "16x24", "--device", "cpu", "--no-compile", "--repeats", "2"]
        + ["--workdir", str(tmp_path)]
    )
    r = flow_bench.run(args)
    assert r["mode"] == "recipes" and r["source_size"] == [32, 48] and r["stored_size"] == [16, 24]
    assert (r["videos"], r["frames_per_video"], r["repeats"]) == (1, 3, 2)
    assert set(r["methods"]) == {"tvl1", "tvl1-torch"}
    for row in r["methods"].values():
        for variant in ("source", "stored"):
            assert len(row[variant]["s_per_video_each_repeat"]) == 2  # both variants ran every repeat
            assert row[variant]["s_per_video"] > 0
            assert 0 <= row[variant]["epe_at_stored_size"] < r["zero_flow_epe_at_stored_size"] + 1
        assert row["cost_source_over_stored"] > 0 and row["epe_between_recipes"] >= 0
    table = report_flow.recipes_block([{"benchmark": "flow", "env": environment(), "result": r}])
    cost = r["methods"]["tvl1"]["cost_source_over_stored"]
    assert "| OpenCV TV-L1 | " in table and f"| {cost:g}x |" in table and "stored at 16x24" in table
