"""build -> verify on tiny videos: content, resume, corruption, bad input, --skip-bad, CLI, synthetic path.

Small sizes (24 x 31) and DIS flow keep this fast; the TV-L1 path is the same code with another method name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_prep import build, codec, flow, shards, verify
from data_prep.sources import load_records
from tests.data_prep.conftest import make_ucf_layout

H, W = 24, 31
KW = {"flow_method": "dis", "height": H, "width": W, "shard_size": 3, "workers": 1, "progress": False}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A built shard folder from a tiny UCF101-style set: (root, out, BuildReport)."""
    root = make_ucf_layout(tmp_path_factory.mktemp("src"), train_per_class=2, test_per_class=1, frames=9)
    out = tmp_path_factory.mktemp("out")
    report = build.build(load_records("ucf101", root), out, log=lambda *_: None, **KW)
    return root, out, report


def test_build_then_verify_passes(built):
    root, out, report = built
    assert report.processed == 6 and report.reused == 0 and report.rejected == []
    m = shards.load_manifest(out)
    assert m["classes"] == ["ApplyEyeMakeup", "Biking"]
    assert m["splits"]["train"]["num_samples"] == 4 and m["splits"]["test"]["num_samples"] == 2
    assert [s["tar"] for s in m["splits"]["train"]["shards"]] == ["train-000000.tar", "train-000001.tar"]
    assert m["video"] == {"height": H, "width": W, "fps": 25.0, "min_frames": 9}
    assert m["flow"] == {"method": "dis", "bound": 20}
    assert m["settings"]["flow_crf"] == codec.FLOW_CRF
    lines: list[str] = []
    assert verify.verify(out, progress=False, report=lines.append) == 0, lines
    assert verify.main([str(out), "--no-progress"]) == 0


def test_samples_hold_resized_video_and_its_flow(built):
    root, out, _ = built
    samples = dict(shards.iter_tar_samples(out / "train-000000.tar"))  # holds train000000..2
    meta = json.loads(samples["train000002"]["json"])
    assert meta["video_id"] == "Biking/v_Biking_g01_c01" and meta["label"] == 1 and meta["index"] == 2
    assert shards.decode_label(samples["train000002"]["lbl"]) == (1, 2)
    frames = build.resize_frames(build.read_video(root / "videos" / f"{meta['video_id']}.avi")[0], H, W)
    rgb = codec.decode_rgb(samples["train000002"]["rgb.webm"])
    assert rgb.shape == (9, H, W, 3) and np.abs(rgb.astype(float) - frames).mean() < 6
    q = flow.quantize_flow(flow.compute_flow(frames, "dis"))
    got = codec.decode_flow(samples["train000002"]["flow.webm"])
    assert got.shape == (9, H, W, 2)
    assert np.abs(got.astype(int) - q).max() <= codec.FLOW_ROUNDTRIP_BOUND
    assert np.abs(q.astype(int) - 128).max() > 10  # the fixture really moves: flow is not all zero


def test_resume_skips_finished_videos(built, tmp_path):
    root, out0, _ = built
    out = Path(shutil.copytree(out0, tmp_path / "out"))
    metas = sorted((out / build.WORK_DIR).glob("*/meta.json"))
    stamps = [p.stat().st_mtime_ns for p in metas]
    sha = {s["tar"]: s["sha256"] for s in shards.load_manifest(out)["splits"]["train"]["shards"]}
    logged: list[str] = []
    again = build.build(load_records("ucf101", root), out, log=logged.append, **KW)
    assert (again.processed, again.reused) == (0, 6)
    assert "frame pairs" not in logged[-1]  # nothing processed: no rate
    assert [p.stat().st_mtime_ns for p in metas] == stamps
    # Deterministic packing: the same inputs give byte-identical shards.
    assert {s["tar"]: s["sha256"] for s in shards.load_manifest(out)["splits"]["train"]["shards"]} == sha
    # A damaged cache entry (e.g. a crash mid-write) is recomputed, the rest reused.
    (metas[0].parent / "flow.webm").write_bytes(b"garbage")
    third = build.build(load_records("ucf101", root), out, log=logged.append, **KW)
    assert (third.processed, third.reused) == (1, 5)
    assert "(processed 1, 8 frame pairs at " in logged[-1]  # one video of 9 frames recomputed
    assert verify.verify(out, progress=False, report=lambda _: None) == 0


