"""--flow-at source (issue 17): flow between the source frames, resized to the stored size with its vectors scaled.

Checked: the resize math (per-axis scaling, also for a non-uniform scale), the size flow is computed at, a known
translation at 96x128 stored at 48x64 coming out halved, the streaming build equal to the whole-array recipe
(OpenCV per pair and tvl1-torch in chunks), the cache key, the manifest record and the CLI errors.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from data_prep import build, codec, flow, shards
from data_prep.sources import Record, load_records
from tests.data_prep.conftest import make_ucf_layout, moving_frames, write_video

KW = {"flow_method": "dis", "height": 24, "width": 31, "shard_size": 10, "workers": 1, "progress": False}


def translating_frames(t: int, h: int, w: int, dx: int, dy: int, seed: int = 0) -> np.ndarray:
    """[t, h, w, 3] uint8: a smooth random texture translated by exactly (dx, dy) source pixels per frame."""
    rng = np.random.default_rng(seed)
    pad = max(abs(dx), abs(dy)) * t + 8
    coarse = rng.uniform(0, 255, ((h + 2 * pad) // 6, (w + 2 * pad) // 6, 3)).astype(np.float32)
    canvas = cv2.resize(coarse, (w + 2 * pad, h + 2 * pad), interpolation=cv2.INTER_CUBIC)
    canvas = canvas.clip(0, 255).astype(np.uint8)
    # frame i shows the canvas moved by i * (dx, dy): what is at x in frame i is at x + dx in frame i + 1
    return np.stack(
        [canvas[pad - i * dy : pad - i * dy + h, pad - i * dx : pad - i * dx + w] for i in range(t)]
    )


def test_resize_flow_scales_each_axis_by_its_own_factor():
    field = np.zeros((3, 60, 80, 2), np.float32)
    field[..., 0], field[..., 1] = 3.0, 2.0
    out = flow.resize_flow(field, 30, 20)  # height / 2, width / 4: a non-uniform scale
    assert out.shape == (3, 30, 20, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], 3.0 * 20 / 80, atol=1e-6)
    np.testing.assert_allclose(out[..., 1], 2.0 * 30 / 60, atol=1e-6)
    up = flow.resize_flow(field[0], 90, 100)  # enlarging: bilinear, vectors grow
    np.testing.assert_allclose(up[..., 0], 3.0 * 100 / 80, atol=1e-5)
    np.testing.assert_allclose(up[..., 1], 2.0 * 90 / 60, atol=1e-5)
    np.testing.assert_array_equal(flow.resize_flow(field, 60, 80), field)  # same size: unchanged
    # a ramp u(x) = 0.1 x keeps its shape: shrinking by 4 in x averages each 4-pixel cell, then scales by 1/4
    ramp = np.zeros((8, 80, 2), np.float32)
    ramp[..., 0] = 0.1 * np.arange(80, dtype=np.float32)
    np.testing.assert_allclose(
        flow.resize_flow(ramp, 8, 20)[0, :, 0], 0.1 * (4 * np.arange(20) + 1.5) / 4, atol=1e-5
    )
    with pytest.raises(flow.FlowError, match="shape"):
        flow.resize_flow(np.zeros((4, 4, 3), np.float32), 2, 2)
    with pytest.raises(flow.FlowError, match="floating"):
        flow.resize_flow(np.zeros((4, 4, 2), np.uint8), 2, 2)


def test_flow_size_caps_the_shorter_side():
    assert flow.flow_size(240, 320) == (240, 320)
    assert flow.flow_size(240, 320, 240) == (240, 320)  # UCF101 / HMDB51: already at the cap
    assert flow.flow_size(480, 640, 240) == (240, 320)
    assert flow.flow_size(640, 360, 240) == (427, 240)  # portrait: the width is the shorter side
    assert flow.flow_size(100, 120, 240) == (100, 120)  # never enlarged


def test_known_translation_comes_out_scaled_to_the_stored_size(tmp_path):
    """(4, 2) px per frame at 96x128, stored at 48x64: the stored flow is (2, 1) px, the interior's median within
    0.1 px (one uint8 step is 40/255 = 0.16 px) and its mean end-point error under 0.1 px (measured: 0.04 and
    0.03), after the VP9 round trip of the flow stream."""
    src = write_video(tmp_path / "v.avi", translating_frames(8, 96, 128, dx=4, dy=2))
    settings = build.VideoSettings(height=48, width=64, flow_method="tvl1", flow_at="source")
    meta = build.process_video(Record(src, 0, "c", "train", "v"), tmp_path / "work", settings)
    assert (meta["height"], meta["width"], meta["flow_frames"]) == (48, 64, 8)
    fl = flow.dequantize_flow(
        codec.decode_flow((build._cache_dir(tmp_path / "work", "v") / "flow.webm").read_bytes())
    )
    inner = fl[:-1, 6:-6, 6:-6]  # borders see texture entering the frame
    assert abs(float(np.median(inner[..., 0])) - 2.0) < 0.1, np.median(inner[..., 0])
    assert abs(float(np.median(inner[..., 1])) - 1.0) < 0.1, np.median(inner[..., 1])
    assert flow.endpoint_error(inner, np.broadcast_to(np.float32([2.0, 1.0]), inner.shape)) < 0.1


@pytest.mark.parametrize("method", ["dis", "tvl1-torch"])
def test_streaming_source_flow_matches_the_whole_array_recipe(tmp_path, monkeypatch, method):
    """process_video (frames one by one; tvl1-torch in chunks, here of 2 pairs) stores the same flow bytes as:
    flow of the whole source array, resized with resize_flow, quantised; the RGB stream is flow_at stored's."""
    from data_prep import flow_torch

    monkeypatch.setattr(flow_torch, "default_batch", lambda device: 2)  # small chunks: a short, cheap video
    src = write_video(tmp_path / "v.avi", moving_frames(6, 24, 34))  # 5 pairs: two full chunks and one pair
    settings = build.VideoSettings(height=12, width=17, flow_method=method, flow_at="source")
    build.process_video(
        Record(src, 0, "a", "train", "a/v"),
        tmp_path / "work",
        settings,
        False,
        build.FlowDevice("cpu", False),
    )
    frames, fps, _ = build.read_video(src)
    raw = flow.compute_flow(frames, method, device="cpu")
    want = codec.encode_flow(
        flow.quantize_flow(flow.resize_flow(raw, 12, 17)), fps=fps, crf=settings.flow_crf
    )
    d = build._cache_dir(tmp_path / "work", "a/v")
    assert (d / "flow.webm").read_bytes() == want
    rgb = codec.encode_rgb(build.resize_frames(frames, 12, 17), fps=fps, crf=settings.rgb_crf)
    assert (d / "rgb.webm").read_bytes() == rgb


