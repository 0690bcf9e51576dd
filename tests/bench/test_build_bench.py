"""bench build on a tiny synthetic set: each flow method built, rebuilt from its cache and verified, as
processes; shard_format.md's table renders the record."""

from __future__ import annotations

import argparse

import pytest

from vicc_fast.bench import build as build_bench
from vicc_fast.bench import report
from vicc_fast.bench.common import environment


def test_build_bench_times_build_rerun_and_verify(tmp_path):
    p = argparse.ArgumentParser()
    build_bench.add_arguments(p)
    args = p.parse_args(
        [
            "--classes",
            "2",
            "--train-per-class",
            "2",
            "--test-per-class",
            "1",
            "--frames",
            "6",
            "--height",
            "32",
        ]
        + ["--width", "43", "--flow", "dis,tvl1:1", "--workers", "1", "--workdir", str(tmp_path)]
    )
    r = build_bench.run(args)
    dis, tvl1 = r["rows"]
    assert (dis["flow"], dis["videos"], tvl1["flow"], tvl1["videos"]) == (
        "dis",
        6,
        "tvl1",
        2,
    )  # --limit 1 per split
    for row in (dis, tvl1):
        assert row["build"]["wall_s"] > 0 and row["build"]["cpu_s"] > 0 and row["verify"]["wall_s"] > 0
        assert row["frames_per_video"] == 6 and row["rgb_bytes_per_video"] > 0 and row["tars"] >= 1
        assert "--flow " + row["flow"] in row["command"]
    table = report.build_block([{"benchmark": "build", "env": environment(), "result": r}])
    assert table.count("\n| ") == 2 and f"| dis | 6 | {dis['build']['wall_s']:g} |" in table
    assert "no build record yet" in report.build_block([])
    with pytest.raises(argparse.ArgumentTypeError, match="'nope'"):
        build_bench.parse_flows("dis,nope")
