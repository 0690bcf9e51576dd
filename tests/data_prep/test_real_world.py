"""Real-world input (issue 16): damaged and odd source videos, each with a defined outcome.

Every bad file is made here from a good one: truncated, cut mid-packet, re-muxed, re-encoded (PyAV).
Outcomes: kept (maybe converted) with or without a warning, or rejected with a reason; never silently
shortened or skipped. RELIABILITY.md lists them.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from data_prep import build, shards
from data_prep.sources import DataSourceError, load_records
from tests.data_prep.conftest import make_ucf_layout, moving_frames, write_video

H, W = 16, 21
KW = {"flow_method": "dis", "height": H, "width": W, "shard_size": 10, "workers": 1, "progress": False}


def write_mp4(path: Path, frames: np.ndarray, fps: int = 25, pix_fmt: str = "yuv420p", **kw) -> Path:
    """H.264 MP4 with the index (moov) first, as web/phone videos are: a cut file still opens and declares
    its full frame count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as c:
        s = c.add_stream(kw.get("codec", "libx264"), rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if kw.get("rotation"):
            s.set_display_rotation(kw["rotation"])
        for f in frames:
            vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format=pix_fmt)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def cut(path: Path, share: float) -> Path:
    """Keep the first `share` of the file's bytes (a download or copy that stopped; mid-packet)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])
    return path


def folder_set(root: Path, videos: dict[str, Path | None]) -> Path:
    """A `folder` source: `videos` maps class/name -> a video file to copy there (or None: keep a placeholder)."""
    for rel, src in videos.items():
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes() if src is not None else b"")
    return root


def run(root: Path, out: Path, lines: list[str] | None = None, **kw) -> dict:
    log = lines.append if lines is not None else (lambda *_: None)
    build.build(
        load_records("folder", root, skip_bad=kw.get("skip_bad", False)), out, log=log, **{**KW, **kw}
    )
    return shards.load_manifest(out)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """One good and several damaged copies of a 60-frame H.264 MP4 (container declares 60 frames)."""
    d = tmp_path_factory.mktemp("v")
    fr = moving_frames(60, 24, 32)
    good = write_mp4(d / "good.mp4", fr)
    out = {"good": good, "good2": write_mp4(d / "good2.mp4", moving_frames(20, 24, 32, seed=3))}
    out["cut50"] = cut(write_mp4(d / "cut50.mp4", fr), 0.5)  # ~half the frames decode
    out["cut97"] = cut(write_mp4(d / "cut97.mp4", fr), 0.97)  # a few frames lost at the tail
    return out


def test_read_video_reports_declared_vs_decoded(videos):
    _, _, ok = build.read_video(videos["good"])
    assert (ok.declared, ok.decoded, ok.message()) == (60, 60, None)
    _, _, half = build.read_video(videos["cut50"])
    assert half.declared == 60 and 2 <= half.decoded < 54 and half.short
    assert f"decoded {half.decoded} of the 60 frames" in half.message()
    assert half.problem(strict=False) is not None  # under MIN_DECODED_SHARE: rejected by default
    _, _, tail = build.read_video(videos["cut97"])
    assert 54 <= tail.decoded < 60, tail
    assert tail.problem(strict=False) is None and "(rejected under --strict)" in tail.problem(strict=True)


def test_truncated_video_is_never_kept_silently(videos, tmp_path):
    root = folder_set(
        tmp_path / "src",
        {"a/cut50.mp4": videos["cut50"], "a/cut97.mp4": videos["cut97"], "a/good.mp4": videos["good"],
         "b/x.mp4": videos["good2"], "b/y.mp4": videos["good2"]},
    )  # fmt: skip
    # default, no --skip-bad: the heavily truncated one stops the build, naming it and both numbers
    with pytest.raises(
        build.BuildError, match=r"cut50\.mp4: decoded \d+ of the 60 frames its container declares"
    ):
        run(root, tmp_path / "o1")
    # --skip-bad: rejected with the reason; the slightly short one kept with a warning in log and manifest
    lines: list[str] = []
    m = run(root, tmp_path / "o2", lines, skip_bad=True)
    assert [Path(r["video"]).name for r in m["rejected"]] == ["cut50.mp4"]
    assert "below the 90% floor" in m["rejected"][0]["reason"]
    (w,) = m["warnings"]
    assert Path(w["video"]).name == "cut97.mp4" and w["declared_frames"] == 60 and w["decoded_frames"] < 60
    assert any("warning:" in ln and "cut97.mp4" in ln and "of the 60 frames" in ln for ln in lines)
    assert m["splits"]["train"]["num_samples"] + m["splits"]["test"]["num_samples"] == 4
    # --strict on the same folder (cached entries are judged again): the short one is rejected too
    m = run(root, tmp_path / "o2", skip_bad=True, strict=True)
    assert sorted(Path(r["video"]).name for r in m["rejected"]) == ["cut50.mp4", "cut97.mp4"]
    assert m["warnings"] == [] and m["settings"]["strict"] is True


def test_cli_strict_flag(videos, tmp_path, capsys):
    root = folder_set(tmp_path / "src", {"a/cut97.mp4": videos["cut97"], "a/g.mp4": videos["good2"],
                                         "b/x.mp4": videos["good2"], "b/y.mp4": videos["good2"]})  # fmt: skip
    args = ["--source", "folder", "--root", str(root), "--flow", "dis", "--height", str(H), "--width", str(W),
            "--workers", "1", "--no-progress"]  # fmt: skip
    assert build.main([*args, "--out", str(tmp_path / "o"), "--strict"]) == 2
    assert "cut97.mp4" in capsys.readouterr().err
    assert build.main([*args, "--out", str(tmp_path / "o")]) == 0
    assert "cut97.mp4" in capsys.readouterr().out


def test_mid_stream_decode_error_is_reported(tmp_path):
    """Bytes overwritten in the middle of an MP4 (a bad sector): the damaged packets are skipped, decoding goes
    on after them, and the errors and the shortfall are reported (kept with a warning, or rejected)."""
    p = write_mp4(tmp_path / "v.mp4", moving_frames(40, 24, 32))
    data = bytearray(p.read_bytes())
    mid = int(len(data) * 0.7)
    data[mid : mid + 300] = b"\xff" * 300
    p.write_bytes(bytes(data))
    _, _, check = build.read_video(p)
    assert check.declared == 40 and check.errors >= 1 and check.decoded < 40
    msg = check.message()
    assert "decode error(s), the first after" in msg and "of the 40 frames" in msg
    assert check.problem(strict=True) is not None


def test_damage_in_an_avi_is_reported(tmp_path):
    """The same in an MPEG-4 AVI (UCF101's format): its decoder conceals it, frames go missing or flagged."""
    p = write_video(tmp_path / "v.avi", moving_frames(40, 24, 32))
    data = bytearray(p.read_bytes())
    mid = int(len(data) * 0.7)
    data[mid : mid + 300] = b"\x00" * 300
    p.write_bytes(bytes(data))
    _, _, check = build.read_video(p)
    assert check.declared == 40 and check.message() is not None
    assert check.problem(strict=False) is None and check.problem(strict=True) is not None


@pytest.mark.parametrize(
    ("name", "make", "outcome"),
    [
        ("odd_size", lambda p: write_video(p.with_suffix(".avi"), moving_frames(8, 25, 37)), "kept"),
        ("gray", lambda p: _ffv1(p.with_suffix(".mkv"), "gray"), "kept"),
        ("ten_bit", lambda p: write_mp4(p, moving_frames(8, 24, 32), pix_fmt="yuv420p10le"), "kept"),
        ("one_frame", lambda p: write_mp4(p, moving_frames(1, 24, 32)), "too short: 1 decodable frame"),
        ("audio_only", lambda p: _audio_only(p), "no video stream"),
        ("not_a_video", lambda p: _garbage(p), "unreadable video"),
    ],
)  # fmt: skip
def test_odd_input_outcomes(tmp_path, name, make, outcome):
    src = make(tmp_path / "src" / "a" / f"{name}.mp4")
    good = write_mp4(tmp_path / "g.mp4", moving_frames(6, 24, 32))
    root = folder_set(tmp_path / "src", {"a/g1.mp4": good, "b/g2.mp4": good, "b/g3.mp4": good})
    m = run(root, tmp_path / "out", skip_bad=True)
    if outcome == "kept":
        assert m["rejected"] == [] and m["warnings"] == []
        n = m["splits"]["train"]["num_samples"] + m["splits"]["test"]["num_samples"]
        assert n == 4
        frames, _, _ = build.read_video(src, H, W)
        assert frames.shape[1:] == (H, W, 3) and frames.dtype == np.uint8
    else:
        (r,) = m["rejected"]
        assert Path(r["video"]).name == src.name and outcome in r["reason"]


def _garbage(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00garbage" * 100)
    return path


def _ffv1(path: Path, pix_fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=25)
        s.width, s.height, s.pix_fmt = 32, 24, pix_fmt
        for f in moving_frames(8, 24, 32):
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format=pix_fmt)):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _audio_only(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        t = np.sin(np.arange(16000) / 10).astype(np.float32)[None]
        for i in range(0, 16000, 1024):
            fr = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(t[:, i : i + 1024]), format="fltp", layout="mono"
            )
            fr.sample_rate = 16000
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_gray_is_converted_to_equal_rgb_channels(tmp_path):
    frames, _, check = build.read_video(_ffv1(tmp_path / "g.mkv", "gray"))
    assert check.message() is None
    assert np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 1], frames[..., 2])


