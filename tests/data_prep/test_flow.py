"""Optical flow: accuracy against the synthetic ground truth, the papers' quantisation, clear input errors."""

from __future__ import annotations

import numpy as np
import pytest

from data_prep.flow import (
    FLOW_BOUND,
    FlowError,
    compute_flow,
    dequantize_flow,
    endpoint_error,
    quantize_flow,
)
from data_prep.synthetic import CLASSES, decode_video, encode_avi, render_video
from vicc_fast.config import FlowMethod


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """(frames decoded from the written source video, ground-truth flow) for a few motion classes."""
    out = []
    folder = tmp_path_factory.mktemp("flow")
    for c in (0, 2, 3, 5):  # slide, spin, zoom, circle
        video = render_video(c, 40 + c, frames=3, height=128, width=171, flow=True)  # the default size
        path = folder / f"{CLASSES[c].name}.avi"
        path.write_bytes(encode_avi(video.frames, 25))
        out.append((decode_video(path), video.flow))
    return out


@pytest.mark.parametrize("method", [FlowMethod.tvl1, FlowMethod.dis])
def test_flow_beats_zero_flow_by_a_wide_margin(videos, method):
    errors, zero = [], []
    for frames, gt in videos:
        flow = compute_flow(frames, method)
        assert flow.shape == (*frames.shape[:3], 2) and flow.dtype == np.float32
        np.testing.assert_array_equal(flow[-1], flow[-2])  # one flow frame per RGB frame
        errors.append(endpoint_error(flow[:-1], gt[:-1]))
        zero.append(endpoint_error(np.zeros_like(gt[:-1]), gt[:-1]))
    assert np.mean(errors) < 0.5 * np.mean(zero), (method, errors, zero)


def test_farneback_runs_and_beats_zero_flow(videos):
    errors, zero = [], []
    for frames, gt in videos:
        flow = compute_flow(frames, "farneback")
        assert flow.shape == (*frames.shape[:3], 2)
        errors.append(endpoint_error(flow[:-1], gt[:-1]))
        zero.append(endpoint_error(np.zeros_like(gt[:-1]), gt[:-1]))
    assert np.mean(errors) < np.mean(zero)


def test_flow_direction_convention():
    """A pure rightward/downward shift of the image is positive x/y flow (frame i -> i+1)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (80, 100), dtype=np.uint8).astype(np.float32)
    import cv2

    base = cv2.GaussianBlur(base, (0, 0), 2.5)
    base = ((base - base.min()) / np.ptp(base) * 255).astype(np.uint8)
    shifted = np.roll(np.roll(base, 2, axis=1), 1, axis=0)  # content moves 2 px right, 1 px down
    frames = np.stack([base, shifted])[..., None].repeat(3, axis=-1)
    for method in FlowMethod:
        centre = compute_flow(frames, method)[0, 20:60, 25:75].mean((0, 1))
        np.testing.assert_allclose(centre, [2.0, 1.0], atol=0.3, err_msg=method.value)


def test_quantize_round_trip_within_half_a_step():
    rng = np.random.default_rng(1)
    flow = rng.uniform(-1.3 * FLOW_BOUND, 1.3 * FLOW_BOUND, size=(3, 16, 20, 2)).astype(np.float32)
    q = quantize_flow(flow)
    assert q.dtype == np.uint8 and q.shape == flow.shape
    back = dequantize_flow(q)
    clipped = np.clip(flow, -FLOW_BOUND, FLOW_BOUND)
    assert np.abs(back - clipped).max() <= FLOW_BOUND / 255 + 1e-5  # half a step: (2 * bound / 255) / 2
    assert (q[flow <= -FLOW_BOUND] == 0).all() and (q[flow >= FLOW_BOUND] == 255).all()
    points = quantize_flow(np.array([[-20.0, 20.0], [-0.1, 1.0]], dtype=np.float32))
    np.testing.assert_array_equal(points, [[0, 255], [127, 134]])  # round((f + 20) * 255 / 40)


def test_endpoint_error():
    gt = np.zeros((2, 4, 4, 2), np.float32)
    pred = gt.copy()
    pred[..., 0], pred[..., 1] = 3.0, 4.0
    assert endpoint_error(pred, gt) == pytest.approx(5.0)
    assert endpoint_error(gt, gt) == 0.0


@pytest.mark.parametrize(
    "frames,match",
    [
        (np.zeros((4, 32, 32, 3), np.float32), "uint8"),
        (np.zeros((4, 32, 32), np.uint8), "shape"),
        (np.zeros((4, 32, 32, 4), np.uint8), "shape"),
        (np.zeros((1, 32, 32, 3), np.uint8), "at least 2 frames"),
        ([[1, 2]], "numpy array"),
    ],
)
def test_bad_frames_are_clear_errors(frames, match):
    with pytest.raises(FlowError, match=match):
        compute_flow(frames, FlowMethod.dis)


def test_bad_arguments_are_clear_errors():
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(FlowError, match="unknown flow method 'raft'"):
        compute_flow(frames, "raft")
    with pytest.raises(FlowError, match="floating"):
        quantize_flow(np.zeros((2, 2), np.int32))
    with pytest.raises(FlowError, match="last axis"):
        quantize_flow(np.zeros((2, 3), np.float32))
    with pytest.raises(FlowError, match="uint8"):
        dequantize_flow(np.zeros((2, 2), np.float32))
    with pytest.raises(FlowError, match="one shape"):
        endpoint_error(np.zeros((2, 2)), np.zeros((3, 2)))


@pytest.mark.parametrize("method", [FlowMethod.tvl1, FlowMethod.dis])
def test_a_tiny_video_does_not_change_later_flows(method):
    """OpenCV shrinks a flow object's pyramid for a tiny image and keeps it; the estimator must undo that."""
    big = render_video(2, 5, frames=2, height=96, width=128).frames
    before = compute_flow(big, method)
    compute_flow(render_video(0, 6, frames=2, height=16, width=20).frames, method)
    np.testing.assert_array_equal(compute_flow(big, method), before)