def test_corrupted_byte_makes_verify_fail_naming_shard(built, tmp_path, capsys):
    _, out0, _ = built
    out = Path(shutil.copytree(out0, tmp_path / "out"))
    tar = out / "train-000001.tar"
    data = bytearray(tar.read_bytes())
    data[1500] ^= 0xFF  # inside the first sample's RGB video
    tar.write_bytes(bytes(data))
    lines: list[str] = []
    assert verify.verify(out, progress=False, report=lines.append) >= 1
    assert any("train-000001.tar" in ln and "sha256" in ln for ln in lines), lines
    assert not any("train-000000" in ln or "test-000000" in ln for ln in lines), lines
    assert verify.main([str(out), "--no-progress"]) == 1
    assert "train-000001.tar" in capsys.readouterr().out


def test_verify_catches_frame_count_mismatch_and_missing_manifest(built, tmp_path):
    _, out0, _ = built
    out = Path(shutil.copytree(out0, tmp_path / "out"))
    # Rewrite one shard with a flow video one frame short, keeping the manifest consistent otherwise.
    samples = list(shards.iter_tar_samples(out / "test-000000.tar"))
    fixed = []
    for key, mem in samples:
        fl = mem["flow.webm"]
        if key == "test000001":
            fl = codec.encode_flow(codec.decode_flow(fl)[:-1])
        label, index = shards.decode_label(mem["lbl"])
        fixed.append(shards.Sample(key, mem["rgb.webm"], fl, label, index, json.loads(mem["json"])))
    info = shards.write_shard(out / "test-000000.tar", fixed)
    m = shards.load_manifest(out)
    m["splits"]["test"]["shards"][0]["sha256"] = info.sha256
    shards.write_manifest(out, m)
    lines: list[str] = []
    assert verify.verify(out, progress=False, report=lines.append) >= 1
    assert any("test-000000.tar test000001" in ln and "RGB has 9 frames but flow has 8" in ln for ln in lines)
    (out / "manifest.json").unlink()
    assert verify.main([str(out), "--no-progress"]) == 2  # not a shard folder: exit 2, as for any bad input


@pytest.fixture
def messy_root(tmp_path) -> Path:
    """UCF layout with a zero-length video, an unreadable one, and a split line naming a missing video."""
    root = make_ucf_layout(tmp_path / "src", frames=6, size=(24, 31))
    (root / "videos" / "Biking" / "v_Biking_g01_c01.avi").write_bytes(b"")
    (root / "videos" / "Biking" / "v_Biking_g02_c01.avi").write_bytes(b"RIFF not really a video" * 50)
    with open(root / "splits" / "testlist01.txt", "a") as f:
        f.write("Biking/v_Biking_g09_c01.avi\n")
    return root


