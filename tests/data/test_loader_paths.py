"""Loader paths the main loader tests do not take: per-view decoding (data.union_decode=false), RGB/flow
alignment in eval mode, and the negation of flow x in ten-crop's mirrored crops."""

from __future__ import annotations

import numpy as np
import pytest

from tests.data.conftest import T_VIDEO, cfg_for, frames_from_code
from tests.data.test_loader import BACKENDS, BOTH, flow_values, loader, rgb_values
from vicc_fast.config import Stream


def test_per_view_decode_keeps_alignment_and_stride(codes_root):
    """union_decode=false decodes each view on its own (start_frame / stride): view v of RGB and of flow still
    hold the same frames at the stride, and the views' starts differ for some videos."""
    cfg = cfg_for(codes_root, "data.backend=dali", "data.union_decode=false", "data.stride=2",
                  "data.num_frames=6", "data.augment.same_start_prob=0")  # fmt: skip
    differ = []
    for b in loader(cfg):
        firsts = []
        for v in range(2):
            f_rgb = frames_from_code(rgb_values(b.views[Stream.rgb][v]).mean(axis=(2, 3))[..., 0])
            f_flow = frames_from_code(255 - flow_values(b.views[Stream.flow][v]).mean(axis=(2, 3))[..., 1])
            np.testing.assert_array_equal(f_rgb, f_flow)
            np.testing.assert_array_equal(np.diff(f_rgb, axis=1), 2)
            firsts.append(f_rgb[:, 0])
        differ += (firsts[0] != firsts[1]).tolist()
    assert any(differ)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_clips_align_rgb_and_flow(codes_root, backend):
    """In eval mode every clip of RGB and of flow covers the same frames, consecutive at the stride."""
    cfg = cfg_for(codes_root, f"data.backend={backend}", "data.stride=2", "data.num_frames=6")
    n = 0
    for b in loader(cfg, mode="eval"):
        f_rgb = frames_from_code(rgb_values(b.views[Stream.rgb][0]).mean(axis=(2, 3))[..., 0])
        f_flow = frames_from_code(255 - flow_values(b.views[Stream.flow][0]).mean(axis=(2, 3))[..., 1])
        np.testing.assert_array_equal(f_rgb, f_flow)
        np.testing.assert_array_equal(np.diff(f_rgb, axis=1), 2)
        assert f_rgb.min() >= 0 and f_rgb.max() <= T_VIDEO - 1
        n += len(f_rgb)
    assert n == 5 * 2  # 5 test videos x data.eval.clips 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("negate", [True, False])
