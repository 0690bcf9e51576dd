"""Codec round trips through PyAV and DALI's CPU video decoder (the reader the training loader uses)."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep import codec
from tests.data_prep.conftest import moving_frames, realistic_flow

dali = pytest.importorskip("nvidia.dali")
from nvidia.dali import fn, pipeline_def  # noqa: E402


def dali_decode(data: bytes, **kwargs) -> np.ndarray:
    """Decode encoded video bytes with DALI's CPU video decoder -> [F, H, W, 3] uint8."""

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        return fn.decoders.video(fn.external_source(name="enc", no_copy=False), device="cpu", **kwargs)

    p = pipe()
    p.build()
    p.feed_input("enc", [np.frombuffer(data, np.uint8)])
    (out,) = p.run()
    return np.array(out[0])


@pytest.fixture(scope="module")
def flow_q() -> np.ndarray:
    return realistic_flow(t=16, h=64, w=85)  # odd width, like 171


@pytest.fixture(scope="module")
def flow_bytes(flow_q) -> bytes:
    return codec.encode_flow(flow_q)


def test_flow_layout_is_x_over_y(flow_q):
    y = codec.flow_to_luma(flow_q)
    h = flow_q.shape[1]
    assert y.shape == (16, 2 * h, 85)
    np.testing.assert_array_equal(y[:, :h], flow_q[..., 0])
    np.testing.assert_array_equal(y[:, h:], flow_q[..., 1])
    np.testing.assert_array_equal(codec.luma_to_flow(y), flow_q)


def test_flow_roundtrip_pyav_within_bound(flow_q, flow_bytes):
    dec = codec.decode_flow(flow_bytes)
    assert dec.shape == flow_q.shape and dec.dtype == np.uint8
    err = np.abs(dec.astype(int) - flow_q)
    assert err.max() <= codec.FLOW_ROUNDTRIP_BOUND, err.max()
    assert err.mean() <= codec.FLOW_ROUNDTRIP_MEAN_BOUND, err.mean()
    # x and y are not swapped or mixed: the decoded x is far closer to x than to y.
    assert np.abs(dec[..., 0].astype(int) - flow_q[..., 1]).mean() > 5 * err.mean()


def test_flow_roundtrip_dali_cpu_channel0_within_bound(flow_q, flow_bytes):
    """Channel 0 of DALI's RGB output of the flow video is the stored v (full range, neutral chroma)."""
    out = dali_decode(flow_bytes)
    t, h, w, _ = flow_q.shape
    assert out.shape == (t, 2 * h, w, 3)
    dq = codec.luma_to_flow(out[..., 0])
    err = np.abs(dq.astype(int) - flow_q)
    assert err.max() <= codec.FLOW_ROUNDTRIP_BOUND, err.max()
    assert err.mean() <= codec.FLOW_ROUNDTRIP_MEAN_BOUND, err.mean()
    # Grey in, grey out: all three channels carry the same value (no colour matrix applied to v).
    assert np.abs(out[..., 0].astype(int) - out[..., 1]).max() <= 1
    # Extremes survive: no limited-range expansion or compression of the 0..255 code values.
    flat = np.zeros((4, 16, 16, 2), np.uint8)
    flat[..., 0], flat[..., 1] = 0, 255
    ext = codec.luma_to_flow(dali_decode(codec.encode_flow(flat))[..., 0])
    assert ext[..., 0].max() <= 1 and ext[..., 1].min() >= 254


@pytest.mark.parametrize("start", [5, 9])  # mid-GOP; after the second keyframe (PyAV seeks there)
def test_flow_dali_clip_access_matches_pyav(flow_q, flow_bytes, start):
    """A strided clip decodes to the same frames in DALI and PyAV, and they are the right frames."""
    count, stride = 3, 2
    out = dali_decode(flow_bytes, start_frame=start, sequence_length=count, stride=stride)
    ref = codec.decode_flow(flow_bytes, start, count, stride)
    assert out.shape[0] == count == ref.shape[0]
    np.testing.assert_array_equal(codec.luma_to_flow(out[..., 0]), ref)
    np.testing.assert_array_equal(ref, codec.decode_flow(flow_bytes)[start : start + count * stride : stride])
    assert np.abs(ref.astype(int) - flow_q[start : start + count * stride : stride]).mean() < 1


def test_rgb_roundtrip_and_dali_colour_match():
    frames = moving_frames(t=10, h=32, w=43)
    data = codec.encode_rgb(frames)
    info = codec.probe(data)
    assert (info.frames, info.height, info.width) == (10, 32, 43)
    assert info.fps == pytest.approx(25.0)
    ours = codec.decode_rgb(data)
    assert ours.shape == frames.shape
    psnr = 10 * np.log10(255**2 / np.mean((ours.astype(float) - frames) ** 2))
    assert psnr > 28, psnr
    # codec.decode_rgb converts colours as DALI does (within 1). The DataLoader baseline does not use it: it
    # decodes with PyAV's rgb24, up to 111 levels apart at colour edges (docs/shard_format.md).
    ref = dali_decode(data)
    assert np.abs(ref.astype(int) - ours).max() <= 1


def test_decode_range_selection():
    frames = moving_frames(t=12, h=16, w=21)
    data = codec.encode_rgb(frames)
    full = codec.decode_rgb(data)
    np.testing.assert_array_equal(codec.decode_rgb(data, start=3, count=4, stride=2), full[3:11:2])
    np.testing.assert_array_equal(codec.decode_rgb(data, start=9, count=2), full[9:11])  # seek path
    assert codec.decode_rgb(data, start=10, count=5).shape[0] == 2  # short at the end: caller checks


def test_bad_inputs_raise_codec_error():
    with pytest.raises(codec.CodecError):
        codec.encode_rgb(np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(codec.CodecError):
        codec.encode_flow(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(codec.CodecError):
        codec.probe(b"")
    with pytest.raises(codec.CodecError):
        codec.probe(b"not a video at all" * 10)


def test_encoding_is_byte_deterministic(flow_q):
    """The same frames give the same bytes (no random container IDs), so rebuilt shards hash the same."""
    assert codec.encode_flow(flow_q) == codec.encode_flow(flow_q)
    rgb = np.random.default_rng(1).integers(0, 255, (4, 16, 24, 3), dtype=np.uint8)
    assert codec.encode_rgb(rgb) == codec.encode_rgb(rgb)
