"""Which clips of a video the eval loaders read: pure functions of its frame count, shared by both backends.

``overlap`` is the released test sampler ("half overlap - 1" in the CoCLR/ViCC datasets): windows of
``num_frames * stride`` frames starting at 0, ``num_frames * stride // 2 - 1`` apart, as many as fit, so a longer
video gives more clips. ``uniform`` is ``clips`` windows spread evenly from the first frame to the last.
A clip reads ``num_frames`` frames at ``stride`` from its start (its span is ``(num_frames - 1) * stride + 1``).
"""

from __future__ import annotations

import numpy as np

from vicc_fast.config import EvalWindows


def overlap_step(num_frames: int, stride: int) -> int:
    """Frames between two overlapping windows' starts (at least 1 for very short clips)."""
    return max(1, num_frames * stride // 2 - 1)


def overlap_count(frames: np.ndarray | int, num_frames: int, stride: int) -> np.ndarray:
    """frames: [N] frame counts -> [N] windows per video. A video no longer than ``num_frames * stride`` gives
    one window at frame 0 (the released sampler pads only videos shorter than a clip's span, which our loaders
    reject)."""
    available = np.asarray(frames, dtype=np.int64) - num_frames * stride
    return np.maximum(available, 0) // overlap_step(num_frames, stride) + 1


def clip_starts(frames: int, num_frames: int, stride: int, windows: EvalWindows, clips: int) -> np.ndarray:
    """First frame of each eval clip of a video of ``frames`` frames: [W] (``overlap``) or [clips]
    (``uniform``)."""
    if windows == EvalWindows.overlap:
        return np.arange(int(overlap_count(frames, num_frames, stride))) * overlap_step(num_frames, stride)
    span = (num_frames - 1) * stride + 1
    if clips == 1:
        return np.array([(frames - span) // 2])
    return np.linspace(0, frames - span, clips).astype(np.int64)