def test_rotation_metadata_is_applied(tmp_path):
    fr = np.zeros((4, 24, 32, 3), np.uint8)
    fr[:, :8, :8] = 255  # a white square top-left
    frames, _, _ = build.read_video(write_mp4(tmp_path / "r.mp4", fr, rotation=90))
    assert frames.shape[1:3] == (32, 24)  # turned upright: portrait
    assert frames[0, -4:, :4].mean() > 200 and frames[0, :4, :4].mean() < 50  # 90 deg counter-clockwise


def test_variable_frame_rate_keeps_every_frame(tmp_path):
    """Timestamps 0, 1, 3, 4, 6, ... (1/25 s units): all frames kept in order, no false 'short' warning."""
    p = tmp_path / "vfr.mkv"
    fr = moving_frames(30, 24, 32)
    with av.open(str(p), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        s.codec_context.time_base = Fraction(1, 25)
        s.options = {"bf": "0"}
        t = 0
        for f in fr:
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = t, Fraction(1, 25)
            t += 1 if t % 3 else 2
            for pk in s.encode(vf):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    frames, fps, check = build.read_video(p)
    assert frames.shape[0] == 30 and check.message() is None, check


def test_names_with_spaces_non_ascii_and_same_name_in_two_classes(tmp_path):
    a = write_mp4(tmp_path / "a.mp4", moving_frames(6, 24, 32, seed=1))
    b = write_mp4(tmp_path / "b.mp4", moving_frames(6, 24, 32, seed=2))
    root = folder_set(
        tmp_path / "src",
        {"Jump rope/clip 1.mp4": a, "Jump rope/Ünïcødé – 跳.mp4": b, "Yo yo/clip 1.mp4": b, "Yo yo/x.mp4": a},
    )
    m = run(root, tmp_path / "out")
    assert m["rejected"] == [] and m["classes"] == ["Jump rope", "Yo yo"]
    metas = []
    for split in ("train", "test"):
        for sh in m["splits"][split]["shards"]:
            metas += [
                json.loads(mem["json"]) for _, mem in shards.iter_tar_samples(tmp_path / "out" / sh["tar"])
            ]
    ids = sorted(x["video_id"] for x in metas)
    assert ids == sorted(["Jump rope/clip 1", "Jump rope/Ünïcødé – 跳", "Yo yo/clip 1", "Yo yo/x"])
    # the same file name in two classes: two samples, each with its own label and content
    same = {x["video_id"]: x["label"] for x in metas if x["video_id"].endswith("clip 1")}
    assert same == {"Jump rope/clip 1": 0, "Yo yo/clip 1": 1}


def test_split_file_naming_a_missing_video(tmp_path):
    root = make_ucf_layout(tmp_path / "src", frames=6, size=(24, 32))
    with open(root / "splits" / "testlist01.txt", "a") as f:
        f.write("Biking/v_Biking_g09_c01.avi\n")
    with pytest.raises(
        DataSourceError, match=r"v_Biking_g09_c01\.avi: file not found \(listed in .*testlist01"
    ):
        load_records("ucf101", root)
    recs = load_records("ucf101", root, skip_bad=True)
    m = build.build(recs, tmp_path / "out", log=lambda *_: None, skip_bad=True, **KW)
    rej = shards.load_manifest(m.manifest)["rejected"]
    assert [(Path(r["video"]).name, r["reason"]) for r in rej] == [("v_Biking_g09_c01.avi", "file not found")]


def test_truncated_webm_is_caught_by_its_duration(tmp_path):
    """WebM/Matroska store no frame count: the decoded time span is compared with the declared duration."""
    from data_prep import codec

    p = tmp_path / "v.webm"
    p.write_bytes(codec.encode_rgb(moving_frames(60, 24, 32), fps=25))
    _, _, full = build.read_video(p)
    assert full.declared is None and full.declared_seconds == pytest.approx(2.4, abs=0.05)
    assert full.message() is None
    _, _, half = build.read_video(cut(p, 0.5))
    assert half.short and "s of the 2.40 s its container declares" in half.message(), half
    assert half.problem(strict=False) is not None


_BUILD_UNDER_LIMIT = """
import resource, signal, sys
from data_prep import build
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
sys.exit(build.main(sys.argv[2:]))
"""


def test_disk_full_while_writing_a_shard(tmp_path):
    """RLIMIT_FSIZE in a child process stands in for a full disk (same failed write, no root needed)."""
    import subprocess
    import sys

    good = write_mp4(tmp_path / "g.mp4", moving_frames(8, 24, 32))
    root = folder_set(tmp_path / "src", {f"{c}/{i}.mp4": good for c in "ab" for i in range(3)})
    out = tmp_path / "out"
    args = ["--source", "folder", "--root", str(root), "--out", str(out), "--flow", "dis", "--height", str(H),
            "--width", str(W), "--workers", "1", "--no-progress"]  # fmt: skip
    assert build.main([*args, "--shard-size", "1"]) == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    small = max(len(b) for b in before.values())
    # repack into bigger shards (cache reused): the first shard write exceeds the limit
    r = subprocess.run(
        [sys.executable, "-c", _BUILD_UNDER_LIMIT, str(small + 512), *args, "--shard-size", "4"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert f"could not write shard file {out / 'train-000000.tar'}: file size limit hit" in r.stderr, r.stderr
    assert "the previous train-000000.tar is unchanged" in r.stderr
    assert (out / "train-000000.tar").read_bytes() == before["train-000000.tar"]
    assert not list(out.glob(".*.tmp")) and not (out / "manifest.json").exists()  # an unfinished build
    assert build.main([*args, "--shard-size", "4"]) == 0  # with space again, the build finishes


def test_streaming_processing_matches_the_whole_array_path(tmp_path):
    """process_video works frame by frame (flat memory in the video length): the same bytes as encoding the
    whole decoded array and its flow at once."""
    from data_prep import codec, flow
    from data_prep.sources import Record

    src = write_video(tmp_path / "v.avi", moving_frames(14, 30, 41))
    settings = build.VideoSettings(height=H, width=W, flow_method="dis")
    meta = build.process_video(Record(src, 0, "a", "train", "a/v"), tmp_path / "work", settings)
    frames, fps, _ = build.read_video(src, H, W)
    q = flow.quantize_flow(flow.compute_flow(frames, "dis"), settings.flow_bound)
    d = build._cache_dir(tmp_path / "work", "a/v")
    assert (d / "rgb.webm").read_bytes() == codec.encode_rgb(frames, fps=fps, crf=settings.rgb_crf)
    assert (d / "flow.webm").read_bytes() == codec.encode_flow(q, fps=fps, crf=settings.flow_crf)
    assert (meta["frames"], meta["flow_frames"]) == (14, 14)


def write_avi_with_dropped_frames(path: Path, frames: np.ndarray, every: int = 3) -> Path:
    """An AVI whose frame i has timestamp every * i: the muxer fills each gap with empty chunks (repeated
    frames, as old capture tools and re-muxed web videos store them), so the header declares ~every x the
    frames that decode while their timestamps run the whole declared duration."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.codec_context.time_base = Fraction(1, 25)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = every * i, Fraction(1, 25)
            for pk in s.encode(vf):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    return path


def test_avi_with_empty_chunks_is_complete_by_time(tmp_path):
    """Issue 27: 20 frames decode of the 58 the header declares, spanning all 2.32 s: kept, no warning
    (before, rejected as 'decoded 20 of the 58 frames (34%): below the 90% floor'). A copy cut in half stops
    early in time and is still rejected."""
    p = write_avi_with_dropped_frames(tmp_path / "drop.avi", moving_frames(20, 24, 32))
    frames, fps, check = build.read_video(p)
    assert (check.declared, check.decoded, frames.shape[0]) == (58, 20, 20)
    assert check.decoded_seconds == pytest.approx(check.declared_seconds) == pytest.approx(2.32)
    assert not check.short and check.message() is None and check.problem(strict=True) is None
    # the header still declares 118 frames (4.72 s); the frames that decode stop at about half of it
    half = cut(write_avi_with_dropped_frames(tmp_path / "cut.avi", moving_frames(40, 48, 64)), 0.7)
    _, _, short = build.read_video(half)
    assert short.declared == 118 and short.declared_seconds == pytest.approx(4.72)
    assert short.short and short.decoded_seconds < 0.6 * short.declared_seconds, short
    assert "below the 90% floor" in short.problem(strict=False)
    m = run(folder_set(tmp_path / "src", {"a/drop.avi": p, "a/cut.avi": half, "b/x.avi": p, "b/y.avi": p}),
            tmp_path / "out", skip_bad=True)  # fmt: skip
    assert [Path(r["video"]).name for r in m["rejected"]] == ["cut.avi"] and m["warnings"] == []


def test_fps_resamples_by_timestamps(tmp_path):
    """--fps 25 on the dropped-frame AVI: one frame per 1/25 s tick, each the decoded frame nearest in time
    (frame i shows at 3i/25), 58 in all; a constant-rate file sampled at its own rate is unchanged, at half
    its rate every other frame; the build records the rate in the manifest and the cache key."""
    p = write_avi_with_dropped_frames(tmp_path / "drop.avi", moving_frames(20, 24, 32))
    decoded, _, _ = build.read_video(p)
    frames, fps, check = build.read_video(p, fps=25)
    assert fps == 25 and frames.shape[0] == 58 and check.decoded == 20
    nearest = [min(range(20), key=lambda i: abs(3 * i - k)) for k in range(58)]
    assert all(np.array_equal(frames[k], decoded[i]) for k, i in enumerate(nearest))
    const = write_mp4(tmp_path / "c.mp4", moving_frames(30, 24, 32))
    same, _, _ = build.read_video(const)
    assert np.array_equal(build.read_video(const, fps=25)[0], same)
    half, rate, _ = build.read_video(const, fps=12.5)
    assert rate == 12.5 and half.shape[0] == 15 and np.array_equal(half, same[::2])
    root = folder_set(tmp_path / "src", {"a/drop.avi": p, "a/c.mp4": const, "b/x.mp4": const, "b/y.avi": p})
    m = run(root, tmp_path / "out", fps=12.5)
    assert m["settings"]["fps"] == 12.5 and m["video"]["fps"] == 12.5 and m["video"]["min_frames"] == 15
    assert "fps" not in run(root, tmp_path / "out")["settings"]  # no --fps: the manifest as before
