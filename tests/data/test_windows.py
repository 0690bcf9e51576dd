"""The eval clip windows, against the released test sampler written out from its description."""

from __future__ import annotations

import numpy as np
import pytest

from vicc_fast.config import EvalWindows
from vicc_fast.data.windows import fixed_starts, overlap_count, overlap_starts, overlap_step


def released_test_windows(total: int, num_frames: int, ds: int) -> np.ndarray:
    """The released ``frame_sampler`` in test mode ("half overlap - 1"), for videos at least a clip's span long:
    [windows, num_frames] frame indices."""
    available = total - num_frames * ds
    if available <= 0:
        return (np.arange(num_frames) * ds)[None]
    start = np.arange(0, available + 1, num_frames * ds // 2 - 1)[:, None]
    return start + np.arange(num_frames)[None] * ds


@pytest.mark.parametrize("num_frames,ds", [(32, 1), (16, 2), (8, 1), (4, 2)])
@pytest.mark.parametrize("total", [31, 32, 33, 47, 48, 64, 150, 301])
def test_overlap_windows_equal_the_released_test_sampler(total, num_frames, ds):
    if total < (num_frames - 1) * ds + 1:
        pytest.skip("shorter than a clip: our loaders reject such videos")
    want = released_test_windows(total, num_frames, ds)
    starts = overlap_starts(total, num_frames, ds)
    np.testing.assert_array_equal(starts, want[:, 0])
    assert int(overlap_count(total, num_frames, ds)) == len(want)
    assert (starts + (num_frames - 1) * ds).max() < total


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
