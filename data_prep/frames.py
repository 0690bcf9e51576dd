"""The one check of a frame array that every flow method runs first (OpenCV's and tvl1-torch), and its
error: kept apart from flow.py so that flow.py and flow_torch.py need not import each other."""

from __future__ import annotations

import numpy as np


class FlowError(ValueError):
    """Input that flow cannot be computed from (wrong dtype, shape or too few frames)."""


def check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray):
        raise FlowError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise FlowError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise FlowError(f"frames must have shape [T, H, W, 3], got {list(frames.shape)}")
    if frames.shape[0] < 2:
        raise FlowError(f"flow needs at least 2 frames, got {frames.shape[0]}")
    if min(frames.shape[1:3]) < 8:
        raise FlowError(f"frames of {frames.shape[1]}x{frames.shape[2]} are too small for optical flow")
