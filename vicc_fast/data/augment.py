"""Per-sample augmentation draws shared by both input pipelines (DALI and the torch DataLoader baseline).

Everything random about a training sample except its crop window is drawn here, on the host, from a numpy
generator: whether its views share a start frame, which views get the strong augmentation (the released
code's controller), flips, blur and the colour maps of RGB and flow with the normalisation folded in. Drawing
them in one place is what lets RGB view i and flow view i share a draw (``align_streams``) in both backends.

The released code (ViCC ``main_cross.py`` ``get_transform``) augments [rgb_i, flow_i] of view i as ONE frame
sequence: one crop window, one flip, one colour-jitter / grayscale / blur draw for both streams. Its
``TransformController`` picks, 50/50, a two-clip transform (two time stamps; each view gets the base (strong)
augmentation with p = 0.3, else crop + flip only) or a one-clip transform (one time stamp for both views; one
view strong, the other crop + flip only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vicc_fast.config import (
    AugmentConfig,
    ColorJitterMode,
    CropMode,
    DataConfig,
    FlowLayout,
    FlowNorm,
    GrayMode,
    GrayPer,
)

if TYPE_CHECKING:  # the draws run in DALI's external source: numpy only at run time
    import torch

# The colour statistics and the colour algebra live here, with the draws that use them; the DALI graph
# (dali.py) and the DataLoader baseline import them from here.
RGB_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
RGB_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
FLOW_MEAN = 127.5  # stored flow coding: 0 motion <-> 127.5; [0, 255] -> [-1, 1] ("unit" normalisation)
FLOW_STD = 127.5


# The flow image's channels (data.flow_layout). released: ViCC process_data/src/extract_ff.py writes
# ``flow_img[:, :, 0:2] = flow`` into a 128-filled image with OpenCV (BGR: B = x, G = y, R = 128) and the
# loaders read the JPEG with PIL as RGB, so the network sees (128, y, x). xy0: (x, y, 0).
FLOW_CONST = {FlowLayout.released: 128.0, FlowLayout.xy0: 0.0}  # the constant channel's value
FLOW_X = {FlowLayout.released: 2, FlowLayout.xy0: 0}  # the channel holding x
FLOW_Y = 1


def flow_norm(
    mode: FlowNorm | str, layout: FlowLayout | str = FlowLayout.xy0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean [3], std [3]) on the flow image in [0, 255] of ``layout`` (released (128, y, x) |
    xy0 (x, y, 0)): ``imagenet`` = the RGB statistics channel by channel (the released code normalises flow
    like RGB); ``unit`` = x, y to [-1, 1], the constant channel to 0."""
    mode, layout = FlowNorm(mode), FlowLayout(layout)
    if mode is FlowNorm.imagenet:
        return np.array(RGB_MEAN), np.array(RGB_STD)
    mean = np.full(3, FLOW_MEAN)
    mean[3 - FLOW_X[layout] - FLOW_Y] = FLOW_CONST[layout]
    return mean, np.full(3, FLOW_STD)


def rgb_values(x: torch.Tensor) -> np.ndarray:
    """A loader's RGB view [B, 3, T, H, W] (normalised) -> [B, T, H, W, 3] back in [0, 255]: what the pattern
    checks (tests, the GPU decode check) read the frame numbers, crops and flips from."""
    return _values(x, np.array(RGB_MEAN), np.array(RGB_STD))


def flow_values(x: torch.Tensor, mode: str = "unit", layout: str = "xy0") -> np.ndarray:
    """A loader's flow view [B, 3, T, H, W] normalised with ``mode`` (``data.flow_normalisation``) -> [B, T, H,
    W, 3] in the stored coding, channels as ``layout`` (``data.flow_layout``): x, y in [0, 255] and the
    constant channel."""
    return _values(x, *flow_norm(mode, layout))


