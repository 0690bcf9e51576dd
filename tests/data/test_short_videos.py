"""Videos shorter than a clip (``data.short_videos``), through both backends: with ``pad`` (the default, the
released UCF101/HMDB51 loaders) a video of at most ``num_frames // 2 * stride + 1`` frames is left out, counted
and warned about, and a longer one is read left-padded with its first frame, in train and eval; the other videos
read what they read without it. The codes set tells each output frame's number (data_prep/patterns.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.data.conftest import cfg_for, frames_from_code, make_set
from vicc_fast.config import Stream
from vicc_fast.data.augment import flow_values, rgb_values
from vicc_fast.data.loader import build_loader
from vicc_fast.data.windows import clip_indices, overlap_starts

BOTH = (Stream.rgb, Stream.flow)
BACKENDS = ["dali", "torch"]
SHORT = (1, 2)  # train videos of 6 frames (make_set); the others have 24
# (num_frames, stride) -> the 6-frame video's padded clip: frame 0 repeated, then 0, stride, 2 * stride, ...
PADDED = {(4, 2): [0, 0, 2, 4], (8, 1): [0, 0, 0, 1, 2, 3, 4, 5]}


@pytest.fixture(scope="module")
def short_root(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("short"), "codes", n_train=4, n_test=1, short=SHORT)


def load(cfg, mode: str, views: int = 2):
    split = "train"  # the short videos are train videos; eval mode reads that split too
    return build_loader(cfg, split, mode, BOTH, views, 0, 1, torch.device("cpu"))


def clip_frames(b, v: int = 0) -> np.ndarray:
    """[B', T] frame numbers of view ``v``, RGB and flow (its y plane: never negated) checked equal."""
    f_rgb = frames_from_code(rgb_values(b.views[Stream.rgb][v]).mean(axis=(2, 3))[..., 0])
    flow = flow_values(b.views[Stream.flow][v], "imagenet").mean(axis=(2, 3))
    np.testing.assert_array_equal(f_rgb, frames_from_code(255 - flow[..., 1]))
    return f_rgb


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", list(PADDED))
@pytest.mark.parametrize("union", [True, False])
@pytest.mark.parametrize("views", [2, 1])
def test_a_short_video_trains_on_its_left_padded_clip(short_root, backend, size, union, views):
    """Every view of a padded video reads frame 0 repeated then 0, stride, ... (the union window, the per-view
    decodes and a single view all take the clamped gather); the 24-frame videos read clips as before."""
    T, stride = size
    cfg = cfg_for(short_root, f"data.backend={backend}", f"data.num_frames={T}", f"data.stride={stride}",
                  f"data.union_decode={str(union).lower()}")  # fmt: skip
    ld = load(cfg, "train", views)
    assert ld.skipped == 0 and ld.num_samples == 4
    seen = set()
    for epoch in range(2):
        ld.set_epoch(epoch)
        for b in ld:
            for v in range(views):
                f = clip_frames(b, v)
                for i, row in zip(b.index.tolist(), f):
                    seen.add(i)
                    if i in SHORT:
                        np.testing.assert_array_equal(row, PADDED[size])
                    else:
                        np.testing.assert_array_equal(np.diff(row), stride)
                        assert 0 <= row[0] <= 24 - ((T - 1) * stride + 1)
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("windows", ["overlap", "uniform", "random"])
def test_a_short_video_is_evaluated_on_its_left_padded_clip(short_root, backend, windows):
    """Eval: a padded video's clips (one with overlapping windows, as the released test sampler; data.eval.clips
    copies of it with a fixed count) are its padded clip; the 24-frame videos' are where they were."""
    cfg = cfg_for(short_root, f"data.backend={backend}", "data.num_frames=4", "data.stride=2",
                  f"data.eval.windows={windows}", "data.eval.clips=3", "eval.batch_size=64")  # fmt: skip
    ld = load(cfg, "eval")
    got: dict[int, np.ndarray] = {}
    for b in ld:
        f = clip_frames(b)
        for i in np.unique(b.index.numpy()):
            got[int(i)] = f[b.index.numpy() == i]
    assert sorted(got) == [0, 1, 2, 3]
    for i, clips in got.items():
        if i in SHORT:
            assert len(clips) == (1 if windows == "overlap" else 3)
            np.testing.assert_array_equal(clips, np.tile(PADDED[(4, 2)], (len(clips), 1)))
        else:
            starts = overlap_starts(24, 4, 2) if windows == "overlap" else ld.eval_starts[i]
            assert (np.asarray(starts) >= 0).all()
            np.testing.assert_array_equal(clips, clip_indices(starts, 4, 2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_videos_at_or_below_the_drop_bound_are_left_out_not_errors(short_root, backend, mode):
    """12 frames at stride 1: the released loaders drop videos of at most 12 // 2 + 1 = 7 frames; the 6-frame
    ones are counted, warned about once and never read, even with data.on_bad_sample=error (the default)."""
    cfg = cfg_for(short_root, f"data.backend={backend}", "data.num_frames=12", "data.on_bad_sample=error")
    with pytest.warns(UserWarning, match=r"2 video\(s\) of split 'train' left out: at most 7 frames") as w:
        ld = load(cfg, mode)
    assert len([x for x in w if "left out" in str(x.message)]) == 1
    assert ld.skipped == 2 and ld.num_samples == 2
    assert all("released loader drops" in r for r in ld.excluded.values())
    assert ld.pad_starts.tolist() == [0, 0, 0, 0]  # the dropped ones are not read padded
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing more to warn about while reading
        got = {i for b in ld for i in b.index.tolist()}
    assert got == {0, 3}


@pytest.mark.parametrize("backend", BACKENDS)
def test_just_above_the_drop_bound_is_padded(tmp_path, backend):
    """The bound drops a video of exactly that many frames and pads one a frame longer: a clip of 10 at stride 1
    has the bound 10 // 2 + 1 = 6 (the 6-frame videos are left out), one of 8 the bound 5 (they are padded)."""
    root = make_set(tmp_path / "s", "codes", n_train=4, n_test=1, short=SHORT)
    with pytest.warns(UserWarning, match="at most 6 frames"):
        assert load(cfg_for(root, f"data.backend={backend}", "data.num_frames=10"), "train").skipped == 2
    ld = load(cfg_for(root, f"data.backend={backend}", "data.num_frames=8"), "train")
    assert ld.skipped == 0 and ld.pad_starts.tolist() == [0, -2, -2, 0]


def test_a_padded_video_leaves_the_other_videos_draws_alone(tmp_path):
    """DALI: the padding ops (built only when a video needs them) change no random draw: on a set where video 1
    is short the other videos' views, with every augmentation on, equal the all-long set's bit for bit (same
    sample order, same crops, colours, blur and starts)."""
    over = ["data.backend=dali", "data.augment.color_jitter_prob=0.8", "data.augment.grayscale_prob=0.2", "data.augment.blur_prob=0.5",
            "data.augment.same_start_prob=0.5"]  # fmt: skip
    outs = []
    for short in [(), (1,)]:
        root = make_set(tmp_path / f"s{len(short)}", "codes", n_train=4, n_test=1, short=short)
        ld = load(cfg_for(root, *over), "train")
        outs.append([(b.index, {s: [v.clone() for v in vs] for s, vs in b.views.items()}) for b in ld])
    assert len(outs[0]) == len(outs[1]) == 2
    compared = 0
    for (ia, va), (ib, vb) in zip(*outs):
        assert torch.equal(ia, ib)
        keep = ia != 1
        for s in BOTH:
            for x, y in zip(va[s], vb[s]):
                assert torch.equal(x[keep], y[keep])
                compared += int(keep.sum())
    assert compared == 3 * 2 * 2  # 3 long videos x 2 streams x 2 views