def test_flow_at_is_in_the_cache_key_and_the_manifest(tmp_path):
    root = make_ucf_layout(tmp_path / "src", train_per_class=1, test_per_class=1, frames=6, size=(48, 62))
    records = load_records("ucf101", root)
    out = tmp_path / "out"
    first = build.build(records, out, log=lambda *_: None, **KW)
    assert (first.processed, first.reused) == (4, 0)
    meta = next((out / build.WORK_DIR).glob("*/meta.json")).read_text()
    assert '"flow_at"' not in meta  # stored flow keeps the key caches had before flow_at: they stay valid
    stored_sha = {s["tar"]: s["sha256"] for s in shards.load_manifest(out)["splits"]["train"]["shards"]}
    assert shards.load_manifest(out)["settings"]["flow_at"] == "stored"

    src = build.build(records, out, log=lambda *_: None, flow_at="source", flow_short_side=40, **KW)
    assert (src.processed, src.reused) == (4, 0)  # flow computed under the other setting is not reused
    m = shards.load_manifest(out)
    assert (m["settings"]["flow_at"], m["settings"]["flow_short_side"]) == ("source", 40)
    assert {s["tar"]: s["sha256"] for s in m["splits"]["train"]["shards"]} != stored_sha
    again = build.build(records, out, log=lambda *_: None, flow_at="source", flow_short_side=40, **KW)
    assert (again.processed, again.reused) == (0, 4)
    other_cap = build.build(records, out, log=lambda *_: None, flow_at="source", **KW)
    assert (other_cap.processed, other_cap.reused) == (4, 0)  # the cap is part of the key too
    back = build.build(records, out, log=lambda *_: None, **KW)
    assert (back.processed, back.reused) == (4, 0)
    assert {
        s["tar"]: s["sha256"] for s in shards.load_manifest(out)["splits"]["train"]["shards"]
    } == stored_sha


def test_flow_at_cli_and_errors(tmp_path):
    a = build.parse_args(
        ["--source", "ucf101", "--out", "x", "--flow-at", "source", "--flow-short-side", "240"]
    )
    assert (a.flow_at, a.flow_short_side) == ("source", 240)
    assert build.parse_args(["--source", "ucf101", "--out", "x"]).flow_at == "stored"
    with pytest.raises(SystemExit):
        build.parse_args(["--source", "ucf101", "--out", "x", "--flow-at", "sauce"])
    with pytest.raises(build.BuildError, match="'sauce'"):
        build.build([], tmp_path, flow_at="sauce", progress=False)
    with pytest.raises(build.BuildError, match="--flow-at source only"):
        build.build([], tmp_path, flow_short_side=240, progress=False)
    with pytest.raises(build.BuildError, match=">= 16"):
        build.build([], tmp_path, flow_at="source", flow_short_side=4, progress=False)