def _values(x: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return x.float().permute(0, 2, 3, 4, 1).cpu().numpy() * std + mean


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luma, PIL's "L" conversion
_LUMA = np.array(LUMA)
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def colour_affine(
    brightness: np.ndarray,
    contrast: np.ndarray,
    saturation: np.ndarray,
    hue: np.ndarray,
    gray: np.ndarray,
    gray_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Colour jitter and grayscale as one affine map per sample on [0, 255] RGB, ``y = M x + t``.

    brightness, contrast, saturation: [B] factors (1 = unchanged); hue: [B] in turns (0.1 = 36 degrees,
    torchvision's unit); gray: [B] bool. Applied in the order brightness, contrast (about mid-grey 128, as
    DALI's colour ops do; torchvision uses the image mean), saturation (blend with luma), hue (rotation in
    YIQ), grayscale: every channel <- ``gray_weights`` [B, 3] . RGB (rows summing to 1; default luma; a one-hot
    row is the released code's channel split). Returns M [B, 3, 3], t [B, 3]. Every step maps grey to grey,
    so t stays (1 - c) * 128.
    """
    n = len(brightness)
    eye = np.broadcast_to(np.eye(3), (n, 3, 3))
    to_luma = np.ones((3, 1)) * _LUMA[None, :]  # 1 w^T: every channel <- luma
    sat = saturation[:, None, None] * eye + (1 - saturation)[:, None, None] * to_luma
    th = 2 * np.pi * hue
    rot = np.zeros((n, 3, 3))
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = np.cos(th), -np.sin(th), np.sin(th), np.cos(th)
    # exactly the identity without a hue shift: the YIQ round trip leaves ~1e-17 cross terms, which would leak
    # into flow's zero third channel
    hue_m = np.where((hue == 0)[:, None, None], eye, _YIQ2RGB @ rot @ _RGB2YIQ)
    w = np.broadcast_to(_LUMA, (n, 3)) if gray_weights is None else gray_weights
    bc = brightness * contrast
    t = np.repeat(((1 - contrast) * 128.0)[:, None], 3, axis=1)
    # w [n, T, 3]: one grayscale row per frame (data.augment.grayscale_per=frame) -> M [n, T, 3, 3]
    if w.ndim == 3:
        gray_m = np.where(gray[:, None, None, None], np.ones((1, 1, 3, 1)) * w[:, :, None, :], eye[:, None])
        m = gray_m @ hue_m[:, None] @ sat[:, None] * bc[:, None, None, None]
        return m, np.repeat(t[:, None], w.shape[1], axis=1)
    gray_m = np.where(gray[:, None, None], np.ones((1, 3, 1)) * w[:, None, :], eye)
    m = gray_m @ hue_m @ sat * bc[:, None, None]
    return m, t


# The released ColorJitter's four operations, in the index order of :func:`jitter_slots`' ``order``.
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
# What step k of the released jitter does (jitter_slots' ``kind``): brightness/contrast, the colour matrix, nothing
STEP_BC, STEP_MATRIX, STEP_SKIP = 0, 1, 2


@dataclass
class JitterSteps:
    """The released colour jitter of n samples as four steps on uint8 frames (:func:`jitter_slots`): step k of
    sample i is ``kind[i, k]``: STEP_BC ``y = b (m + c (x - m))`` with m the frame's mean luma (rounded,
    PIL's contrast centre), STEP_MATRIX ``y = M x``, STEP_SKIP nothing; every step rounds and clips to
    [0, 255] (8-bit frames between PIL's ops). kind [n, 4] int32, b, c [n, 4] float32, m [n, 3, 3] float32."""

    kind: np.ndarray
    b: np.ndarray
    c: np.ndarray
    m: np.ndarray

    def __getitem__(self, i: int) -> JitterSteps:
        return JitterSteps(self.kind[i], self.b[i], self.c[i], self.m[i])


def jitter_slots(
    brightness: np.ndarray, contrast: np.ndarray, saturation: np.ndarray, hue: np.ndarray, order: np.ndarray
) -> JitterSteps:
    """The released colour jitter (torchvision's ColorJitter on PIL frames) as :class:`JitterSteps`.

    brightness, contrast, saturation: [n] factors; hue: [n] in turns; order: [n, 4] a permutation of the
    :data:`JITTER_OPS` indices per sample (torchvision shuffles its ops). Brightness ``b x`` and contrast ``c x
    + (1 - c) mean`` (PIL: a blend with a grey image of the frame's mean luma) are STEP_BC steps at their
    positions. Saturation (``s x + (1 - s) luma(x)``) and hue (a rotation in YIQ; PIL shifts H in HSV, the one
    op not reproduced) are one matrix at the first of their two positions, the other position skipped: both
    keep each pixel's luma and map grey to grey, so without clipping all four ops commute and the order
    matters only through the clipping between them; merging the two costs one clip between them (and one
    resampling pass of the frames)."""
    n = len(brightness)
    one = np.ones(n)
    k = np.arange(4)[None, :]
    is_bc = order < 2
    first_sh = np.where(is_bc, 4, k).min(1, keepdims=True)  # position of the first of saturation / hue
    kind = np.where(is_bc, STEP_BC, np.where(k == first_sh, STEP_MATRIX, STEP_SKIP)).astype(np.int32)
    b = np.where(order == 0, brightness[:, None], 1.0).astype(np.float32)
    c = np.where(order == 1, contrast[:, None], 1.0).astype(np.float32)
    m = colour_affine(one, one, saturation, hue, np.zeros(n, bool))[0].astype(np.float32)
    return JitterSteps(kind, b, c, m)


def mean_luma(x: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] -> [T] each frame's mean luma, rounded as PIL's contrast centre."""
    return np.floor(np.asarray(x, np.float64).mean(axis=(1, 2)) @ _LUMA + 0.5)


def jitter_steps_np(x: np.ndarray, steps: JitterSteps) -> np.ndarray:
    """Reference of the released jitter's steps on one clip: x [T, H, W, 3] in [0, 255], ``steps`` one
    sample's :class:`JitterSteps` -> [T, H, W, 3] float64 of 8-bit values (the DALI graph and the DataLoader
    baseline compute the same, up to float32 rounding)."""
    y = np.asarray(x, dtype=np.float64)
    for kind, b, c in zip(steps.kind, steps.b, steps.c):
        if kind == STEP_BC:
            centre = mean_luma(y)[:, None, None, None]
            y = float(b) * (centre + float(c) * (y - centre))
        elif kind == STEP_MATRIX:
            y = y @ np.asarray(steps.m, np.float64).T
        y = np.clip(np.floor(y + 0.5), 0.0, 255.0)  # halves up, as DALI's uint8 outputs
    return y


@dataclass
class ViewDraw:
    """The draws of one view for n samples. flips and blur flags [n] bool, sigma [n]; colour maps applied to
    [0, 255] pixels and giving normalised values: RGB ``y = M x + t`` on (R, G, B), flow on the flow image
    (data.flow_layout); M [n, 3, 3] and t [n, 3], or with one grayscale channel per frame
    (:func:`per_frame_maps`) M [n, T, 3, 3] and t [n, T, 3]."""

    strong: np.ndarray
    flip_rgb: np.ndarray
    flip_flow: np.ndarray
    blur_rgb: np.ndarray
    blur_flow: np.ndarray
    sigma: np.ndarray
    rgb_m: np.ndarray  # [n, 3, 3] float32
    rgb_t: np.ndarray  # [n, 3]
    flow_m: np.ndarray
    flow_t: np.ndarray
    # data.augment.color_jitter=released: the jitter runs as steps before the map (rgb_m / flow_m then hold grayscale
    # and the normalisation only): which samples are jittered [n] bool, and their JitterSteps. None with the
    # one-map jitter.
    jit_rgb: np.ndarray | None = None
    jit_flow: np.ndarray | None = None
    rgb_steps: JitterSteps | None = None
    flow_steps: JitterSteps | None = None


def strong_views(rng: np.random.Generator, same: np.ndarray, num_views: int, p: AugmentConfig) -> np.ndarray:
    """[V, n] bool: which views get the strong augmentation. Controller off: all. On: a one-clip sample
    (``same``) has exactly one strong view, chosen uniformly; a two-clip sample each view with
    ``strong_aug_prob``."""
    n = len(same)
    if not p.aug_controller:
        return np.ones((num_views, n), bool)
    which = rng.integers(num_views, size=n)
    one_clip = np.arange(num_views)[:, None] == which[None, :]
    two_clip = rng.random((num_views, n)) < p.strong_aug_prob
    return np.where(same[None, :], one_clip, two_clip)


def _jitter_factors(
    rng: np.random.Generator, jit: np.ndarray, strengths: tuple[float, float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torchvision ColorJitter's factors for n samples, neutral where ``jit`` [n] is False: brightness,
    contrast, saturation uniform in [max(0, 1 - x), 1 + x], hue uniform in [-x, x] (turns). 4 x [n]."""
    n = len(jit)

    def factor(strength: float) -> np.ndarray:
        f = rng.uniform(max(0.0, 1 - strength), 1 + strength, n)
        return np.where(jit, f, 1.0)

    b, c, s = (factor(float(x)) for x in strengths[:3])
    hue = float(strengths[3])
    return b, c, s, np.where(jit, rng.uniform(-hue, hue, n), 0.0)


def _op_order(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 4] a random order of :data:`JITTER_OPS` per sample (torchvision's ColorJitter shuffles its ops)."""
    return rng.permuted(np.tile(np.arange(len(JITTER_OPS)), (n, 1)), axis=1)


def draw_eval_jitter(
    rng: np.random.Generator, n: int, prob: float, strengths: tuple[float, float, float, float]
) -> tuple[np.ndarray, JitterSteps]:
    """The released test-time ColorJitter(consistent=True, p) of n (video, crop) pairs: one draw for all of a
    pair's frames. Returns jit [n] bool and the released steps (:func:`jitter_slots`, identity where not
    jittered)."""
    jit = rng.random(n) < prob
    b, c, s, h = _jitter_factors(rng, jit, strengths)
    order = _op_order(rng, n)
    return jit, jitter_slots(b, c, s, h, order)


@dataclass
class _Colour:
    """One stream's colour draw of n samples: the map ``y = m x + t`` on [0, 255] RGB, and with the released
    jitter its steps (``jit`` [n] bool, ``steps``) run before the map. ``parts``: the factors and grayscale
    flags the map was made of (another stream's frames redraw their grayscale channels from them)."""

    m: np.ndarray
    t: np.ndarray
    jit: np.ndarray | None = None
    steps: JitterSteps | None = None
    parts: tuple[np.ndarray, ...] | None = None


def released_jitter(a: AugmentConfig) -> bool:
    return a.color_jitter is ColorJitterMode.released


def per_frame_maps(a: AugmentConfig) -> bool:
    """Whether the colour maps are per frame: the released RandomGray's channel drawn per frame
    (``data.augment.grayscale=channel``, ``data.augment.grayscale_per=frame``) and grayscale on at all."""
    return a.grayscale_prob > 0 and a.grayscale is GrayMode.channel and a.grayscale_per is GrayPer.frame


def _gray_weights(rng: np.random.Generator, n: int, d: DataConfig) -> np.ndarray | None:
    """Grayscale rows: None = luma; channel: one-hot rows, [n, 3] per view or [n, T, 3] per frame (released
    RandomGray.grayscale: ``np.random.choice(3)`` for every frame it grays, augmentation.py line 212)."""
    if d.augment.grayscale is not GrayMode.channel:
        return None
    if per_frame_maps(d.augment):
        return np.eye(3)[rng.integers(3, size=(n, int(d.num_frames)))]
    return np.eye(3)[rng.integers(3, size=n)]


def _colour_map(parts: tuple[np.ndarray, ...], weights: np.ndarray | None, a: AugmentConfig) -> tuple:
    """(M, t) of a draw's ``parts`` (b, c, s, h, gray) with grayscale rows ``weights``: the whole jitter folded
    in (affine), or the grayscale only (released jitter: the jitter runs as steps before the map)."""
    b, c, s, h, gray = parts
    if not released_jitter(a):
        return colour_affine(b, c, s, h, gray, weights)
    one = np.ones(len(b))
    return colour_affine(one, one, one, np.zeros(len(b)), gray, weights)


def _colour(rng: np.random.Generator, strong: np.ndarray, d: DataConfig) -> _Colour:
    """Colour jitter (p) + grayscale (p) of strong samples. One-map jitter (``data.augment.color_jitter=affine``): both
    folded into one affine map on [0, 255], M [n,3,3], t [n,3]; released: the map is the grayscale only and the
    jitter comes as :func:`jitter_slots` steps (the op order drawn after every other draw, so the one-map
    mode's draws are unchanged)."""
    n, a = len(strong), d.augment
    jit = strong & (rng.random(n) < a.color_jitter_prob)
    gray = strong & (rng.random(n) < a.grayscale_prob)
    b, c, s, h = _jitter_factors(rng, jit, (a.brightness, a.contrast, a.saturation, a.hue))
    weights = _gray_weights(rng, n, d)  # released RandomGray: one channel copied to all three
    parts = (b, c, s, h, gray)
    m, t = _colour_map(parts, weights, a)
    if not released_jitter(a):
        return _Colour(m, t, parts=parts)
    order = _op_order(rng, n)
    return _Colour(m, t, jit, jitter_slots(b, c, s, h, order), parts)


def _other_frames(rng: np.random.Generator, col: _Colour, d: DataConfig) -> _Colour:
    """The flow frames of a view that shares the RGB frames' draw (data.augment.align_streams): the same jitter and
    the same decision to gray, but with per-frame channels their own channel draws (released RandomGray
    draws a channel for every frame of the [rgb_i, flow_i] sequence). Per view: the RGB draw itself."""
    if not per_frame_maps(d.augment) or col.parts is None:
        return col
    m, t = _colour_map(col.parts, _gray_weights(rng, len(col.m), d), d.augment)
    return _Colour(m, t, col.jit, col.steps, col.parts)


def fold_rgb(m: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, t) on [0, 255] RGB -> the same map followed by ImageNet normalisation. [n,(T,)3,3], [n,(T,)3]."""
    inv_std = 1.0 / np.array(RGB_STD)
    return (
        (inv_std[:, None] * m).astype(np.float32),
        (inv_std * (t - np.array(RGB_MEAN))).astype(np.float32),
    )


def fold_flow(
    m: np.ndarray, t: np.ndarray, negate_x: np.ndarray, mode: FlowNorm | str, layout: FlowLayout | str
) -> tuple[np.ndarray, np.ndarray]:
    """(M, t) on flow pixels (channels as ``layout``) -> x -> 255 - x where ``negate_x`` [n] (the motion
    mirrored), then the map, then the flow normalisation ``mode`` (:func:`flow_norm`; unit: x, y to (v -
    127.5) / 127.5, so the negation is a sign flip). [n,(T,)3,3], [n,(T,)3] -> the same shapes, float32."""
    n, ix = len(negate_x), FLOW_X[FlowLayout(layout)]
    d = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    d[:, ix, ix] = np.where(negate_x, -1.0, 1.0)
    o = np.zeros((n, 3))
    o[:, ix] = np.where(negate_x, 255.0, 0.0)
    if m.ndim == 4:  # per-frame maps: the same negation on every frame
        m2, t2 = m @ d[:, None], np.einsum("ntij,nj->nti", m, o) + t
    else:
        m2, t2 = m @ d, np.einsum("nij,nj->ni", m, o) + t
    mean, std = flow_norm(mode, layout)
    scale = 1.0 / std
    return (scale[:, None] * m2).astype(np.float32), (scale * (t2 - mean)).astype(np.float32)


def draw_views(
    rng: np.random.Generator, n: int, num_views: int, d: DataConfig
) -> tuple[np.ndarray, list[ViewDraw]]:
    """Draws of n samples: ``same`` [n] bool (views start at the same frame) and one :class:`ViewDraw` per
    view. With ``align_streams`` flow view i takes RGB view i's flip, blur and (``flow_photometric``) colour
    draw; else its own. Reads ``d.augment`` and the flow image's settings of ``d``."""
    p = d.augment
    same = rng.random(n) < p.same_start_prob
    strong = strong_views(rng, same, num_views, p)
    identity = _Colour(*colour_affine(*(np.ones(n),) * 3, np.zeros(n), np.zeros(n, bool)))
    if released_jitter(p):
        identity.jit = np.zeros(n, bool)
        identity.steps = jitter_slots(*(np.ones(n),) * 3, np.zeros(n), np.tile(np.arange(4), (n, 1)))
    out = []
    for v in range(num_views):
        st = strong[v]

        def flip() -> np.ndarray:
            return rng.random(n) < 0.5 if p.hflip else np.zeros(n, bool)

        def blur(st: np.ndarray = st) -> tuple[np.ndarray, np.ndarray]:
            sigma = rng.uniform(float(p.blur_sigma[0]), float(p.blur_sigma[1]), n)
            return st & (rng.random(n) < p.blur_prob), sigma

        flip_rgb = flip()
        blur_rgb, sigma = blur()
        col_rgb = _colour(rng, st, d)
        if p.align_streams:
            flip_flow, blur_flow = flip_rgb, blur_rgb
            col_flow = _other_frames(rng, col_rgb, d) if p.flow_photometric else col_rgb
        else:
            flip_flow = flip()
            blur_flow, _ = blur()  # one sigma per view keeps the DALI graph's inputs the same in both modes
            col_flow = _colour(rng, st, d)
        if not p.flow_photometric:
            blur_flow, col_flow = np.zeros(n, bool), identity
        rm, rt = fold_rgb(col_rgb.m, col_rgb.t)
        negate = flip_flow & p.flow_flip_negate
        fm, ft = fold_flow(col_flow.m, col_flow.t, negate, d.flow_normalisation, d.flow_layout)
        if per_frame_maps(p):  # every map per frame, so that each stream's graph input has one shape
            frames = int(d.num_frames)
            rm, rt, fm, ft = (
                a if a.ndim == nd + 1 else np.repeat(a[:, None], frames, axis=1)
                for a, nd in ((rm, 3), (rt, 2), (fm, 3), (ft, 2))
            )
        out.append(
            ViewDraw(
                st,
                flip_rgb,
                flip_flow,
                blur_rgb,
                blur_flow,
                sigma.astype(np.float32),
                rm,
                rt,
                fm,
                ft,
                col_rgb.jit,
                col_flow.jit,
                col_rgb.steps,
                col_flow.steps,
            )
        )
    return same, out


def released_crop_window(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    tries: int = 1,
) -> tuple[int, int, int, int]:
    """The released random-resized-crop window (top, left, h, w), as ViCC ``src/utils/augmentation.py``
    RandomSizedCrop runs under ``main_cross.py`` get_transform (``consistent=False, seq_len``, lines 99-138):
    ONE try (its ``for attempt in range(10)`` returns on the first pass in that branch): area uniform in
    ``scale`` x the frame, aspect w/h UNIFORM in ``ratio`` (3/4, 4/3), w and h swapped with p 0.5, a uniform
    position (randint, both ends included); a window that does not fit leaves the frame uncropped (the whole
    frame is then resized to the square: line 135 ``result.append(i)``; the Scale + CenterCrop fallback after
    the loop is never reached in that branch).

    ``tries`` = 10: the released classifier's crop (``main_classifier.py`` get_transform: RandomSizedCrop
    ``consistent=True``, lines 110-120 and 140-143): up to 10 such tries, else Scale (shorter side to the crop
    size) + CenterCrop, i.e. the central square of side min(height, width)."""
    for _ in range(tries):
        target = height * width * rng.uniform(scale[0], scale[1])
        aspect = rng.uniform(ratio[0], ratio[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if rng.random() < 0.5:
            w, h = h, w
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return top, left, h, w
    if tries == 1:
        return 0, 0, height, width
    side = min(height, width)
    return int(round((height - side) / 2)), int(round((width - side) / 2)), side, side


# data.augment.crop modes whose windows are drawn by released_crop_window, and their tries
HOST_CROPS = {CropMode.released: 1, CropMode.classifier: 10}


def draw_crop_window(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    mode: CropMode | str,
) -> tuple[int, int, int, int]:
    """A crop window by ``data.augment.crop``: released (:func:`released_crop_window`, one try) | classifier (its 10
    tries and central fallback) | torchvision (:func:`crop_window`)."""
    if mode in HOST_CROPS:
        return released_crop_window(rng, height, width, scale, ratio, HOST_CROPS[mode])
    return crop_window(rng, height, width, scale, ratio)


def crop_window(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """A random-resized-crop window (top, left, h, w) of an height x width frame, torchvision's rule: up to
    10 tries of area in ``scale`` x the frame and log-uniform aspect w/h in ``ratio``, else the central crop
    with the aspect clamped to ``ratio``."""
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w