def test_bad_video_stops_build_naming_file(messy_root, tmp_path):
    (messy_root / "splits" / "testlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.avi\n")
    (messy_root / "videos" / "Biking" / "v_Biking_g01_c01.avi").unlink()
    lines = (messy_root / "splits" / "trainlist01.txt").read_text().splitlines()
    (messy_root / "splits" / "trainlist01.txt").write_text(
        "\n".join(ln for ln in lines if "g01" not in ln or "Biking" not in ln) + "\n"
    )
    recs = load_records("ucf101", messy_root)  # only the unreadable file is left: found when decoding
    with pytest.raises(build.BuildError, match=r"v_Biking_g02_c01\.avi: unreadable video"):
        build.build(recs, tmp_path / "out", log=lambda *_: None, **KW)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_skip_bad_records_rejects(messy_root, tmp_path, capsys):
    out = tmp_path / "out"
    rc = build.main(
        ["--source", "ucf101", "--root", str(messy_root), "--out", str(out), "--flow", "dis",
         "--height", str(H), "--width", str(W), "--workers", "1", "--skip-bad", "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    m = shards.load_manifest(out)
    reasons = {Path(r["video"]).name: r["reason"] for r in m["rejected"]}
    assert reasons.keys() == {"v_Biking_g01_c01.avi", "v_Biking_g02_c01.avi", "v_Biking_g09_c01.avi"}
    assert reasons["v_Biking_g01_c01.avi"] == "zero-length file"
    assert "unreadable video" in reasons["v_Biking_g02_c01.avi"]
    assert reasons["v_Biking_g09_c01.avi"] == "file not found"
    assert m["splits"]["train"]["num_samples"] == 2 and m["splits"]["test"]["num_samples"] == 2
    assert "rejected 3 video(s)" in capsys.readouterr().out
    assert verify.verify(out, progress=False, report=lambda _: None) == 0


def test_cli_errors_and_pool(ucf_root, tmp_path, capsys):
    assert build.main(["--source", "ucf101", "--out", str(tmp_path / "o")]) == 2
    assert "crcv.ucf.edu" in capsys.readouterr().err
    out = tmp_path / "pool"
    rc = build.main(
        ["--source", "ucf101", "--root", str(ucf_root), "--out", str(out), "--flow", "farneback",
         "--height", "16", "--width", "21", "--workers", "2", "--limit", "1", "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    m = shards.load_manifest(out)
    assert (m["splits"]["train"]["num_samples"], m["splits"]["test"]["num_samples"]) == (1, 1)
    assert m["settings"]["limit"] == 1 and m["settings"]["source"] == "ucf101"


def test_build_synthetic_one_call(tmp_path, monkeypatch):
    from data_prep import synthetic
    from vicc_fast.config import FlowMethod, SyntheticConfig

    cfg = SyntheticConfig(
        num_classes=2,
        train_per_class=2,
        test_per_class=1,
        frames=6,
        height=24,
        width=31,
        flow_method=FlowMethod.dis,
    )
    path = build.build_synthetic(tmp_path / "syn", cfg, workers=1, progress=False)
    m = shards.load_manifest(path)
    assert (m["splits"]["train"]["num_samples"], m["splits"]["test"]["num_samples"]) == (4, 2)
    assert (
        len(m["classes"]) == 2 and m["flow"]["method"] == "dis" and m["settings"]["synthetic"]["frames"] == 6
    )
    assert verify.verify(path.parent, progress=False, report=lambda _: None) == 0
    stamp = path.stat().st_mtime_ns
    assert build.build_synthetic(tmp_path / "syn", cfg, workers=1, progress=False) == path
    assert path.stat().st_mtime_ns == stamp  # same settings: nothing rebuilt
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    build.build_synthetic(tmp_path / "syn", cfg, workers=1, progress=False)
    assert path.stat().st_mtime_ns != stamp  # another generator: the shards are rebuilt
    cfg.frames = 5  # other settings: the source set and the shards are rebuilt
    m2 = shards.load_manifest(build.build_synthetic(tmp_path / "syn", cfg, workers=1, progress=False))
    assert m2["video"]["min_frames"] == 5 and m2["settings"]["synthetic"]["frames"] == 5


def test_interrupted_rebuild_leaves_no_complete_looking_folder(built, tmp_path, monkeypatch):
    """A crash while packing (after the first shard) leaves no manifest: the folder reads as unfinished."""
    root, out0, _ = built
    out = Path(shutil.copytree(out0, tmp_path / "out"))
    real = shards.write_shard
    calls = []

    def crash_after_first(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, "write_shard", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        build.build(load_records("ucf101", root), out, log=lambda *_: None, **KW)
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert verify.main([str(out), "--no-progress"]) == 2  # no manifest: an unfinished build
    monkeypatch.setattr(shards, "write_shard", real)
    again = build.build(load_records("ucf101", root), out, log=lambda *_: None, **KW)
    assert again.reused == 6 and verify.verify(out, progress=False, report=lambda _: None) == 0


def test_shards_do_not_depend_on_where_the_source_lies(built, tmp_path):
    """The same videos built from another folder give byte-identical shards (the sample .json names its video
    relative to the data set, not by absolute path)."""
    root, out, _ = built
    moved = shutil.copytree(root, tmp_path / "elsewhere" / "ucf")
    out2 = tmp_path / "out2"
    build.build(load_records("ucf101", moved), out2, log=lambda *_: None, **KW)
    tars = sorted(p.name for p in out.glob("*.tar"))
    assert tars and tars == sorted(p.name for p in out2.glob("*.tar"))
    for name in tars:
        assert shards.sha256_file(out / name) == shards.sha256_file(out2 / name), name
    meta = json.loads(dict(shards.iter_tar_samples(out2 / "train-000000.tar"))["train000000"]["json"])
    assert meta["source"] == f"{meta['video_id']}.avi"
