"""Built-in synthetic action data set: classes defined by motion only, written as real videos in the UCF101 layout.

``python -m data_prep.synthetic --out DIR`` writes::

    DIR/videos/<ClassName>/v_<ClassName>_gXX_c01.avi   (MPEG-4 part 2 in AVI, the "source" videos)
    DIR/splits/classInd.txt, trainlist01.txt, testlist01.txt
    DIR/gt_flow/<ClassName>/<stem>.npy                 (with --gt-flow: float16 [T, H, W, 2])
    DIR/synthetic.json                                 (settings; written last, marks a complete build)

Design (why the set looks as it does):

- A class is a *motion* of one object relative to the background (slide, spin, zoom, circle, swing, bounce,
  zig-zag, still, ...). Everything else is a nuisance drawn independently of the class: object shape, colour and
  texture, background texture and colour, and a slow camera pan of the whole frame. So a model that only looks at
  appearance is at chance, and motion (what optical flow shows directly) is what carries the label.
- Every class is invariant under horizontal flip (left/right and clockwise/anticlockwise are drawn at random
  inside one class), because the training augmentation flips clips.
- Everything is measured in units of the frame height: object radius 0.20-0.28 H, speeds ~1.2-2 %H per frame,
  textures at most 1.2 cycles per object radius / 5 cycles per frame height (<= 0.08 cycles/px at 64 px), with
  mostly-luminance contrast so that flow methods (which see grey levels) can track them. A prototype with small
  objects and fine textures lost the motion after resizing (a supervised RGB model could not learn it); large
  objects and low-frequency textures keep it visible at 64 px (`python -m vicc_fast.bench supervised`).
- Rendering is analytic and vectorised: the background is a sum of sinusoids in world coordinates (a camera pan
  is a per-frame phase shift, computed for all frames with one matrix product) and the object is a sprite
  rendered once and placed per frame by a similarity warp (cv2.warpAffine). The ground-truth flow follows from
  the same poses exactly: background pixels move by minus the pan step, object pixels by the object's
  similarity transform from frame t to t+1.
- Deterministic: video ``(class, split, index)`` is drawn from ``SeedSequence([seed, class, split, index])``, so
  the output does not depend on the number of workers or on the number of classes requested.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import io
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from vicc_fast.atomic import write_bytes, write_text
from vicc_fast.config import SyntheticConfig
from vicc_fast.owner import exit_with_owner

FORMAT_VERSION = 1
# Bump whenever the rendered pixels change (motions, appearance, codec settings): a folder built by another
# generator version is then rebuilt instead of being taken as complete.
GENERATOR_VERSION = 2
MARKER = "synthetic.json"
SPLIT_ID = 1
VIDEO_CODEC = "mpeg4"  # encodes odd widths (171) and decodes everywhere; H.264 would need even sizes
VIDEO_QSCALE = 2  # MPEG-4 quantiser: 2 is visually lossless at these sizes
MIN_SIZE = 16
MIN_FRAMES = 2


# ------------------------------------------------------------------------------------------------ poses
@dataclass(frozen=True)
class Pose:
    """Object pose per frame in world pixel coordinates (pixel centres at integers; the world frame equals the
    image at the middle frame, where the camera pan is zero).

    cx, cy: [T] centre; angle: [T] radians; scale: [T] (1 = base size).
    """

    cx: np.ndarray
    cy: np.ndarray
    angle: np.ndarray
    scale: np.ndarray


PoseFn = Callable[[np.random.Generator, np.ndarray, int, int], Pose]


def _speed_unit(height: int) -> float:
    """Pixels per frame of speed 1: speeds scale with the frame so small renders show the same motion."""
    return height / 100.0


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _start(rng: np.random.Generator, h: int, w: int) -> tuple[float, float, float]:
    """Centre near the middle of the frame and a random fixed orientation."""
    cx = (w - 1) / 2 + rng.uniform(-0.08, 0.08) * w
    cy = (h - 1) / 2 + rng.uniform(-0.08, 0.08) * h
    return cx, cy, rng.uniform(0, 2 * np.pi)


def _pose(tc: np.ndarray, cx, cy, angle, scale=1.0) -> Pose:
    full = lambda v: np.broadcast_to(np.asarray(v, dtype=np.float64), tc.shape).copy()
    return Pose(full(cx), full(cy), full(angle), full(scale))


def _slide_along(rng, tc, h, w, dx: float, dy: float) -> Pose:
    """Constant velocity along the unit direction (dx, dy); the path is centred on the frame and its length is
    capped at 0.65 of the frame extent along the direction so the object stays mostly visible."""
    cx, cy, a = _start(rng, h, w)
    span = max(float(tc[-1] - tc[0]), 1.0)
    extent = min(w / abs(dx) if dx else np.inf, h / abs(dy) if dy else np.inf)
    v = min(rng.uniform(1.2, 2.0) * _speed_unit(h), 0.65 * extent / span)
    return _pose(tc, cx + dx * v * tc, cy + dy * v * tc, a)


def slide_horizontal(rng, tc, h, w) -> Pose:
    return _slide_along(rng, tc, h, w, _sign(rng), 0.0)


def slide_vertical(rng, tc, h, w) -> Pose:
    return _slide_along(rng, tc, h, w, 0.0, _sign(rng))


def slide_diagonal(rng, tc, h, w) -> Pose:
    s = np.sqrt(0.5)
    return _slide_along(rng, tc, h, w, _sign(rng) * s, _sign(rng) * s)


def spin(rng, tc, h, w) -> Pose:
    cx, cy, a = _start(rng, h, w)
    omega = _sign(rng) * rng.uniform(0.07, 0.12)  # rad/frame: rim speed ~ omega * radius, scales with H
    return _pose(tc, cx, cy, a + omega * tc)


def _zoom_rate(rng, tc) -> float:
    half = max(float(tc[-1]), 1.0)
    return min(rng.uniform(0.018, 0.028), np.log(1.7) / half)  # scale stays within [1/1.7, 1.7]


def zoom_in(rng, tc, h, w) -> Pose:
    cx, cy, a = _start(rng, h, w)
    return _pose(tc, cx, cy, a, np.exp(_zoom_rate(rng, tc) * tc))


def zoom_out(rng, tc, h, w) -> Pose:
    cx, cy, a = _start(rng, h, w)
    return _pose(tc, cx, cy, a, np.exp(-_zoom_rate(rng, tc) * tc))


def circle_path(rng, tc, h, w) -> Pose:
    cx, cy, a = _start(rng, h, w)
    radius = rng.uniform(0.15, 0.22) * h
    omega = _sign(rng) * rng.uniform(0.12, 0.18)  # period 35-52 frames: a 32-frame clip sees most of a turn
    phi = rng.uniform(0, 2 * np.pi) + omega * tc
    return _pose(tc, cx + radius * np.cos(phi), cy + radius * np.sin(phi), a)


def _swing(rng, tc, h) -> np.ndarray:
    amp = rng.uniform(0.12, 0.20) * h
    period = rng.uniform(16, 24)
    return amp * np.sin(2 * np.pi * tc / period + rng.uniform(0, 2 * np.pi))


def swing_horizontal(rng, tc, h, w) -> Pose:
    cx, cy, a = _start(rng, h, w)
    return _pose(tc, cx + _swing(rng, tc, h), cy, a)


def swing_vertical(rng, tc, h, w) -> Pose:
    cx, cy, a = _start(rng, h, w)
    return _pose(tc, cx, cy + _swing(rng, tc, h), a)


def bounce(rng, tc, h, w) -> Pose:
    """Ball bouncing on a floor: y = floor - A |sin|, i.e. parabola-like arcs with a sharp reversal at the floor
    (image y points down, so gravity accelerates +y)."""
    cx, cy, a = _start(rng, h, w)
    amp = rng.uniform(0.25, 0.35) * h
    half_period = rng.uniform(14, 22)
    height = amp * np.abs(np.sin(np.pi * tc / half_period + rng.uniform(0, np.pi)))
    return _pose(tc, cx, cy + amp / 2 - height, a)


def zig_zag(rng, tc, h, w) -> Pose:
    base = _slide_along(rng, tc, h, w, _sign(rng), 0.0)
    amp = rng.uniform(0.12, 0.18) * h
    period = rng.uniform(14, 22)
    phase = tc / period + rng.random()
    tri = 4 * np.abs(phase - np.floor(phase + 0.5)) - 1  # triangle wave in [-1, 1]
    return Pose(base.cx, base.cy + amp * tri, base.angle, base.scale)


def still(rng, tc, h, w) -> Pose:
    cx, cy, a = _start(rng, h, w)
    return _pose(tc, cx, cy, a)


def pulse(rng, tc, h, w) -> Pose:
    cx, cy, a = _start(rng, h, w)
    amp = rng.uniform(0.2, 0.3)
    period = rng.uniform(16, 24)
    return _pose(tc, cx, cy, a, np.exp(amp * np.sin(2 * np.pi * tc / period + rng.uniform(0, 2 * np.pi))))


@dataclass(frozen=True)
class MotionClass:
    name: str
    description: str
    pose: PoseFn


# Order matters: the first `num_classes` are used (default 10); label = position here.
CLASSES: tuple[MotionClass, ...] = (
    MotionClass("SlideHorizontal", "constant-velocity translation, left or right", slide_horizontal),
    MotionClass("SlideVertical", "constant-velocity translation, up or down", slide_vertical),
    MotionClass("Spin", "rotation in place, either sense", spin),
    MotionClass("ZoomIn", "object grows (approaches)", zoom_in),
    MotionClass("ZoomOut", "object shrinks (recedes)", zoom_out),
    MotionClass("CirclePath", "translation along a circle, either sense", circle_path),
    MotionClass("SwingHorizontal", "sinusoidal back-and-forth along x", swing_horizontal),
    MotionClass("Bounce", "bouncing on a floor: arcs with a sharp reversal at the bottom", bounce),
    MotionClass("ZigZag", "horizontal travel with a triangle wave in y", zig_zag),
    MotionClass("Still", "object fixed in the scene (only the camera pan moves it)", still),
    MotionClass("SwingVertical", "sinusoidal up-and-down along y", swing_vertical),
    MotionClass("SlideDiagonal", "constant-velocity translation along a diagonal", slide_diagonal),
    MotionClass("Pulse", "size oscillates in place", pulse),
)


# -------------------------------------------------------------------------------------------- appearance
def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One colour, all components in [0, 1]."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


def _texture_colours(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """[n, 3] colour offsets of a texture: mostly luminance of magnitude in [lo, hi] (grey-level gradients are
    what flow methods track), plus a smaller random chroma part."""
    lum = rng.uniform(lo, hi, size=(n, 1)) * np.where(rng.random((n, 1)) < 0.5, -1.0, 1.0)
    chroma = rng.normal(size=(n, 3)) * 0.3 * np.abs(lum)
    return (lum + chroma).astype(np.float32)


@dataclass(frozen=True)
class Waves:
    """Plane waves grouped into colour channels: field_g(p) = sum_j amp_j sin(2 pi k_j . p + phase_j) / sum amp.

    k: [J, 2] cycles per pixel (x, y); phase, amp: [J]; group: [J] channel index; colours: [G, 3].
    """

    k: np.ndarray
    phase: np.ndarray
    amp: np.ndarray
    group: np.ndarray
    colours: np.ndarray


def _waves(rng, n_per_group: int, groups: int, f_lo: float, f_hi: float, unit: float, c_lo, c_hi) -> Waves:
    j = n_per_group * groups
    freq = rng.uniform(f_lo, f_hi, size=j) / unit  # cycles per pixel
    theta = rng.uniform(0, np.pi, size=j)
    return Waves(
        k=np.stack([freq * np.cos(theta), freq * np.sin(theta)], axis=1),
        phase=rng.uniform(0, 2 * np.pi, size=j),
        amp=rng.uniform(0.5, 1.0, size=j),
        group=np.repeat(np.arange(groups), n_per_group),
        colours=_texture_colours(rng, groups, c_lo, c_hi),
    )


@dataclass(frozen=True)
class Appearance:
    """The class-independent nuisance of one video."""

    bg_base: np.ndarray  # [3]
    bg_waves: Waves
    obj_base: np.ndarray  # [3]
    obj_waves: Waves  # in object units (pixels at scale 1)
    radius: float  # base radius in pixels
    shape_kind: int  # 0 blob, 1 polygon, 2 ellipse
    shape_params: np.ndarray
    pan_velocity: np.ndarray  # [2] px/frame of the camera (the scene moves by minus this)


def _draw_appearance(rng: np.random.Generator, h: int) -> Appearance:
    bg = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.25, 0.75))
    obj = bg
    for _ in range(50):  # the object must stand out from the background colour
        obj = _hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0))
        if np.linalg.norm(obj - bg) >= 0.35:
            break
    radius = rng.uniform(0.20, 0.28) * h
    kind = int(rng.integers(3))
    if kind == 0:  # blob: radius(phi) = 1 + sum_m b_m cos(m phi + psi_m), m = 1..3
        params = np.concatenate([rng.uniform(0.04, 0.12, 3), rng.uniform(0, 2 * np.pi, 3)])
    elif kind == 1:  # regular polygon, 3..6 sides
        params = np.array([rng.integers(3, 7), rng.uniform(0, 2 * np.pi)], dtype=np.float64)
    else:  # ellipse with aspect 0.55..0.85
        params = np.array([rng.uniform(0.55, 0.85)])
    pan_speed = rng.uniform(0.0, 0.6) * _speed_unit(h)  # below the slowest object motion
    pan_dir = rng.uniform(0, 2 * np.pi)
    return Appearance(
        bg_base=bg,
        bg_waves=_waves(rng, 3, 2, 1.5, 5.0, h, 0.10, 0.22),  # 1.5-5 cycles per frame height
        obj_base=obj,
        obj_waves=_waves(rng, 2, 2, 0.4, 1.2, radius, 0.12, 0.25),  # 0.4-1.2 cycles per object radius
        radius=radius,
        shape_kind=kind,
        shape_params=params,
        pan_velocity=np.array([pan_speed * np.cos(pan_dir), pan_speed * np.sin(pan_dir)]),
    )


def _shape_radius(kind: int, params: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, float]:
    """Boundary radius (in units of the base radius) per polar angle phi, and its maximum."""
    if kind == 0:
        b, psi = params[:3], params[3:]
        r = 1 + sum(b[m] * np.cos((m + 1) * phi + psi[m]) for m in range(3))
        return r, 1 + float(b.sum())
    if kind == 1:
        n, rot = int(params[0]), params[1]
        sector = 2 * np.pi / n
        local = np.mod(phi - rot, sector) - sector / 2
        return np.cos(np.pi / n) / np.cos(local), 1.0
    aspect = params[0]
    return 1 / np.sqrt(np.cos(phi) ** 2 + (np.sin(phi) / aspect) ** 2), 1.0


def _render_sprite(app: Appearance, ss: float) -> tuple[np.ndarray, float]:
    """Premultiplied RGBA sprite [S, S, 4] float32 at `ss` sprite pixels per object pixel, and its centre."""
    _, rmax = _shape_radius(app.shape_kind, app.shape_params, np.zeros(1))
    half = int(np.ceil(app.radius * rmax * ss)) + 3
    grid = (np.arange(2 * half + 1, dtype=np.float64) - half) / ss  # object units
    uy, ux = np.meshgrid(grid, grid, indexing="ij")
    rho, phi = np.hypot(ux, uy), np.arctan2(uy, ux)
    r, _ = _shape_radius(app.shape_kind, app.shape_params, phi)
    alpha = np.clip(0.5 - (rho - r * app.radius) * ss, 0.0, 1.0)  # one sprite pixel of anti-aliased edge
    w = app.obj_waves
    colour = np.broadcast_to(app.obj_base, (*ux.shape, 3)).astype(np.float64)
    for g in range(len(w.colours)):
        sel = w.group == g
        field = np.zeros_like(ux)
        for k, ph, a in zip(w.k[sel], w.phase[sel], w.amp[sel]):
            field += a * np.sin(2 * np.pi * (k[0] * ux + k[1] * uy) + ph)
        colour = colour + (field / w.amp[sel].sum())[..., None] * w.colours[g]
    colour = np.clip(colour, 0.0, 1.0)
    sprite = np.concatenate([colour * alpha[..., None], alpha[..., None]], axis=-1).astype(np.float32)
    return sprite, float(half)


def _render_background(app: Appearance, pan: np.ndarray, h: int, w: int) -> np.ndarray:
    """Background seen through the panned camera: [T, H, W, 3] float32.

    The scene point at world p shows at pixel x = p - pan(t), so pixel x shows texture(x + pan(t)); for plane
    waves that is a per-frame phase shift: sin(P + b_t) = sin P cos b_t + cos P sin b_t, one matrix product.
    """
    wv = app.bg_waves
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    base_phase = (
        2 * np.pi * (wv.k[:, 0, None, None] * xs + wv.k[:, 1, None, None] * ys) + wv.phase[:, None, None]
    )
    maps = np.concatenate([np.sin(base_phase), np.cos(base_phase)]).reshape(2 * len(wv.k), h * w)  # [2J, HW]
    shift = 2 * np.pi * (pan @ wv.k.T)  # [T, J]
    norm = np.array([wv.amp[wv.group == g].sum() for g in range(len(wv.colours))])
    amp_col = (wv.amp / norm[wv.group])[:, None] * wv.colours[wv.group]  # [J, 3]
    coef = np.concatenate(
        [np.cos(shift)[..., None] * amp_col, np.sin(shift)[..., None] * amp_col], axis=1
    )  # [T, 2J, 3]
    t = len(pan)
    # one 2-D GEMM [HW, 2J] @ [2J, T*3] (a broadcast batched matmul with these tiny inner sizes is ~50x slower)
    flat = np.ascontiguousarray(maps.T, dtype=np.float32) @ coef.transpose(1, 0, 2).reshape(-1, t * 3).astype(
        np.float32
    )
    out = np.ascontiguousarray(flat.reshape(h * w, t, 3).transpose(1, 0, 2))  # [T, HW, 3]
    out += app.bg_base
    return out.reshape(t, h, w, 3)


@dataclass(frozen=True)
class RenderedVideo:
    frames: np.ndarray  # [T, H, W, 3] uint8 RGB
    flow: np.ndarray | None  # [T, H, W, 2] float32, frame t -> t+1 in pixels (x right, y down), last repeated


def render_video(
    class_index: int,
    seed: np.random.SeedSequence | int,
    *,
    frames: int,
    height: int,
    width: int,
    flow: bool = False,
) -> RenderedVideo:
    """Render one video of motion class `class_index` (and its ground-truth flow when `flow`)."""
    if not 0 <= class_index < len(CLASSES):
        raise ValueError(f"class_index {class_index} outside [0, {len(CLASSES)})")
    if frames < MIN_FRAMES or height < MIN_SIZE or width < MIN_SIZE:
        raise ValueError(f"need frames >= {MIN_FRAMES} and height, width >= {MIN_SIZE}")
    rng = np.random.default_rng(seed)
    app = _draw_appearance(rng, height)
    tc = np.arange(frames, dtype=np.float64) - (frames - 1) / 2
    pose = CLASSES[class_index].pose(rng, tc, height, width)
    pan = tc[:, None] * app.pan_velocity  # camera offset per frame [T, 2]

    rgb = _render_background(app, pan, height, width)
    ss = max(1.0, float(pose.scale.max()))  # sprite resolution: the warp only ever shrinks it
    sprite, centre = _render_sprite(app, ss)
    icx, icy = pose.cx - pan[:, 0], pose.cy - pan[:, 1]  # object centre in the image
    placed = np.empty((frames, height, width, 4), dtype=np.float32)
    for t in range(frames):
        c, s = np.cos(pose.angle[t]), np.sin(pose.angle[t])
        a = np.array([[c, s], [-s, c]]) * (ss / pose.scale[t])  # image offset -> sprite offset
        m = np.concatenate(
            [a, (np.array([centre, centre]) - a @ np.array([icx[t], icy[t]]))[:, None]], axis=1
        )
        cv2.warpAffine(
            sprite,
            m,
            (width, height),
            dst=placed[t],
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
    alphas = placed[..., 3]
    rgb *= 1 - placed[..., 3:]
    rgb += placed[..., :3]
    rgb *= 255
    rgb += 0.5  # truncation below then rounds
    out = np.clip(rgb, 0, 255, out=rgb).astype(np.uint8)

    gt = None
    if flow:
        gt = np.empty((frames, height, width, 2), dtype=np.float32)
        gt[..., 0], gt[..., 1] = -app.pan_velocity
        # object pixel x at t goes to c_{t+1} + (s_{t+1}/s_t) Rot(angle_{t+1} - angle_t) (x - c_t)
        d = np.diff(pose.angle)[:, None, None]
        k = (pose.scale[1:] / pose.scale[:-1])[:, None, None]
        cos, sin = np.cos(d) * k, np.sin(d) * k
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        dx = xs - icx[:-1, None, None].astype(np.float32)
        dy = ys - icy[:-1, None, None].astype(np.float32)
        fx = icx[1:, None, None] + cos * dx - sin * dy - xs
        fy = icy[1:, None, None] + sin * dx + cos * dy - ys
        on = alphas[:-1] >= 0.5
        gt[:-1, ..., 0] = np.where(on, fx, gt[:-1, ..., 0])
        gt[:-1, ..., 1] = np.where(on, fy, gt[:-1, ..., 1])
        gt[-1] = gt[-2]
    return RenderedVideo(out, gt)


# ------------------------------------------------------------------------------------------------ output
def encode_avi(frames: np.ndarray, fps: int) -> bytes:
    """MPEG-4 part 2 in AVI at quantiser VIDEO_QSCALE; one encoder thread so the bytes are reproducible."""
    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as container:
        stream = container.add_stream(
            VIDEO_CODEC, rate=fps, options={"flags": "qscale", "global_quality": str(VIDEO_QSCALE * 118)}
        )
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = 1
        for i in range(t):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frames[i], format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_video(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video file as [T, H, W, 3] uint8 RGB (PyAV); a clear error names an unreadable file."""
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"cannot decode video {path}: {exc}") from None
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return np.stack(frames)