def test_tencrop_mirrors_flip_flow_and_negate_x_when_asked(ramps_root, backend, negate):
    """Ten-crop = 5 positions x (plain, mirrored). On the ramp set flow x = y = a horizontal ramp, so a mirrored
    crop holds y -> reversed ramp (flipped) and x -> reversed ramp, negated (255 - v) with data.augment.flow_flip_negate
    (physically right) or not (the released code, the default)."""
    cfg = cfg_for(ramps_root, f"data.backend={backend}", "data.eval.crop=tencrop", "data.eval.clips=1",
                  f"data.augment.flow_flip_negate={str(negate).lower()}")  # fmt: skip
    checked = 0
    for b in loader(cfg, mode="eval", streams=BOTH):
        f = flow_values(b.views[Stream.flow][0])  # [B * 10, T, h, w, 3], crops of one video consecutive
        for v in range(0, f.shape[0], 10):
            crops = f[v : v + 10].mean(axis=1)  # [10, h, w, 3] (static video: the mean over T is any frame)
            for k in range(5):
                plain, mirrored = crops[2 * k], crops[2 * k + 1]
                np.testing.assert_allclose(mirrored[..., 1], plain[..., 1][:, ::-1], atol=3)  # y: flipped
                want_x = plain[..., 0][:, ::-1]
                np.testing.assert_allclose(mirrored[..., 0], 255 - want_x if negate else want_x, atol=3)
                checked += 1
            assert np.abs(crops[0][..., 0] - crops[0][..., 1]).max() < 8  # x and y planes cropped alike
    assert checked == 2 * 5  # 2 test videos x 5 positions


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_crop_per_clip_to_the_pixel(ramps_root, backend):
    """Every frame of a clip equals the clip's first frame (mean |d| < 0.25 level; measured 0): a crop window
    moved by one source pixel between frames changes every value of the ramps, a mean of 1.7-2.3 levels."""
    cfg = cfg_for(ramps_root, f"data.backend={backend}", "data.augment.crop_scale=[0.2,0.6]")
    for b in loader(cfg):
        for s in BOTH:
            for v in b.views[s]:
                a = rgb_values(v) if s == Stream.rgb else flow_values(v)
                per_frame = np.abs(a - a[:, :1]).mean(axis=(2, 3, 4))  # [B, T]
                assert per_frame.max() < 0.25, per_frame


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tencrop", [False, True])
def test_overlap_windows_are_the_released_test_sampler(tmp_path, backend, tencrop):
    """data.eval.windows=overlap reads every window the released test sampler does ("half overlap - 1": starts
    0, step T*stride//2 - 1, as many as fit), so their number follows each video's length: on a split mixing
    24- and 6-frame videos in one batch, each video's clips start exactly at overlap_starts(...), RGB and flow
    alike, and no padding clip reaches the batch."""
    from data_prep.patterns import make_set
    from vicc_fast.data.windows import overlap_starts

    root = make_set(tmp_path / "mixed", "codes", n_train=5, n_test=1, short=(1, 3))
    over = [f"data.backend={backend}", "data.num_frames=4", "data.stride=1", "data.eval.windows=overlap"]
    if tencrop:
        over += ["data.eval.crop=tencrop"]
    cfg = cfg_for(root, *over, "eval.batch_size=64")
    crops = 10 if tencrop else 1
    seen = {}
    for b in loader(cfg, mode="eval", split="train"):
        f_rgb = frames_from_code(rgb_values(b.views[Stream.rgb][0]).mean(axis=(2, 3))[..., 0])
        f_flow = frames_from_code(255 - flow_values(b.views[Stream.flow][0]).mean(axis=(2, 3))[..., 1])
        np.testing.assert_array_equal(f_rgb, f_flow)
        for i in np.unique(b.index.numpy()):
            rows = b.index.numpy() == i
            seen[int(i)] = f_rgb[rows][:, 0]  # crop-major: crops x windows first frames
    frames = {0: 24, 1: 6, 2: 24, 3: 6, 4: 24}
    assert sorted(seen) == list(range(5))
    for i, n in frames.items():
        want = overlap_starts(n, 4, 1)
        assert len(want) == (21 if n == 24 else 3)  # step 1: every start that fits
        np.testing.assert_array_equal(seen[i], np.tile(want, crops))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("windows", ["random", "uniform"])
def test_fixed_count_windows_read_the_host_computed_starts(tmp_path, backend, windows):
    """data.eval.windows=random / uniform: each video's clips start where the host put them
    (BaseLoader.eval_starts; random ones drawn from train.seed), the same on both backends, RGB and flow alike."""
    from data_prep.patterns import make_set

    root = make_set(tmp_path / "rand", "codes", n_train=5, n_test=1)
    cfg = cfg_for(root, f"data.backend={backend}", "data.num_frames=4", f"data.eval.windows={windows}",
                  "data.eval.clips=3", "train.seed=5")  # fmt: skip
    ld = loader(cfg, mode="eval", split="train")
    assert ld.eval_starts.shape == (5, 3) and len(np.unique(ld.eval_starts)) > 2
    seen = 0
    for b in ld:
        f_rgb = frames_from_code(rgb_values(b.views[Stream.rgb][0]).mean(axis=(2, 3))[..., 0])
        f_flow = frames_from_code(255 - flow_values(b.views[Stream.flow][0]).mean(axis=(2, 3))[..., 1])
        np.testing.assert_array_equal(f_rgb, f_flow)
        for j, i in enumerate(b.index.numpy()[::3]):
            np.testing.assert_array_equal(f_rgb[3 * j : 3 * j + 3, 0], ld.eval_starts[i])
            seen += 1
    assert seen == 5
