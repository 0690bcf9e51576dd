"""The loader benchmark runs both backends on real (tiny) shards and reports ratios that follow from its own
figures; no timing is asserted."""

from __future__ import annotations

import argparse
import json
import tempfile

import pytest

from data_prep import shards
from tests.eval.conftest import write_shard_set
from vicc_fast.bench import loader as L


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    L.add_arguments(p)
    return p.parse_args(argv)


def test_loader_bench_both_backends_with_peer(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the replicated scratch copy goes there
    root = write_shard_set(tmp_path / "set", [0, 1, 0, 1], [0, 1], ["A", "B"], frames=6).parent
    args = parse(
        ["--root", str(root), "--batch", "2", "--steps", "2", "--warmup", "0", "--repeat", "1",
         "--threads", "1", "--replicate", "2", "--peer", "orig=2.5", "--device", "cpu",
         "--set", "data.num_frames=4", "data.crop_size=16", "data.dtype=float32"]
    )  # fmt: skip
    res = L.run(args)
    for b in ("dali", "torch"):
        assert (
            res[b]["samples_per_s"] > 0 and res[b]["steps_per_epoch"] == 4
        )  # 8 replicated samples / batch 2
        assert res[f"ratio_{b}_over_orig"] == pytest.approx(res[b]["samples_per_s"] / 2.5)
        # two streams x two views per sample
        assert res[b]["clips_per_s"] == pytest.approx(4 * res[b]["samples_per_s"])
    assert res["ratio_dali_over_torch"] == pytest.approx(
        res["dali"]["samples_per_s"] / res["torch"]["samples_per_s"]
    )
    assert res["root"].startswith(str(tmp_path))
    m = json.loads((L.Path(res["root"]) / "manifest.json").read_text())
    assert m["splits"]["train"]["num_samples"] == 8
    keys = [k for sh in m["splits"]["train"]["shards"] for k in sh["keys"]]
    assert len(set(keys)) == 8 and keys[0] == shards.sample_key("train", 0)


@pytest.mark.parametrize("bad", ["orig", "orig=x", "=3", "orig=-1"])
def test_bad_peer_is_one_line_error(bad: str) -> None:
    with pytest.raises(SystemExit, match="NAME=SAMPLES_PER_S"):
        L.parse_peer(bad)