@dataclass(frozen=True)
class VideoEntry:
    class_index: int
    class_name: str
    split: str  # "train" | "test"
    index: int  # position within (class, split)
    group: int  # UCF101-style gXX

    @property
    def stem(self) -> str:
        return f"v_{self.class_name}_g{self.group:02d}_c01"

    @property
    def relpath(self) -> str:
        return f"{self.class_name}/{self.stem}.avi"


SPLITS = ("train", "test")


def video_seed(seed: int, entry: VideoEntry) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, entry.class_index, SPLITS.index(entry.split), entry.index])


def list_videos(cfg: SyntheticConfig) -> list[VideoEntry]:
    """Every video of the set. Like UCF101 split 1, the test set takes the lowest group numbers."""
    out = []
    for ci in range(cfg.num_classes):
        name = CLASSES[ci].name
        out += [VideoEntry(ci, name, "test", i, i + 1) for i in range(cfg.test_per_class)]
        out += [
            VideoEntry(ci, name, "train", i, cfg.test_per_class + i + 1) for i in range(cfg.train_per_class)
        ]
    return out


def validate(cfg: SyntheticConfig) -> None:
    checks = [
        (1 <= cfg.num_classes <= len(CLASSES), "num_classes", f"must be in [1, {len(CLASSES)}]"),
        (cfg.train_per_class >= 1, "train_per_class", "must be >= 1"),
        (cfg.test_per_class >= 1, "test_per_class", "must be >= 1"),
        (cfg.frames >= MIN_FRAMES, "frames", f"must be >= {MIN_FRAMES}"),
        (cfg.height >= MIN_SIZE, "height", f"must be >= {MIN_SIZE}"),
        (cfg.width >= MIN_SIZE, "width", f"must be >= {MIN_SIZE}"),
        (cfg.fps >= 1, "fps", "must be >= 1"),
    ]
    for ok, key, why in checks:
        if not ok:
            raise ValueError(f"synthetic {key}={getattr(cfg, key)}: {why}")


