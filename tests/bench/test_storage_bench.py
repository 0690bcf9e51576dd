"""bench storage on a tiny synthetic set: every size and recipe built, bytes per video recorded."""

from __future__ import annotations

import argparse

import pytest

from vicc_fast.bench import storage


def test_storage_bench_records_bytes_per_video_for_each_size(tmp_path):
    p = argparse.ArgumentParser()
    storage.add_arguments(p)
    args = p.parse_args(
        ["--sizes", "24x32,48x64", "--source-size", "48x64", "--classes", "2", "--frames", "4"]
        + ["--flow-at", "stored,source", "--workdir", str(tmp_path)]
    )
    r = storage.run(args)
    rows = {(tuple(row["size"]), row["flow_at"]): row for row in r["rows"]}
    # 48x64 is the source size: flow at source is flow at stored there, built once
    assert set(rows) == {((24, 32), "stored"), ((24, 32), "source"), ((48, 64), "stored")}
    for row in rows.values():
        assert row["videos"] == 4 and row["frames_per_video"] == 4
        assert row["rgb_bytes_per_video"] > 0 and row["flow_bytes_per_video"] > 0
        assert (
            row["shard_bytes_per_video"] > row["rgb_plus_flow_bytes_per_video"]
        )  # plus label, json, headers
    assert rows[(24, 32), "stored"]["rgb_plus_flow_bytes_over_first"] == 1.0
    assert rows[(48, 64), "stored"]["pixels_over_first"] == 4.0
    assert rows[(48, 64), "stored"]["rgb_bytes_over_first"] > 1.0
    assert r["source"] == {"kind": "synthetic", "size": [48, 64], "frames": 4, "videos": 4}


def test_storage_bench_names_a_bad_size():
    with pytest.raises(ValueError, match="'12by5'"):
        storage.parse_size("12by5")
