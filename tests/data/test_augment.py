"""Host-side augmentation draws shared by both pipelines (vicc_fast/data/augment.py)."""

from __future__ import annotations

import numpy as np

from vicc_fast.config import DataConfig
from vicc_fast.data.augment import crop_window, draw_views, strong_views


def test_released_controller_by_default():
    """One-clip samples (same start): exactly one strong view; two-clip: each view strong with p = 0.3."""
    d = DataConfig()
    assert d.aug_controller and d.same_start_prob == 0.5 and d.strong_aug_prob == 0.3
    rng = np.random.default_rng(0)
    same = rng.random(20000) < 0.5
    st = strong_views(rng, same, 2, d)
    assert (st[:, same].sum(0) == 1).all()
    assert abs(st[:, same].mean(1) - 0.5).max() < 0.03  # which view: uniform
    assert abs(st[:, ~same].mean() - 0.3) < 0.02
    d.aug_controller = False
    assert strong_views(rng, same, 2, d).all()


def test_plain_views_get_crop_and_flip_only():
    d = DataConfig(color_jitter_prob=1.0, grayscale_prob=1.0, blur_prob=1.0)
    same, views = draw_views(np.random.default_rng(1), 4000, 2, d)
    for v in views:
        plain = ~v.strong
        assert not v.blur_rgb[plain].any() and v.blur_rgb[v.strong].all()
        np.testing.assert_allclose(v.rgb_m[plain], v.rgb_m[plain][:1].repeat(plain.sum(), 0))
        assert np.abs(v.rgb_m[v.strong] - v.rgb_m[plain][:1]).max() > 0.01
        # aligned streams, flow photometric (defaults): flow takes the RGB view's flip and blur
        assert (v.flip_flow == v.flip_rgb).all() and (v.blur_flow == v.blur_rgb).all()


def test_flow_map_normalises_and_negates_only_when_asked():
    from vicc_fast.config import FlowNorm

    d = DataConfig(color_jitter_prob=0.0, grayscale_prob=0.0)
    assert d.flow_normalisation is FlowNorm.imagenet  # released: flow normalised like RGB
    _, (v,) = draw_views(np.random.default_rng(2), 8, 1, d)
    px = np.array([200.0, 50.0, 0.0])
    np.testing.assert_allclose(
        v.flow_m @ px + v.flow_t,
        np.broadcast_to((px / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225], (8, 3)),
        atol=1e-5,
    )
    d.flow_normalisation = FlowNorm.unit
    for negate in (False, True):
        d.flow_flip_negate = negate
        _, views = draw_views(np.random.default_rng(2), 64, 1, d)
        (v,) = views
        px = np.array([200.0, 50.0, 0.0])
        out = v.flow_m @ px + v.flow_t  # [n, 3]
        x = (200 - 127.5) / 127.5
        sign = np.where(v.flip_flow & negate, -1.0, 1.0)
        np.testing.assert_allclose(out[:, 0], sign * x, atol=1e-5)
        np.testing.assert_allclose(out[:, 1], (50 - 127.5) / 127.5, atol=1e-5)
        np.testing.assert_allclose(out[:, 2], 0.0, atol=1e-6)


def test_crop_window_inside_the_frame():
    rng = np.random.default_rng(3)
    for _ in range(200):
        top, left, h, w = crop_window(rng, 48, 64, (0.2, 1.0), (0.75, 4 / 3))
        assert top >= 0 and left >= 0 and top + h <= 48 and left + w <= 64
        assert 0.2 * 48 * 64 * 0.9 <= h * w <= 48 * 64


def test_grayscale_is_the_released_channel_split():
    """Released RandomGray ("actually a channel splitting"): one random channel copied to all three."""
    from vicc_fast.config import GrayMode
    from vicc_fast.data.augment import _colour

    d = DataConfig(color_jitter_prob=0.0, grayscale_prob=1.0)
    assert d.grayscale is GrayMode.channel
    m, t = _colour(np.random.default_rng(4), np.ones(3000, bool), d)
    x = np.array([200.0, 50.0, 10.0])
    y = m @ x + t  # [n, 3]
    assert (y == y[:, :1]).all() and set(np.unique(y[:, 0]).tolist()) == {200.0, 50.0, 10.0}
    d.grayscale = GrayMode.luma
    m, t = _colour(np.random.default_rng(4), np.ones(5, bool), d)
    np.testing.assert_allclose(m @ x + t, 0.299 * 200 + 0.587 * 50 + 0.114 * 10)