def _settings(cfg: SyntheticConfig, gt_flow: bool) -> dict:
    keys = ("num_classes", "train_per_class", "test_per_class", "frames", "fps", "height", "width", "seed")
    return {
        "format_version": FORMAT_VERSION,
        "generator_version": GENERATOR_VERSION,
        **{k: getattr(cfg, k) for k in keys},
        "gt_flow": gt_flow,
        "codec": VIDEO_CODEC,
    }


@dataclass(frozen=True)
class _Job:
    entry: VideoEntry
    out_dir: str
    seed: int
    frames: int
    height: int
    width: int
    fps: int
    gt_flow: bool


def _make_video(job: _Job) -> str:
    e = job.entry
    path = Path(job.out_dir) / "videos" / e.relpath
    try:
        video = render_video(
            e.class_index,
            video_seed(job.seed, e),
            frames=job.frames,
            height=job.height,
            width=job.width,
            flow=job.gt_flow,
        )
        write_bytes(path, encode_avi(video.frames, job.fps))
        if video.flow is not None:
            buf = io.BytesIO()
            np.save(buf, video.flow.astype(np.float16))
            write_bytes(Path(job.out_dir) / "gt_flow" / e.class_name / f"{e.stem}.npy", buf.getvalue())
    except Exception as exc:
        raise RuntimeError(f"synthetic video {path}: {type(exc).__name__}: {exc}") from exc
    return str(path)


