"""Kinetics as a source (issue 27): the official CSV layout, flat or per-class folders, missing and broken
downloads recorded as rejections with their reasons and counted; a build in parts plus pack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep import build, shards, synthetic, verify
from data_prep.sources import DataSourceError, kinetics_name, load_records
from vicc_fast.config import SyntheticConfig

H, W = 24, 32
KW = {"flow_method": "dis", "height": H, "width": W, "shard_size": 4, "workers": 1, "progress": False}
CFG = SyntheticConfig(num_classes=3, train_per_class=4, test_per_class=2, frames=8, height=H, width=W, seed=3)


@pytest.fixture(scope="module")
def kinetics_root(tmp_path_factory) -> Path:
    """A synthetic set in the Kinetics layout: 12 train rows (1 never downloaded, 1 an error page), 6 validate."""
    return synthetic.generate_kinetics(
        tmp_path_factory.mktemp("k400"), CFG, missing=1, broken=1, progress=False
    )


def _cli(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--source", "kinetics", "--root", str(root), "--out", str(out), "--flow", "dis", "--height",
            str(H), "--width", str(W), "--shard-size", "4", "--workers", "1", "--no-progress", *extra]  # fmt: skip


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*-*.tar")) + sorted(out.glob("*-*.idx"))}


def test_kinetics_layout_records(kinetics_root):
    recs = load_records("kinetics", kinetics_root)
    assert recs.classes == ["slide horizontal", "slide vertical", "spin"]  # alphabetical, from train.csv
    assert [sum(r.split == s for r in recs) for s in ("train", "test")] == [12, 6]  # validate = test
    rows = (kinetics_root / "annotations" / "train.csv").read_text().splitlines()
    label, yid, start, end = rows[1].split(",")[:4]
    first = next(r for r in recs if r.video_id == f"train/{kinetics_name(yid, int(start), int(end))}")
    assert first.class_name == label.strip('"') and first.path.parent.name == label.strip('"')
    problems = sorted(r.problem for r in recs if r.problem)
    assert problems == ["file not found (not downloaded)"]  # the error page is found by decoding it
    assert all(r.label == recs.classes.index(r.class_name) for r in recs)


def test_flat_layout_and_bad_csv(tmp_path):
    root = synthetic.generate_kinetics(tmp_path / "k", CFG, per_class=False, progress=False)
    recs = load_records("kinetics", root)
    assert all(r.problem is None and r.path.parent.name in ("train", "val") for r in recs)
    csv = root / "annotations" / "validate.csv"
    csv.write_text(csv.read_text() + '"spin",abc,notanumber,10,validate,0\n')
    with pytest.raises(DataSourceError, match=r"validate\.csv:\d+: expected label,youtube_id"):
        load_records("kinetics", root)


def test_missing_and_broken_downloads_are_counted_rejections(kinetics_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert build.main(_cli(kinetics_root, out)) == 0  # no --skip-bad needed: Kinetics never crashes on them
    m = shards.load_manifest(out)
    reasons = sorted(r["reason"].split(":")[0] for r in m["rejected"])
    assert reasons == ["file not found (not downloaded)", "unreadable video"]
    assert m["splits"]["train"]["num_samples"] == 10 and m["splits"]["test"]["num_samples"] == 6
    printed = capsys.readouterr().out
    assert "rejected 2 video(s) (1 file not found, 1 unreadable video)" in printed


def test_parts_then_pack_byte_identical_to_one_build(kinetics_root, tmp_path, capsys):
    single = tmp_path / "single"
    assert build.main(_cli(kinetics_root, single)) == 0
    parted = tmp_path / "parted"
    assert build.main(_cli(kinetics_root, parted, "--part", "0/3")) == 0
    assert not (parted / shards.MANIFEST).exists()  # a part packs nothing
    # pack refuses while parts are missing, naming the videos and the parts
    capsys.readouterr()
    assert build.main(["pack", *_cli(kinetics_root, parted)]) == 2
    err = capsys.readouterr().err
    assert "pack: 11 of 18 videos are not done" in err and "Missing from part(s) 1/3, 2/3" in err
    assert "part(s) not complete: 1/3 (never started), 2/3 (never started)" in err
    # the other parts from the scheduler's variables, as a Slurm array task / torchrun rank sees them
    env = {
        **os.environ,
        "SLURM_ARRAY_TASK_ID": "5",
        "SLURM_ARRAY_TASK_MIN": "4",
        "SLURM_ARRAY_TASK_COUNT": "3",
    }
    assert build.part_from_env(env) == (1, 3)
    assert build.part_from_env({"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert build.part_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    for i in (1, 2):
        assert build.main(_cli(kinetics_root, parted, "--part", f"{i}/3")) == 0
    capsys.readouterr()
    assert build.main(_cli(kinetics_root, parted, "--pack")) == 0
    printed = capsys.readouterr().out
    assert "3 part(s): processed 16, reused 0, rejected 2" in printed
    assert _shard_bytes(parted) == _shard_bytes(single) and len(_shard_bytes(single)) == 10
    a, b = shards.load_manifest(single), shards.load_manifest(parted)
    assert a["splits"] == b["splits"] and a["rejected"] == b["rejected"] and b["settings"]["parts"] == 3
    assert verify.verify(parted, progress=False, report=lambda *_: None) == 0  # the packed set reads back
    parts = sorted((parted / build.WORK_DIR / build.PARTS_DIR).glob("*.json"))
    assert [json.loads(p.read_text())["videos"] for p in parts] == [6, 6, 6]


def test_shares_cover_every_video_once(kinetics_root):
    recs = load_records("kinetics", kinetics_root)
    shares = [build.part_share(recs, (i, 4)) for i in range(4)]
    ids = [r.video_id for s in shares for r in s]
    assert sorted(ids) == sorted(r.video_id for r in recs) and len(set(ids)) == len(ids)
    assert [len(s) for s in shares] == [5, 5, 4, 4]
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(build.BuildError, match="--part must be I/N"):
            build.parse_part(bad)


def test_killed_part_resumes_from_the_cache(tmp_path):
    """SIGKILL a part once its first video is cached; the rerun reuses what is cached and does the rest."""
    cfg = SyntheticConfig(num_classes=2, train_per_class=6, test_per_class=1, frames=40, height=H, width=W)
    root = synthetic.generate_kinetics(tmp_path / "k", cfg, progress=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "data_prep.build", *_cli(root, out, "--part", "0/1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((out / build.WORK_DIR).glob("*/meta.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = json.loads((out / build.WORK_DIR / build.PARTS_DIR / "part-00000-of-00001.json").read_text())
    cached = len(list((out / build.WORK_DIR).glob("*/meta.json")))
    assert status["state"] == "running" and 1 <= cached < 14, (status, cached)
    report = build.build(
        load_records("kinetics", root, skip_bad=True), out, part=(0, 1), log=lambda *_: None, **KW
    )
    assert report.reused == cached and report.processed == 14 - cached and report.manifest is None
    status = json.loads((out / build.WORK_DIR / build.PARTS_DIR / "part-00000-of-00001.json").read_text())
    assert status["state"] == "complete"
    packed = build.build(
        load_records("kinetics", root, skip_bad=True), out, pack_only=True, log=lambda *_: None, **KW
    )
    assert shards.load_manifest(packed.manifest)["splits"]["train"]["num_samples"] == 12
