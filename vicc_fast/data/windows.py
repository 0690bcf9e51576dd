"""Which clips of a video the eval loaders read: pure functions of frame counts, shared by both backends.

``overlap`` is the released test sampler ("half overlap - 1" in the CoCLR/ViCC datasets): windows of
``num_frames * stride`` frames starting at 0, ``num_frames * stride // 2 - 1`` apart, as many as fit, so a longer
video gives more clips. ``uniform`` is ``clips`` windows spread evenly from the first frame to the last. ``random``
is ``clips`` windows at random starts (the released train-mode sampler, which ``test_retrieval`` uses for its
gallery), drawn per video from a seed so that two runs read the same clips. A clip reads ``num_frames`` frames at
``stride`` from its start (its span is ``(num_frames - 1) * stride + 1``). The loaders compute the starts here, on
the host, and both backends read them: the DALI graph looks them up per sample.
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


def overlap_starts(frames: int, num_frames: int, stride: int) -> np.ndarray:
    """First frame of every overlapping window of a video of ``frames`` frames: [W]."""
    return np.arange(int(overlap_count(frames, num_frames, stride))) * overlap_step(num_frames, stride)


def random_fractions(num_videos: int, clips: int, seed: int) -> np.ndarray:
    """[num_videos, clips] draws in [0, 1), a function of (seed, shape) only: video i's random windows."""
    return np.random.default_rng([seed, 0x57A27]).random((num_videos, clips))


def fixed_starts(
    frames: np.ndarray, num_frames: int, stride: int, windows: EvalWindows, clips: int, seed: int
) -> np.ndarray:
    """frames: [N] frame counts -> [N, clips] first frames for the modes with a fixed clip count. ``uniform``:
    ``clips`` starts evenly from 0 to ``frames - span`` (one clip: the middle); ``random``: start =
    floor(u * (frames - num_frames * stride)), as the released train sampler draws among
    ``range(total - num_frames * ds)``, or 0 when that is empty, u from :func:`random_fractions`."""
    if windows == EvalWindows.overlap:
        raise ValueError("overlapping windows have no fixed count per video: use overlap_starts")
    n = np.asarray(frames, dtype=np.int64)
    if windows == EvalWindows.random:
        room = np.maximum(n - num_frames * stride, 0)
        return (random_fractions(len(n), clips, seed) * room[:, None]).astype(np.int64)
    last = n - ((num_frames - 1) * stride + 1)
    if clips == 1:
        return (last // 2)[:, None]
    return np.linspace(0, last, clips, axis=1).astype(np.int64)