def _worker_init(owner: int) -> None:
    exit_with_owner(owner)  # a SIGKILLed caller would leave its pool waiting on the task queue for ever
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own pool would oversubscribe


def _write_splits(out: Path, cfg: SyntheticConfig, videos: list[VideoEntry]) -> None:
    names = [CLASSES[i].name for i in range(cfg.num_classes)]
    write_text(out / "splits" / "classInd.txt", "".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    order = lambda v: (v.class_index, v.group)
    train = sorted((v for v in videos if v.split == "train"), key=order)
    test = sorted((v for v in videos if v.split == "test"), key=order)
    write_text(
        out / "splits" / f"trainlist{SPLIT_ID:02d}.txt",
        "".join(f"{v.relpath} {v.class_index + 1}\n" for v in train),
    )
    write_text(out / "splits" / f"testlist{SPLIT_ID:02d}.txt", "".join(f"{v.relpath}\n" for v in test))


def generate(
    out_dir: str | os.PathLike,
    cfg: SyntheticConfig | None = None,
    *,
    gt_flow: bool = False,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic set into `out_dir` (layout in the module docstring) and return `out_dir`.

    A folder that already holds a complete set with the same settings is left as it is (fast no-op). A folder
    holding a set with other settings is an error unless `overwrite`, which first removes the previous
    videos/, splits/ and gt_flow/ (nothing else in the folder is touched).
    """
    cfg = cfg or SyntheticConfig()
    validate(cfg)
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"synthetic output {out} exists and is not a folder")
    settings = _settings(cfg, gt_flow)
    marker = out / MARKER
    if marker.exists():
        try:
            previous = json.loads(marker.read_text()).get("settings")
        except (OSError, ValueError):
            previous = None
        if previous == settings:
            return out
        if not overwrite:
            raise ValueError(
                f"{out} already holds a synthetic set built with other settings ({previous}); "
                "choose another output folder or pass overwrite (--overwrite)"
            )
    if overwrite:
        marker.unlink(missing_ok=True)
        for sub in ("videos", "splits", "gt_flow"):
            shutil.rmtree(out / sub, ignore_errors=True)

    videos = list_videos(cfg)
    jobs = [_Job(v, str(out), cfg.seed, cfg.frames, cfg.height, cfg.width, cfg.fps, gt_flow) for v in videos]
    bar = tqdm(total=len(jobs), desc="synthetic videos", unit="video", disable=not progress)
    t0 = time.perf_counter()
    if workers == 1:
        for job in jobs:
            _make_video(job)
            bar.update()
    else:
        # spawn, not fork: callers (benchmarks, tests) may have torch/OpenCV thread pools running
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),)
        ) as pool:
            for _ in pool.map(_make_video, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
                bar.update()
    bar.close()
    _write_splits(out, cfg, videos)
    info = {
        "settings": settings,
        "classes": [{"name": c.name, "motion": c.description} for c in CLASSES[: cfg.num_classes]],
        "num_videos": {s: sum(v.split == s for v in videos) for s in SPLITS},
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    write_text(marker, json.dumps(info, indent=2))
    return out


# -------------------------------------------------------------------------------------------------- CLI
KINETICS_HEADER = "label,youtube_id,time_start,time_end,split,is_cc"
BROKEN_DOWNLOAD = b"<!DOCTYPE html><html><body>Video unavailable</body></html>\n"
"""What a failed download often leaves under a video's name: an error page, not a video."""


def _kinetics_label(name: str) -> str:
    """CamelCase class name -> a Kinetics-style label ("SlideHorizontal" -> "slide horizontal")."""
    return "".join(f" {c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


def _youtube_id(entry: VideoEntry, seed: int) -> str:
    """11 characters of YouTube's alphabet (with '-' and '_', which file-name parsing must survive)."""
    import base64
    import hashlib

    digest = hashlib.sha1(f"{seed}/{entry.split}/{entry.class_name}/{entry.group}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:11]


def generate_kinetics(
    out_dir: str | os.PathLike,
    cfg: SyntheticConfig | None = None,
    *,
    per_class: bool = True,
    missing: int = 0,
    broken: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """The synthetic set in the Kinetics layout, for tests and the cluster demo; returns out_dir.

    ``annotations/train.csv`` and ``validate.csv`` (the official header) list every video; the clips are
    ``{train,val}/<label>/{youtube_id}_{start:06d}_{end:06d}.avi`` (``per_class=False``: flat in train/ and
    val/), hard links to the UCF101-layout set generated in ``out_dir/.synthetic``. Like a real Kinetics
    download, the last ``missing`` train rows have no file and the ``broken`` before them hold an error page.
    """
    cfg = cfg or SyntheticConfig()
    out = Path(out_dir)
    src = generate(out / ".synthetic", cfg, workers=workers, progress=progress, overwrite=True)
    entries = sorted(list_videos(cfg), key=lambda e: (e.split, e.class_index, e.group))
    train = [e for e in entries if e.split == "train"]
    if missing + broken > len(train) - 1:
        raise ValueError(
            f"missing + broken = {missing + broken}: must leave at least one of {len(train)} train videos"
        )
    absent = {id(e) for e in train[len(train) - missing :]} if missing else set()
    bad = {id(e) for e in train[len(train) - missing - broken : len(train) - missing]} if broken else set()
    for d in ("train", "val", "annotations"):
        if (out / d).exists():
            shutil.rmtree(out / d)  # the layout belongs to this set: other settings replace it
    rows: dict[str, list[str]] = {"train": [], "validate": []}
    for e in entries:
        label = _kinetics_label(e.class_name)
        start = (7 * e.group + 3 * e.class_index) % 290
        yid = _youtube_id(e, cfg.seed)
        split = "train" if e.split == "train" else "validate"
        rows[split].append(f'"{label}",{yid},{start},{start + 10},{split},0')
        if id(e) in absent:
            continue
        folder = out / ("train" if e.split == "train" else "val") / (label if per_class else "")
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"{yid}_{start:06d}_{start + 10:06d}.avi"
        if id(e) in bad:
            write_bytes(dest, BROKEN_DOWNLOAD)
        else:
            os.link(src / "videos" / e.relpath, dest)
    for split, lines in rows.items():
        write_text(out / "annotations" / f"{split}.csv", "\n".join([KINETICS_HEADER, *sorted(lines)]) + "\n")
    return out


def _help(name: str) -> str:
    f = {f.name: f for f in dataclasses.fields(SyntheticConfig)}[name]
    return f"{f.metadata['help']} (default: {f.default})"


def main(argv: list[str] | None = None) -> int:
    classes = ", ".join(c.name for c in CLASSES)
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.synthetic",
        description="Write the motion-defined synthetic action set as real videos in the UCF101 layout "
        "(videos/<Class>/v_<Class>_gXX_c01.avi, splits/classInd.txt, trainlist01.txt, testlist01.txt). "
        f"Classes, in label order: {classes}.",
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    for flag, name in [
        ("--classes", "num_classes"),
        ("--train-per-class", "train_per_class"),
        ("--test-per-class", "test_per_class"),
        ("--frames", "frames"),
        ("--height", "height"),
        ("--width", "width"),
        ("--fps", "fps"),
        ("--seed", "seed"),
    ]:
        default = getattr(SyntheticConfig(), name)
        parser.add_argument(flag, dest=name, type=int, default=default, help=_help(name))
    parser.add_argument(
        "--gt-flow",
        action="store_true",
        help="also write the ground-truth optical flow per video to gt_flow/<Class>/<stem>.npy "
        "(float16 [T, H, W, 2], frame i -> i+1 in pixels, x right / y down, last frame repeated; ~4 MB per "
        "default video)",
    )
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="parallel processes (default: all cores)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a set built in --out with other settings"
    )
    parser.add_argument(
        "--kinetics",
        action="store_true",
        help="write the Kinetics layout instead (annotations/{train,validate}.csv, "
        "{train,val}/<label>/<youtube_id>_<start>_<end>.avi; see generate_kinetics)",
    )
    parser.add_argument("--flat", action="store_true", help="with --kinetics: no per-class folders")
    parser.add_argument(
        "--missing", type=int, default=0, help="with --kinetics: train rows whose clip was never downloaded"
    )
    parser.add_argument(
        "--broken",
        type=int,
        default=0,
        help="with --kinetics: train clips that are an error page, not a video",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    keys = ("num_classes", "train_per_class", "test_per_class", "frames", "height", "width", "fps", "seed")
    cfg = SyntheticConfig(**{k: getattr(args, k) for k in keys})
    t0 = time.perf_counter()
    try:
        if args.kinetics:
            out = generate_kinetics(
                args.out,
                cfg,
                per_class=not args.flat,
                missing=args.missing,
                broken=args.broken,
                workers=args.workers,
                progress=not args.quiet,
            )
            print(f"{out}: {cfg.num_classes} classes in the Kinetics layout")
            return 0
        out = generate(
            args.out,
            cfg,
            gt_flow=args.gt_flow,
            workers=args.workers,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = cfg.num_classes * (cfg.train_per_class + cfg.test_per_class)
    print(f"{out}: {n} videos ({cfg.num_classes} classes) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
