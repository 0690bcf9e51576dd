"""Host-side augmentation draws shared by both pipelines (vicc_fast/data/augment.py)."""

from __future__ import annotations

import numpy as np
import pytest

from vicc_fast.config import AugmentConfig, DataConfig
from vicc_fast.data.augment import crop_window, draw_views, strong_views


def test_released_controller_by_default():
    """One-clip samples (same start): exactly one strong view; two-clip: each view strong with p = 0.3."""
    d = DataConfig()
    a = d.augment
    assert a.aug_controller and a.same_start_prob == 0.5 and a.strong_aug_prob == 0.3
    rng = np.random.default_rng(0)
    same = rng.random(20000) < 0.5
    st = strong_views(rng, same, 2, a)
    assert (st[:, same].sum(0) == 1).all()
    assert abs(st[:, same].mean(1) - 0.5).max() < 0.03  # which view: uniform
    assert abs(st[:, ~same].mean() - 0.3) < 0.02
    a.aug_controller = False
    assert strong_views(rng, same, 2, a).all()


def test_plain_views_get_crop_and_flip_only():
    d = DataConfig(augment=AugmentConfig(color_jitter_prob=1.0, grayscale_prob=1.0, blur_prob=1.0))
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

    d = DataConfig(augment=AugmentConfig(color_jitter_prob=0.0, grayscale_prob=0.0))
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
        d.augment.flow_flip_negate = negate
        _, views = draw_views(np.random.default_rng(2), 64, 1, d)
        (v,) = views
        px = np.array([128.0, 50.0, 200.0])  # the released flow image (128, y, x) (data.flow_layout default)
        out = v.flow_m @ px + v.flow_t  # [n, 3]
        x = (200 - 127.5) / 127.5
        sign = np.where(v.flip_flow & negate, -1.0, 1.0)
        np.testing.assert_allclose(out[:, 2], sign * x, atol=1e-5)
        np.testing.assert_allclose(out[:, 1], (50 - 127.5) / 127.5, atol=1e-5)
        np.testing.assert_allclose(out[:, 0], 0.0, atol=1e-6)


def test_crop_window_inside_the_frame():
    rng = np.random.default_rng(3)
    for _ in range(200):
        top, left, h, w = crop_window(rng, 48, 64, (0.2, 1.0), (0.75, 4 / 3))
        assert top >= 0 and left >= 0 and top + h <= 48 and left + w <= 64
        assert 0.2 * 48 * 64 * 0.9 <= h * w <= 48 * 64


def test_grayscale_is_the_released_channel_split():
    """Released RandomGray ("actually a channel splitting"): one random channel copied to all three."""
    from vicc_fast.config import GrayMode, GrayPer
    from vicc_fast.data.augment import _colour

    d = DataConfig(
        augment=AugmentConfig(color_jitter_prob=0.0, grayscale_prob=1.0, grayscale_per=GrayPer.view)
    )
    assert d.augment.grayscale is GrayMode.channel
    col = _colour(np.random.default_rng(4), np.ones(3000, bool), d)
    m, t = col.m, col.t
    x = np.array([200.0, 50.0, 10.0])
    y = m @ x + t  # [n, 3]
    assert (y == y[:, :1]).all() and set(np.unique(y[:, 0]).tolist()) == {200.0, 50.0, 10.0}
    # released (the default): the channel drawn per frame, [n, T, 3, 3] maps, every channel in some clip
    d.augment.grayscale_per = GrayPer.frame
    col = _colour(np.random.default_rng(4), np.ones(300, bool), d)
    y = col.m @ x + col.t  # [n, T, 3]
    assert y.shape == (300, d.num_frames, 3) and (y == y[..., :1]).all()
    per_clip = [len(set(c.tolist())) for c in y[..., 0]]
    assert min(per_clip) >= 2 and set(np.unique(y).tolist()) == {200.0, 50.0, 10.0}
    d.augment.grayscale = GrayMode.luma
    col = _colour(np.random.default_rng(4), np.ones(5, bool), d)
    m, t = col.m, col.t
    np.testing.assert_allclose(m @ x + t, 0.299 * 200 + 0.587 * 50 + 0.114 * 10)


