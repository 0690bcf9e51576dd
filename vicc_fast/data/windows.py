"""Which clips of a video the eval loaders read: pure functions of frame counts, shared by both backends.

``overlap`` is the released test sampler ("half overlap - 1" in the CoCLR/ViCC datasets): windows of
``num_frames * stride`` frames starting at 0, ``num_frames * stride // 2 - 1`` apart, as many as fit, so a longer
video gives more clips. ``uniform`` is ``clips`` windows spread evenly from the first frame to the last. ``random``
is ``clips`` windows at random starts (the released train-mode sampler, which ``test_retrieval`` uses for its
gallery), drawn per video from a seed so that two runs read the same clips. A clip reads ``num_frames`` frames at
``stride`` from its start (its span is ``(num_frames - 1) * stride + 1``). The loaders compute the starts here, on
the host, and both backends read them: the DALI graph looks them up per sample.

Videos shorter than a clip's span (``data.short_videos=pad``, the released UCF101/HMDB51 loaders): a video of at
most :func:`drop_bound` frames is left out, a longer one is read left-padded with its first frame, which is a
negative start (:func:`pad_start`) with every frame index clamped at 0 (:func:`clip_indices`), in train and eval
alike (one window in eval).
"""

from __future__ import annotations

import numpy as np

from vicc_fast.config import EvalWindows


def drop_bound(num_frames: int, stride: int) -> int:
    """The released UCF101/HMDB51 loaders leave out a video of at most this many frames ("allow max padding = half
    video": they drop ``vlen - num_frames // 2 * ds - 1 <= 0``); longer ones shorter than a clip are padded."""
    return num_frames // 2 * stride + 1


def pad_start(frames: np.ndarray | int, num_frames: int, stride: int) -> np.ndarray:
    """frames: [N] frame counts -> [N] int64 first frame of the clip, 0 for a video at least a clip's span long,
    negative for a shorter one: the released ``frame_sampler`` pads left ("pad left, only sample once"): it keeps
    the ``ceil(frames / stride)`` indices ``0, stride, ...`` below ``frames`` and puts them at the end of ``num_frames``
    zeros, which is a start of ``-(num_frames - ceil(frames / stride)) * stride`` with indices clamped at 0
    (:func:`clip_indices`). Released train mode adds one random offset in ``range(stride)`` to the padded indices;
    we leave it out (the padded clip is the test-mode one in train too)."""
    n = np.asarray(frames, dtype=np.int64)
    kept = -(-n // stride)  # ceil(frames / stride): indices 0, stride, ... below frames
    return -np.maximum(num_frames - kept, 0) * stride


def clip_indices(starts: np.ndarray | int, num_frames: int, stride: int) -> np.ndarray:
    """starts: [...] first frames (negative ones from :func:`pad_start`) -> [..., num_frames] frame indices
    ``max(0, start + j * stride)``: a padded clip repeats frame 0 before its first in-video frame."""
    s = np.asarray(starts, dtype=np.int64)[..., None]
    return np.maximum(s + np.arange(num_frames, dtype=np.int64) * stride, 0)


def overlap_step(num_frames: int, stride: int) -> int:
    """Frames between two overlapping windows' starts (at least 1 for very short clips)."""
    return max(1, num_frames * stride // 2 - 1)


def overlap_count(frames: np.ndarray | int, num_frames: int, stride: int) -> np.ndarray:
    """frames: [N] frame counts -> [N] windows per video. A video no longer than ``num_frames * stride`` gives
    one window: at frame 0, or left-padded (:func:`pad_start`) when shorter than a clip's span."""
    available = np.asarray(frames, dtype=np.int64) - num_frames * stride
    return np.maximum(available, 0) // overlap_step(num_frames, stride) + 1


def overlap_starts(frames: int, num_frames: int, stride: int) -> np.ndarray:
    """First frame of every overlapping window of a video of ``frames`` frames: [W] (one negative start,
    :func:`pad_start`, for a video shorter than a clip's span)."""
    first = int(pad_start(frames, num_frames, stride))
    return first + np.arange(int(overlap_count(frames, num_frames, stride))) * overlap_step(
        num_frames, stride
    )


def random_fractions(num_videos: int, clips: int, seed: int) -> np.ndarray:
    """[num_videos, clips] draws in [0, 1), a function of (seed, shape) only: video i's random windows."""
    return np.random.default_rng([seed, 0x57A27]).random((num_videos, clips))


def fixed_starts(
    frames: np.ndarray, num_frames: int, stride: int, windows: EvalWindows, clips: int, seed: int
) -> np.ndarray:
    """frames: [N] frame counts -> [N, clips] first frames for the modes with a fixed clip count. ``uniform``:
    ``clips`` starts evenly from 0 to ``frames - span`` (one clip: the middle); ``random``: start =
    floor(u * (frames - num_frames * stride)), as the released train sampler draws among
    ``range(total - num_frames * ds)``, or 0 when that is empty, u from :func:`random_fractions`. A video shorter
    than a clip's span gets its (negative) :func:`pad_start` for every clip, in both modes."""
    if windows == EvalWindows.overlap:
        raise ValueError("overlapping windows have no fixed count per video: use overlap_starts")
    n = np.asarray(frames, dtype=np.int64)
    if windows == EvalWindows.random:
        room = np.maximum(n - num_frames * stride, 0)
        starts = (random_fractions(len(n), clips, seed) * room[:, None]).astype(np.int64)
    elif clips == 1:
        starts = (np.maximum(n - ((num_frames - 1) * stride + 1), 0) // 2)[:, None]
    else:
        last = np.maximum(n - ((num_frames - 1) * stride + 1), 0)
        starts = np.linspace(0, last, clips, axis=1).astype(np.int64)
    # pad_start is 0 for a video at least a clip's span long, so only shorter ones change
    pad = pad_start(n, num_frames, stride)[:, None]
    return np.where(pad < 0, pad, starts)
