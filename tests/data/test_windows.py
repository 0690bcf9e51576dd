"""The clip windows (eval windows, left-padded short videos), against the released ``frame_sampler`` and
short-video filter of the UCF101/HMDB51 datasets (src/dataset/lmdb_dataset.py of ViCC / CoCLR) written out."""

from __future__ import annotations

import numpy as np
import pytest

from vicc_fast.config import DataConfig, EvalWindows, ShortVideos
from vicc_fast.data.windows import (
    clip_indices,
    drop_bound,
    fixed_starts,
    overlap_count,
    overlap_starts,
    overlap_step,
    pad_start,
)

SIZES = [(32, 1), (16, 2), (8, 1), (4, 2), (4, 3)]  # (num_frames, ds)


def released_pad_left(total: int, num_frames: int, ds: int, offset: int = 0) -> np.ndarray:
    """The released ``frame_sampler``'s "pad left" branch (``total - num_frames * ds <= 0``): [num_frames]
    indices; train mode adds a random ``offset`` in ``range(ds)``, test mode none."""
    sequence = np.arange(num_frames) * ds + offset
    seq_idx = np.zeros_like(sequence)
    sequence = sequence[sequence < total]
    seq_idx[-len(sequence) :] = sequence
    return seq_idx


def released_test_windows(total: int, num_frames: int, ds: int) -> np.ndarray:
    """The released ``frame_sampler`` in test mode ("half overlap - 1"; "pad left, only sample once" when the
    video holds no more than ``num_frames * ds`` frames): [windows, num_frames] frame indices."""
    available = total - num_frames * ds
    if available <= 0:
        return released_pad_left(total, num_frames, ds)[None]
    start = np.arange(0, available + 1, num_frames * ds // 2 - 1)[:, None]
    return start + np.arange(num_frames)[None] * ds


def released_drops(total: int, num_frames: int, ds: int) -> bool:
    """The released UCF101/HMDB51 datasets' filter: "allow max padding = half video"."""
    return total - num_frames // 2 * ds - 1 <= 0


def released_totals(num_frames: int, ds: int) -> range:
    """Every length the released loaders keep, up to a few windows past a clip."""
    return range(drop_bound(num_frames, ds) + 1, 3 * num_frames * ds + 2)


@pytest.mark.parametrize("num_frames,ds", [(32, 1), (16, 2), (8, 1), (4, 2)])
@pytest.mark.parametrize("total", [31, 32, 33, 47, 48, 64, 150, 301])
def test_overlap_windows_equal_the_released_test_sampler(total, num_frames, ds):
    want = released_test_windows(total, num_frames, ds)
    starts = overlap_starts(total, num_frames, ds)
    np.testing.assert_array_equal(clip_indices(starts, num_frames, ds), want)
    assert int(overlap_count(total, num_frames, ds)) == len(want)
    assert (starts + (num_frames - 1) * ds).max() < total


@pytest.mark.parametrize("num_frames,ds", SIZES)
def test_drop_bound_is_the_released_filter(num_frames, ds):
    for total in range(1, 3 * num_frames * ds):
        assert (total <= drop_bound(num_frames, ds)) == released_drops(total, num_frames, ds), total


@pytest.mark.parametrize("num_frames,ds", SIZES)
def test_pad_start_is_the_released_pad_left(num_frames, ds):
    """Every kept length: the clip at pad_start with clamped indices is the released one (test mode's only
    window; train mode's with the offset 0 we always take), padding only below a clip's span; at and above it
    the released sampler's windows (test mode) all lie inside the video."""
    span = (num_frames - 1) * ds + 1
    for total in released_totals(num_frames, ds):
        got = clip_indices(pad_start(total, num_frames, ds), num_frames, ds)
        assert got.shape == (num_frames,)
        if total <= num_frames * ds:  # the released pad-left branch
            np.testing.assert_array_equal(got, released_pad_left(total, num_frames, ds), err_msg=str(total))
        assert (int(pad_start(total, num_frames, ds)) < 0) == (total < span), total
        assert got.max() < total and np.all(np.diff(got) >= 0)
        np.testing.assert_array_equal(
            got, clip_indices(overlap_starts(total, num_frames, ds), num_frames, ds)[0]
        )
    frames = np.array(list(released_totals(num_frames, ds)))
    assert pad_start(frames, num_frames, ds).shape == frames.shape  # [N] -> [N]


def test_a_padded_clip_is_frame_0_repeated_then_every_stride():
    np.testing.assert_array_equal(clip_indices(pad_start(6, 4, 2), 4, 2), [0, 0, 2, 4])
    np.testing.assert_array_equal(clip_indices(pad_start(6, 8, 1), 8, 1), [0, 0, 0, 1, 2, 3, 4, 5])
    assert int(pad_start(7, 4, 2)) == 0 and int(pad_start(24, 8, 1)) == 0
    np.testing.assert_array_equal(clip_indices(np.array([[-2, 3]]), 4, 2), [[[0, 0, 2, 4], [3, 5, 7, 9]]])


@pytest.mark.parametrize("windows", [EvalWindows.uniform, EvalWindows.random])
def test_fixed_count_windows_of_a_padded_video_are_its_padded_clip(windows):
    """Every clip of a video shorter than a clip's span is the released test sampler's one window; the longer
    videos keep the starts they had (uniform: their own; random: their row of draws)."""
    from vicc_fast.data.windows import random_fractions

    frames = np.array(
        [6, 40, 7, 5]
    )  # 4 frames at stride 2: span 7; 6 is padded, 7 is not (5: the loaders drop it)
    starts = fixed_starts(frames, 4, 2, windows, 3, seed=1)
    np.testing.assert_array_equal(starts[[0, 3]], [[-2, -2, -2], [-2, -2, -2]])
    np.testing.assert_array_equal(clip_indices(starts[0], 4, 2), np.tile(released_pad_left(6, 4, 2), (3, 1)))
    if windows == EvalWindows.uniform:
        want = fixed_starts(frames[1:3], 4, 2, windows, 3, seed=1)
    else:
        want = (random_fractions(4, 3, seed=1)[1:3] * np.maximum(frames[1:3] - 8, 0)[:, None]).astype(
            np.int64
        )
    np.testing.assert_array_equal(starts[1:3], want)
    assert (starts[1:3] >= 0).all()


def test_short_videos_are_padded_by_default_as_released():
    """data.short_videos defaults to the released behaviour: pad (and drop at most half a clip's worth)."""
    assert DataConfig().short_videos is ShortVideos.pad


def test_uniform_windows_span_the_video_and_one_clip_is_the_middle():
    np.testing.assert_array_equal(fixed_starts([40], 8, 2, EvalWindows.uniform, 3, 0), [[0, 12, 25]])
    np.testing.assert_array_equal(fixed_starts([40], 8, 2, EvalWindows.uniform, 1, 0), [[12]])
    assert overlap_step(2, 1) == 1  # never a zero step
    np.testing.assert_array_equal(overlap_count(np.array([8, 30]), 8, 1), [1, 8])


def test_random_windows_lie_where_the_released_train_sampler_draws_and_follow_the_seed():
    """start = floor(u * (frames - T * stride)): among range(total - T * ds) as released, 0 when that is
    empty; the draws are a function of the seed."""
    from vicc_fast.data.windows import random_fractions

    u = random_fractions(50, 2, seed=3)
    assert u.shape == (50, 2) and np.array_equal(u, random_fractions(50, 2, seed=3))
    assert not np.array_equal(u, random_fractions(50, 2, seed=4))
    starts = fixed_starts(np.full(50, 40), 8, 2, EvalWindows.random, 2, seed=3)
    np.testing.assert_array_equal(starts, (u * (40 - 16)).astype(np.int64))
    assert starts.min() >= 0 and starts.max() <= 40 - 16 - 1 and len(np.unique(starts)) > 10
    assert fixed_starts([16], 8, 2, EvalWindows.random, 1, seed=3).tolist() == [[0]]
    with pytest.raises(ValueError, match="overlap_starts"):
        fixed_starts([40], 8, 2, EvalWindows.overlap, 2, 0)