def _frames(seed: int = 0) -> np.ndarray:
    """[3, 12, 10, 3] uint8 frames: ramps plus noise, darker or brighter per frame (their means differ from
    128, where contrast about the mean and contrast about 128 part)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 10)[None, :, None] * np.array([160.0, 90.0, 40.0])
    base = np.stack([ramp.repeat(12, 0) + off for off in (10.0, 60.0, 120.0)])
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def test_released_jitter_steps_match_torchvision_colorjitter():
    """The released ColorJitter (torchvision functional ops in a shuffled order, each clipping to 8 bits,
    contrast about the frame's mean luma) against torchvision's own ops, for every order of brightness,
    contrast and saturation, strong factors; hue is left out (PIL shifts hue in HSV, we rotate in YIQ and apply
    it with saturation: FIDELITY row 3). The one-map jitter (contrast about 128, no clipping) is far from it on
    the same draws, so the comparison can fail."""
    import itertools

    import torch
    from torchvision.transforms.v2 import functional as tvf

    from vicc_fast.data.augment import colour_affine, jitter_slots, jitter_steps_np

    x = _frames()
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255  # [T, 3, H, W]
    ops = [tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation]
    factors = np.array([1.35, 0.55, 1.4])
    worst_one_map = 0.0
    for perm in itertools.permutations(range(3)):
        order = np.array([[*perm, 3]])
        steps = jitter_slots(*(factors[i : i + 1] for i in range(3)), np.zeros(1), order)
        ours = jitter_steps_np(x, steps[0])
        ref = xt
        for i in perm:
            ref = ops[i](ref, float(factors[i]))
        ref = ref.permute(0, 2, 3, 1).numpy() * 255
        # 8-bit rounding after each of our steps (PIL's frames are 8-bit too; torchvision's tensor ops are not)
        # and PIL's rounded contrast centre, amplified by the later steps' factors: within 2.5 levels
        np.testing.assert_allclose(ours, ref, atol=2.5)
        mo, to = colour_affine(*(factors[i : i + 1] for i in range(3)), np.zeros(1), np.zeros(1, bool))
        one_map = x.astype(np.float64) @ mo[0].T + to[0]
        worst_one_map = max(worst_one_map, float(np.abs(one_map - ref).max()))
    assert worst_one_map > 20


def test_released_jitter_is_the_default_with_a_random_order_per_view():
    """Schema default as released; brightness and contrast steps take every position, saturation + hue one
    matrix at the first of theirs; the flow view takes the RGB view's steps (aligned streams, flow photometric:
    one draw per [rgb_i, flow_i] sequence); the one-map mode draws no steps."""
    from vicc_fast.config import ColorJitterMode
    from vicc_fast.data.augment import STEP_BC, STEP_MATRIX, STEP_SKIP

    d = DataConfig(augment=AugmentConfig(color_jitter_prob=0.8, aug_controller=False))
    assert d.augment.color_jitter is ColorJitterMode.released
    _, views = draw_views(np.random.default_rng(5), 4000, 2, d)
    for v in views:
        assert abs(v.jit_rgb.mean() - 0.8) < 0.03
        for f in ("kind", "b", "c", "m"):
            np.testing.assert_array_equal(getattr(v.rgb_steps, f), getattr(v.flow_steps, f))
        np.testing.assert_array_equal(v.jit_rgb, v.jit_flow)
        kind, j = v.rgb_steps.kind, v.jit_rgb
        assert ((kind == STEP_BC).sum(1) == 2).all() and ((kind == STEP_MATRIX).sum(1) == 1).all()
        assert ((kind == STEP_SKIP).sum(1) == 1).all()
        assert (np.argmax(kind == STEP_MATRIX, 1) < np.argmax(kind == STEP_SKIP, 1)).all()
        contrast_at = np.argmax(v.rgb_steps.c[j] != 1, axis=1)  # where the contrast step sits
        assert set(contrast_at.tolist()) == {0, 1, 2, 3}
    d.augment.color_jitter = ColorJitterMode.affine
    _, views = draw_views(np.random.default_rng(5), 10, 2, d)
    assert views[0].jit_rgb is None and views[0].rgb_steps is None


@pytest.mark.parametrize("gpu_formula", [False, True])
def test_dali_and_torch_jitter_steps_equal_the_reference(gpu_formula):
    """The DALI graph's steps (inside a conditional, as the train graph runs them; ``gpu_formula``: the GPU
    graph's arithmetic contrast step, run on the CPU) and the DataLoader baseline's equal
    augment.jitter_steps_np (up to 8-bit rounding at .5); an unjittered sample passes through."""
    import torch
    from nvidia.dali import fn, pipeline_def

    from vicc_fast.data import dali as D
    from vicc_fast.data.augment import jitter_slots, jitter_steps_np
    from vicc_fast.data.torch_loader import _Augment

    x = _frames(1)
    steps = jitter_slots(
        np.array([1.3, 0.7]), np.array([0.5, 1.6]), np.array([1.5, 0.2]), np.array([0.08, -0.1]),
        np.array([[1, 3, 0, 2], [2, 0, 3, 1]]),
    )  # fmt: skip
    flags = [np.array(True), np.array(False)]
    batches = [list(getattr(steps, f)) for f in D.STEP_FIELDS]  # per field: the batch of two samples

    @pipeline_def(batch_size=2, num_threads=1, device_id=None, enable_conditionals=True)
    def pipe():
        v = fn.external_source(source=lambda: [x, x], batch=True, layout="FHWC")
        fields = fn.external_source(source=lambda: batches, num_outputs=len(batches), batch=True)
        jit = fn.external_source(source=lambda: flags, batch=True)
        y = v
        if jit:
            y = D.jitter_steps(y, *fields, arithmetic=gpu_formula)
        return y

    p = pipe()
    p.build()
    (out,) = p.run()
    ref = jitter_steps_np(x, steps[0])

    def close(y: np.ndarray) -> None:
        # 8-bit rounding of values at .5 (float32 vs float64) differs by a level, which later factors grow
        d = np.abs(y.astype(np.float64) - ref)
        assert d.max() <= 3 and d.mean() < 0.3, (d.max(), d.mean())

    close(np.array(out[0]))
    np.testing.assert_array_equal(np.array(out[1]), x)
    close(
        _Augment._jitter_steps(torch.from_numpy(x).permute(0, 3, 1, 2), steps[0]).permute(0, 2, 3, 1).numpy()
    )


def test_eval_jitter_draws_as_released():
    """p = 0.3 per (video, crop); factors in the released ranges; identity steps when not jittered."""
    from vicc_fast.data.augment import draw_eval_jitter

    jit, steps = draw_eval_jitter(np.random.default_rng(7), 20000, 0.3, (0.2, 0.2, 0.2, 0.1))
    assert abs(jit.mean() - 0.3) < 0.015
    np.testing.assert_allclose(steps.m[~jit], np.broadcast_to(np.eye(3), ((~jit).sum(), 3, 3)), atol=1e-6)
    assert (steps.b[~jit] == 1).all() and (steps.c[~jit] == 1).all()
    contrast = steps.c[jit].prod(1)  # the one contrast step's factor (the others are 1)
    assert 0.8 <= contrast.min() < 0.81 and 1.19 < contrast.max() <= 1.2
