"""NVIDIA DALI pipelines: WebDataset shards -> decoded, frame-consistently augmented, aligned RGB/flow views.

The graph is built from the module-level steps below (sampling, decoding, crop and flip, the photometric steps,
the flow image, the normalisation), put together by :func:`train_graph` and :func:`eval_graph`. One graph
serves the CPU (``device_id=None``) and the GPU: there frames are decoded by DALI's CPU decoder and copied over
after the temporal gather (``data.decoder=cpu``; vicc_fast/data/README.md has the measurement) or by NVDEC.
Everything random about a view except a torchvision-style crop window is drawn on the host
(vicc_fast/data/augment.py through :class:`ViewSource`), so RGB view i and flow view i can share one draw as
the released code's [rgb_i, flow_i] sequence does, and the DataLoader baseline draws the same. Outputs are
per-sample ``FHWC``: PyTorch sees ``[B, T, H, W, C]`` and a permute gives ``[B, C, T, H, W]`` in
``channels_last_3d`` without a copy. FIDELITY.md says which released choice each step reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vicc_fast.config import (
    AugmentConfig,
    ColorJitterMode,
    DataConfig,
    EvalWindows,
    FlowLayout,
    ShortVideos,
    Stream,
)
from vicc_fast.data.augment import (
    FLOW_CONST,
    FLOW_X,
    FLOW_Y,
    HOST_CROPS,
    LUMA,
    RGB_MEAN,
    RGB_STD,
    flow_norm,
    per_frame_maps,
)
from vicc_fast.data.windows import overlap_count, overlap_step

MAX_LUT_KEYS = 65536  # fn.lookup_table keys live in [0, 65535]
# (x, y) -> (const, y, x): the released flow image's channels from the stored x and y planes (data.flow_layout)
FLOW_LAYOUT_M = [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]


@dataclass(frozen=True)
class PipeSpec:
    """What a pipeline graph reads: the config's ``data`` section (read, never changed) and the values the
    loader derives for this pipeline. No setting has a default or a copy here."""

    data: DataConfig
    train: bool
    streams: tuple[Stream, ...]
    num_views: int
    height: int  # stored video size (crop/resize decisions at graph build time)
    width: int
    half: bool  # float16 output (else float32)
    nvdec: bool  # decode with NVDEC ("mixed"); else DALI's CPU decoder (then .gpu() on a GPU pipeline)
    tencrop: bool

    @property
    def aug(self) -> AugmentConfig:
        return self.data.augment

    @property
    def span(self) -> int:
        return (self.data.num_frames - 1) * self.data.stride + 1

    @property
    def eval_jitter_prob(self) -> float:
        """The released test-time jitter's probability (eval mode only)."""
        return 0.0 if self.train else self.data.eval.color_jitter_prob

    def output_names(self) -> list[str]:
        names = [f"{s.value}{v}" for s in self.streams for v in range(self.num_views if self.train else 1)]
        return [*names, "label", "index"]


class ViewSource:
    """``fn.external_source`` callable: per batch, the host-side draws of :func:`augment.draw_views`, seeded
    like the pipeline. Outputs (batch-major): ``same`` [B] int32 (with two or more views), then per view the fields of
    :meth:`view_keys` in order: ``flip_<stream>`` [B] int32, ``<stream>_m`` [B, 3, 3], ``<stream>_t`` [B, 3]
    (colour maps with the normalisation folded in), ``blur_<stream>`` [B] bool, ``sigma`` [B] float32."""

    def __init__(self, spec: PipeSpec, batch_size: int, seed: int) -> None:
        self.spec, self.batch_size = spec, batch_size
        self.rng = np.random.default_rng([seed, 0xC0105])
        self.keys = self.view_keys(spec)

    def _windows(self) -> dict[str, np.ndarray]:
        """One view's released crop windows (augment.released_crop_window): ``win_<stream>`` [B, 4] float32
        (top, left, h, w); one window for both streams with ``align_streams``."""
        from vicc_fast.data.augment import draw_crop_window

        sp, out = self.spec, {}
        for s in sp.streams:
            if sp.aug.align_streams and out:
                out[f"win_{s.value}"] = next(iter(out.values()))
                continue
            w = [
                draw_crop_window(
                    self.rng, sp.height, sp.width, sp.aug.crop_scale, sp.aug.aspect_ratio, sp.aug.crop
                )
                for _ in range(self.batch_size)
            ]
            out[f"win_{s.value}"] = np.asarray(w, np.float32)
        return out

    @staticmethod
    def view_keys(spec: PipeSpec) -> list[str]:
        """The per-view outputs the graph of ``spec`` reads (DALI warns about unused ones)."""
        keys = []
        for s in spec.streams:
            keys += [f"flip_{s.value}", f"{s.value}_m", f"{s.value}_t"]
            a = spec.aug
            if a.crop in HOST_CROPS:
                keys.append(f"win_{s.value}")
            photometric = s == Stream.rgb or a.flow_photometric
            if a.color_jitter is ColorJitterMode.released and a.color_jitter_prob > 0 and photometric:
                keys += [f"jit_{s.value}", *(f"{s.value}_j{f}" for f in STEP_FIELDS)]
            if a.blur_prob > 0 and photometric:
                keys.append(f"blur_{s.value}")
        if any(k.startswith("blur_") for k in keys):
            keys.append("sigma")
        return keys

    def __call__(self) -> list[np.ndarray]:
        from vicc_fast.data.augment import draw_views

        same, views = draw_views(self.rng, self.batch_size, self.spec.num_views, self.spec.data)
        out = [same.astype(np.int32)] if self.spec.num_views > 1 else []
        for d in views:
            wins = self._windows() if self.spec.aug.crop in HOST_CROPS else {}
            for k in self.keys:
                if k in wins:
                    out.append(wins[k])
                    continue
                stream, _, field = k.partition("_j")
                if field in STEP_FIELDS:  # <stream>_j<field>: a field of the view's JitterSteps
                    out.append(getattr(getattr(d, f"{stream}_steps"), field))
                    continue
                a = getattr(d, k)
                out.append(a.astype(np.int32) if k.startswith("flip_") else a)
        return out


# the JitterSteps fields an external source hands the graph, in this order
STEP_FIELDS = ("kind", "b", "c", "m")


class EvalJitterSource:
    """``fn.external_source`` callable of the eval graph: per batch, for every stream and crop (in that order),
    the released test-time jitter draw of each video (augment.draw_eval_jitter): ``jit`` [B] bool, then the
    :data:`STEP_FIELDS` of its JitterSteps. Seeded like the pipeline, so an eval run reads the same draws."""

    def __init__(self, spec: PipeSpec, batch_size: int, crops: int, seed: int) -> None:
        self.spec, self.batch_size, self.crops = spec, batch_size, crops
        self.rng = np.random.default_rng([seed, 0xE7A1])

    def num_outputs(self) -> int:
        return (1 + len(STEP_FIELDS)) * len(self.spec.streams) * self.crops

    def __call__(self) -> list[np.ndarray]:
        from vicc_fast.data.augment import draw_eval_jitter

        out = []
        for _ in range(len(self.spec.streams) * self.crops):
            jit, steps = draw_eval_jitter(
                self.rng, self.batch_size, self.spec.eval_jitter_prob, self.spec.data.eval.color_jitter
            )
            out += [jit, *(getattr(steps, f) for f in STEP_FIELDS)]
        return out


def _centre(x):
    """[F, H, W, 3] -> [F] float: each frame's mean luma, rounded (PIL's contrast centre)."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    mean = fn.reductions.mean(x, axis_names="HW", dtype=types.FLOAT)  # [F, 3] (uint8 in: not truncated)
    return dmath.floor(mean[:, 0] * LUMA[0] + mean[:, 1] * LUMA[1] + mean[:, 2] * LUMA[2] + 0.5)


def jitter_steps(x, kind, b, c, m, arithmetic: bool | None = None):
    """The released colour jitter's steps (augment.JitterSteps) in a DALI graph, on the samples of an ``if``
    branch: x [F, H, W, 3] uint8; per sample kind [4], b [4], c [4], m [3, 3]. Brightness / contrast steps are
    ``fn.brightness_contrast`` about each frame's mean luma (a per-frame argument: one cheap pass; on a GPU,
    where argument inputs must live on the host, the same formula in arithmetic ops), the colour matrix one
    ``fn.coord_transform``; every step writes uint8 (rounded, saturated: PIL's 8-bit frames).
    ``arithmetic``: the GPU formula (default: on GPU data), selectable so the CPU tests run it too.
    augment.jitter_steps_np is the reference."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    gpu = x.device == "gpu"
    arithmetic = gpu if arithmetic is None else arithmetic
    for k in range(4):
        kk = kind[k]
        if kk == 0:  # STEP_BC
            centre = _centre(x)
            if arithmetic:
                bk, ck = (b[k].gpu(), c[k].gpu()) if gpu else (b[k], c[k])
                ctr = fn.reshape(centre, shape=[-1, 1, 1, 1])
                y = bk * (ctr + ck * (fn.cast(x, dtype=types.FLOAT) - ctr))
                x = fn.cast(dmath.clamp(y, 0.0, 255.0), dtype=types.UINT8)  # cast rounds to nearest
            else:
                x = fn.brightness_contrast(
                    x, brightness=b[k], contrast=c[k], contrast_center=fn.per_frame(centre)
                )
        elif kk == 1:  # STEP_MATRIX
            x = fn.coord_transform(x, M=m, dtype=types.UINT8)
    return x


def eval_resize(crop: int, fraction: float) -> int:
    """Shorter side the eval frames are resized to, so that a ``crop`` x ``crop`` crop spans ``fraction`` of
    it (released ten-crop: 224 of 240 pixels -> 128 crops of 137-pixel frames)."""
    return max(crop, int(round(crop / fraction)))


def frames_lut_args(frames: np.ndarray) -> dict:
    """``fn.lookup_table`` arguments mapping sample index -> frame count."""
    if len(frames) > MAX_LUT_KEYS:
        raise ValueError(f"split has {len(frames)} samples; the DALI frame-count table holds {MAX_LUT_KEYS}")
    return {"keys": list(range(len(frames))), "values": [float(f) for f in frames]}


# ------------------------------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class Graph:
    """What every step of one pipeline shares, fixed when it is built: the spec, where frames are decoded and
    augmented, the per-video lookup tables."""

    spec: PipeSpec
    decoder_device: str  # "cpu" (DALI's CPU decoder) | "mixed" (NVDEC)
    copy_to_gpu: (
        bool  # CPU-decoded frames go to the GPU after the temporal gather (augmentation is fast there)
    )
    frames: np.ndarray  # [videos] frame counts, by sample index
    pad_starts: np.ndarray | None  # [videos] left-padded clip starts (< 0); None when no video is padded
    eval_starts: np.ndarray | None  # [videos, clips] host-computed eval starts (uniform / random windows)

    @property
    def padding(self) -> bool:
        return self.pad_starts is not None

    @property
    def out_dtype(self):
        from nvidia.dali import types

        return types.FLOAT16 if self.spec.half else types.FLOAT


def to_device(g: Graph, x):
    return x.gpu() if g.copy_to_gpu else x


def decode(g: Graph, encoded, **frames):
    """The one video decoder call. ``pad_mode="none"``: a file that ends before its ``.json``'s frame count
    gives a shorter sequence and a later gather fails on it (the loader then names the file); DALI's default
    would pad it with zeros, silently."""
    from nvidia.dali import fn

    return fn.decoders.video(encoded, device=g.decoder_device, pad_mode="none", **frames)


# ------------------------------------------------------------------ temporal sampling
def lookup(index, lut: dict):
    """Per sample: ``lut``'s value of its index (float)."""
    from nvidia.dali import fn, types

    return fn.lookup_table(fn.cast(index, dtype=types.INT32), **lut, dtype=types.FLOAT)


def pad_of(g: Graph, index):
    """Per sample: its pad start (int32, < 0 for a padded video, else 0)."""
    from nvidia.dali import fn, types

    return fn.cast(lookup(index, frames_lut_args(g.pad_starts)), dtype=types.INT32)


def draw_starts(spec: PipeSpec, nframes, same_start, pad=None):
    """Each view's first frame: view 0 uniform over the valid starts, view v > 0 the same when ``same_start``
    (ViewSource's per-sample 0/1: the released controller's one-clip choice), else its own draw. A padded video
    (``pad`` < 0, :func:`pad_of`) takes its pad start for every view; the draws are made for every sample all
    the same, so the other videos' starts do not move."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    room = nframes - float(spec.span - 1)  # number of valid starts (>= 1 unless the video is padded)

    def one():
        s = fn.cast(fn.random.uniform(range=[0.0, 1.0]) * room, dtype=types.INT32)
        return dmath.min(s, fn.cast(room, dtype=types.INT32) - 1)

    starts = [one()]
    for _ in range(1, spec.num_views):
        starts.append(same_start * starts[0] + (1 - same_start) * one())
    if pad is None:
        return starts
    short = fn.cast(pad < 0, dtype=types.INT32)
    return [short * pad + (1 - short) * s for s in starts]


def flow_planes(x):
    """[T, 2H, W, 3] -> [2T, H, W, 1]: the stored x-above-y frame as consecutive x and y planes (luma only:
    the decoder's R = G = B), so one crop window and flip apply to both in one resize."""
    from nvidia.dali import fn

    x = fn.reshape(x, rel_shape=[2, 0.5, 1, 1], layout="FHWC")
    return x[:, :, :, 0:1]


def decode_views(g: Graph, encoded, starts, window, flow: bool, clamp: bool = False):
    """One clip per view (frames start + j * stride): RGB [T, h, w, 3] uint8, flow [2T, h, w, 1]
    (:func:`flow_planes`). ``window`` (lo, hi): decode that span once and gather every view from it, else
    decode each view on its own. ``clamp`` (padded videos): frames max(0, start + j * stride), so a negative
    (pad) start repeats frame 0."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    T, stride = g.spec.data.num_frames, g.spec.data.stride
    if window is None:
        clips = [decode(g, encoded, start_frame=s, sequence_length=T, stride=stride) for s in starts]
        return [to_device(g, flow_planes(c)) for c in clips] if flow else [to_device(g, c) for c in clips]
    lo, hi = window
    if clamp:
        lo = dmath.max(lo, 0)
    frames = decode(g, encoded, start_frame=lo, end_frame=hi)
    offs = np.arange(T, dtype=np.int32) * stride
    if clamp:  # each frame's index in the window: max(s + j * stride, 0) - lo
        if flow:  # x and y planes of frame j at 2 * index and 2 * index + 1
            frames = flow_planes(frames)
            rep2 = types.Constant(np.repeat(offs, 2).astype(np.int32))
            xy = types.Constant(np.tile(np.array([0, 1], np.int32), T))
            return [
                to_device(g, fn.sequence_rearrange(frames, new_order=2 * (dmath.max(s + rep2, 0) - lo) + xy))
                for s in starts
            ]
        return [
            to_device(g, fn.sequence_rearrange(frames, new_order=dmath.max(s + types.Constant(offs), 0) - lo))
            for s in starts
        ]
    if flow:  # gather planes after dropping the two redundant channels: a third of the bytes to move
        frames = flow_planes(frames)
        offs = (np.repeat(2 * offs, 2) + np.tile([0, 1], T)).astype(np.int32)
        return [
            to_device(g, fn.sequence_rearrange(frames, new_order=2 * (s - lo) + types.Constant(offs)))
            for s in starts
        ]
    return [
        to_device(g, fn.sequence_rearrange(frames, new_order=(s - lo) + types.Constant(offs))) for s in starts
    ]


def decode_streams(g: Graph, encoded, starts, pad):
    """Every stream's views, decoded as one window covering all views when that is no longer than decoding
    them one by one (``data.union_decode``; always for a padded video, whose views share its pad start).
    RGB and flow use the same starts, so view v of both covers the same frames."""
    from nvidia.dali import math as dmath

    spec = g.spec

    def each(window, clamp=False):
        return [
            decode_views(g, e, starts, window, s == Stream.flow, clamp) for s, e in zip(spec.streams, encoded)
        ]

    if spec.data.union_decode and spec.num_views > 1:
        lo, hi = starts[0], starts[0]
        for s in starts[1:]:
            lo, hi = dmath.min(lo, s), dmath.max(hi, s)
        hi = hi + spec.span
        use_union = (hi - lo) <= spec.num_views * spec.span
        if use_union:  # noqa: SIM108  a DALI conditional (autograph: split / merge per sample)
            decoded = each((lo, hi), g.padding)
        else:
            decoded = each(None)
    elif g.padding:
        short = pad < 0
        if short:  # noqa: SIM108  a DALI conditional
            decoded = each((pad, pad + spec.span), True)
        else:
            decoded = each(None)
    else:
        decoded = each(None)
    return decoded


# ------------------------------------------------------------------ crop and flip
def random_window(spec: PipeSpec):
    """``data.augment.crop=torchvision``: (anchor, shape) of a random resized crop of the stored frame (RGB,
    flow and flow's planes have that size, so one window can serve both streams of a view)."""
    from nvidia.dali import fn, types

    return fn.random_crop_generator(
        types.Constant(np.array([spec.height, spec.width], np.int64)),
        random_area=list(spec.aug.crop_scale),
        random_aspect_ratio=list(spec.aug.aspect_ratio),
    )


def host_window(d: dict, stream: str):
    """``data.augment.crop=released | classifier``: the view's window drawn on the host (ViewSource's
    ``win_<stream>``: top, left, h, w) as (anchor, shape)."""
    win = d[f"win_{stream}"]
    return win[0:2], win[2:4]


def crop_flip_resize(x, flip, window, size: int, host_crop: bool):
    """Crop and horizontal flip in one resampling pass (the flip is a reversed ROI). Host crops resize bicubic
    with antialiasing, as PIL's resize in the released RandomSizedCrop; else bilinear without."""
    from nvidia.dali import fn, types

    anchor, shape = window
    y0, x0 = fn.cast(anchor[0], dtype=types.FLOAT), fn.cast(anchor[1], dtype=types.FLOAT)
    h, w = fn.cast(shape[0], dtype=types.FLOAT), fn.cast(shape[1], dtype=types.FLOAT)
    f = fn.cast(flip, dtype=types.FLOAT)
    start, end = fn.stack(y0, x0 + f * w), fn.stack(y0 + h, x0 + (1.0 - f) * w)
    if host_crop:
        return fn.resize(
            x,
            size=[size, size],
            roi_start=start,
            roi_end=end,
            roi_relative=False,
            interp_type=types.INTERP_CUBIC,
            antialias=True,
        )
    return fn.resize(x, size=[size, size], roi_start=start, roi_end=end, roi_relative=False, antialias=False)


# ------------------------------------------------------------------ photometric steps (on the draw's samples)
def blur(x, d: dict, stream: str):
    """Gaussian blur of the samples whose ViewSource flag is set (no flag: blur is off for this stream)."""
    from nvidia.dali import fn

    if f"blur_{stream}" not in d:
        return x
    if d[f"blur_{stream}"]:
        x = fn.gaussian_blur(x, sigma=d["sigma"])
    return x


def released_jitter(x, d: dict, stream: str):
    """The released colour jitter's steps (:func:`jitter_steps`) on the samples whose draw has it; uint8 in
    and out. Without the draw's keys (jitter off, or flow without photometric augmentation): unchanged."""
    if f"jit_{stream}" not in d:
        return x
    if d[f"jit_{stream}"]:
        x = jitter_steps(x, *(d[f"{stream}_j{f}"] for f in STEP_FIELDS))
    return x


def colour_map(spec: PipeSpec, x, m, t):
    """The view's affine map (``y = M x + t``: grayscale, the one-map jitter, the normalisation and flow x's
    sign folded on the host, augment.draw_views) to the output dtype; per frame when the grayscale channel
    is drawn per frame."""
    from nvidia.dali import fn, types

    if per_frame_maps(spec.aug):
        m, t = fn.per_frame(m), fn.per_frame(t)
    x = fn.coord_transform(x, M=m, T=t, dtype=types.FLOAT)
    return fn.cast(x, dtype=types.FLOAT16) if spec.half else x


def flow_image(spec: PipeSpec, x):
    """[2T, c, c, 1] planes -> [T, c, c, 3] the flow image of ``data.flow_layout``: released (128, y, x), the
    image the released code reads from OpenCV's BGR [x, y, 128] JPEGs (one exact uint8 map), or (x, y, 0)."""
    from nvidia.dali import fn, types

    c = spec.data.crop_size
    x = fn.reshape(x, shape=[spec.data.num_frames, 2, c, c], layout="FCHW")
    if spec.data.flow_layout is FlowLayout.released:
        x = fn.transpose(x, perm=[0, 2, 3, 1], output_layout="FHWC")
        return fn.coord_transform(x, M=FLOW_LAYOUT_M, T=[128.0, 0.0, 0.0], dtype=types.UINT8)
    x = fn.pad(x, axis_names="C", shape=[3], fill_value=0)
    return fn.transpose(x, perm=[0, 2, 3, 1], output_layout="FHWC")


def augment_rgb(spec: PipeSpec, x, window, d: dict):
    """One RGB view in the released order: crop and flip, jitter steps, blur, then the map; with the one-map
    jitter (``affine``) blur, then the map that holds the jitter."""
    x = crop_flip_resize(x, d["flip_rgb"], window, spec.data.crop_size, spec.aug.crop in HOST_CROPS)
    if spec.aug.color_jitter is ColorJitterMode.released:
        x = released_jitter(x, d, "rgb")
    return colour_map(spec, blur(x, d, "rgb"), d["rgb_m"], d["rgb_t"])


def augment_flow(spec: PipeSpec, x, window, d: dict):
    """One flow view [2T, h, w, 1] -> [T, c, c, 3]: crop and flip both planes in one resize, then as RGB on
    the flow image (the released code augments it like an image); with the one-map jitter the planes are
    blurred before the image is made."""
    x = crop_flip_resize(x, d["flip_flow"], window, spec.data.crop_size, spec.aug.crop in HOST_CROPS)
    if spec.aug.color_jitter is ColorJitterMode.released:
        x = blur(released_jitter(flow_image(spec, x), d, "flow"), d, "flow")
    else:
        x = flow_image(spec, blur(x, d, "flow"))
    return colour_map(spec, x, d["flow_m"], d["flow_t"])


def train_graph(g: Graph, encoded, index, nframes, batch_size: int, seed: int) -> list:
    """Per sample: the host draws (ViewSource), each view's start, the decoded clips, one crop window per view
    (shared by RGB view i and flow view i with ``align_streams``, as the released code augments [rgb_i, flow_i]
    as one sequence), the augmented views in ``spec.output_names()`` order."""
    from nvidia.dali import fn

    spec = g.spec
    source = ViewSource(spec, batch_size, seed)
    k, o = len(source.keys), int(spec.num_views > 1)  # o: the leading `same` output
    src = fn.external_source(source=source, num_outputs=o + k * spec.num_views, batch=True)
    draws = [dict(zip(source.keys, src[o + k * v : o + k * (v + 1)])) for v in range(spec.num_views)]
    pad = pad_of(g, index) if g.padding else None
    starts = draw_starts(spec, nframes, src[0] if o else None, pad)
    per_stream = dict(zip(spec.streams, decode_streams(g, encoded, starts, pad)))
    host_crop = spec.aug.crop in HOST_CROPS
    shared = None
    if not host_crop and spec.aug.align_streams:
        shared = [random_window(spec) for _ in range(spec.num_views)]
    results = []
    for stream in spec.streams:
        if host_crop:  # drawn on the host: one per view, shared when aligned (ViewSource)
            windows = [host_window(draws[v], stream.value) for v in range(spec.num_views)]
        else:
            windows = shared or [random_window(spec) for _ in range(spec.num_views)]
        aug = augment_rgb if stream == Stream.rgb else augment_flow
        results += [aug(spec, v, windows[i], draws[i]) for i, v in enumerate(per_stream[stream])]
    return results


# ------------------------------------------------------------------ evaluation
def eval_indices(g: Graph, index):
    """Per sample: the frame indices of all its eval clips back to back (``data.eval.windows``): overlap =
    every half-overlapping window, their count looked up per sample; uniform / random = the host-computed
    starts (vicc_fast/data/windows.py) looked up. A padded video's clips start at its pad start, clamped at 0."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    spec = g.spec
    T, stride = spec.data.num_frames, spec.data.stride
    if spec.data.eval.windows is EvalWindows.overlap:
        counts = overlap_count(g.frames, T, stride)
        starts = np.arange(int(counts.max()) if len(counts) else 1) * overlap_step(T, stride)
        table = (starts[:, None] + np.arange(T)[None] * stride).reshape(-1).astype(np.int32)
        count = lookup(index, frames_lut_args(counts))
        n = fn.cast(count, dtype=types.INT32) * T
        idx = fn.slice(types.Constant(table, device="cpu"), n * 0, n, axes=[0])
        if g.padding:  # a padded video has one window: shifted to its pad start, clamped at frame 0
            idx = dmath.max(idx + pad_of(g, index), 0)
        return idx
    if g.eval_starts is None:
        raise ValueError(
            f"{spec.data.eval.windows.value} eval windows need the per-video starts (eval_starts)"
        )
    ii = fn.cast(index, dtype=types.INT32)
    starts = [
        fn.cast(
            fn.lookup_table(ii, **frames_lut_args(g.eval_starts[:, k]), dtype=types.FLOAT),
            dtype=types.INT32,
        )
        for k in range(g.eval_starts.shape[1])
    ]
    first = fn.reshape(fn.stack(*starts), shape=[-1, 1])  # [clips, 1]
    offs = types.Constant((np.arange(T, dtype=np.int32) * stride)[None])  # [1, T]
    idx = first + offs
    if g.padding:  # a padded video's starts are its pad start (windows.fixed_starts): repeat frame 0
        idx = dmath.max(idx, 0)
    return fn.reshape(idx, shape=[-1])


def eval_flow_frames(spec: PipeSpec, x):
    """[F, 2H, W, 3] -> [F, H, W, 2] (x, y) uint8."""
    from nvidia.dali import fn

    x = fn.reshape(flow_planes(x), shape=[-1, 2, spec.height, spec.width], layout="")
    return fn.transpose(x, perm=[0, 2, 3, 1], output_layout="FHWC")


def eval_crop(g: Graph, x, px, py, m, flow: bool, raw: bool = False):
    """One eval crop at (px, py), mirrored when ``m``: [N*T, c, c, 3] normalised in the output dtype, or
    (``raw``) 8-bit values. Flow: x negated on mirrored crops with ``flow_flip_negate`` ((255 - v - mu) / s =
    (v - (255 - mu)) / -s), then the constant channel (normalised) where ``data.flow_layout`` puts it."""
    from nvidia.dali import fn, types

    spec = g.spec
    c, layout = spec.data.crop_size, spec.data.flow_layout
    if raw:
        mu, sd = np.zeros(3), np.ones(3)
    else:
        mu, sd = (
            flow_norm(spec.data.flow_normalisation, layout)
            if flow
            else (np.array(RGB_MEAN), np.array(RGB_STD))
        )
    mean, std = [float(v) for v in mu], [float(v) for v in sd]
    if flow:  # the crop holds the (x, y) planes: their statistics are those of x's and y's channels
        ix, iy, ik = FLOW_X[layout], FLOW_Y, 3 - FLOW_X[layout] - FLOW_Y
        neg = m and spec.aug.flow_flip_negate
        # the constant channel, normalised (xy0: the formula it always had, so a zero stays -0.0 bit for bit)
        const = (FLOW_CONST[layout] - mu[ik]) / sd[ik] if layout is FlowLayout.released else -mu[ik] / sd[ik]
        mean = [255.0 - mean[ix] if neg else mean[ix], mean[iy]]
        std = [-std[ix] if neg else std[ix], std[iy]]
    dtype = types.UINT8 if raw else g.out_dtype
    y = fn.crop_mirror_normalize(
        x,
        crop=[c, c],
        crop_pos_x=px,
        crop_pos_y=py,
        mirror=m,
        mean=mean,
        std=std,
        dtype=dtype,
        output_layout="FHWC",
    )
    if flow and layout is FlowLayout.released:  # (x, y) -> (const, y, x), exact
        y = fn.coord_transform(y, M=FLOW_LAYOUT_M, T=[float(const), 0.0, 0.0], dtype=dtype)
    elif flow:
        y = fn.pad(y, axis_names="C", shape=[3], fill_value=0 if raw else float(const))
    return y


def jittered_crop(g: Graph, x, px, py, m, flow: bool, jitter):
    """With the released test-time jitter: the 8-bit crop, the jitter steps where the draw says, then the
    normalisation. ``jitter``: this crop's (jit, *steps) from EvalJitterSource."""
    from nvidia.dali import fn

    spec = g.spec
    y = eval_crop(g, x, px, py, m, flow, raw=True)
    jit, *steps = jitter
    if jit:
        y = jitter_steps(y, *steps)
    if flow:
        mu, sd = flow_norm(spec.data.flow_normalisation, spec.data.flow_layout)
    else:
        mu, sd = np.array(RGB_MEAN), np.array(RGB_STD)
    scale = 1.0 / np.asarray(sd, np.float64)
    return fn.coord_transform(
        y, M=np.diag(scale).reshape(-1).tolist(), T=(-np.asarray(mu) * scale).tolist(), dtype=g.out_dtype
    )


def eval_crops(g: Graph, x, flow: bool, jitter=None) -> list:
    """[N*T, H, W, *] -> the crops [N*T, c, c, 3]: frames resized so a crop spans ``data.eval.crop_fraction``
    of the shorter side, then the centre, or ten-crop (4 corners + centre, each also mirrored). ``jitter``:
    per crop the test-time jitter draws (EvalJitterSource), or None."""
    from nvidia.dali import fn

    spec = g.spec
    shorter = eval_resize(spec.data.crop_size, spec.data.eval.crop_fraction)
    if min(spec.height, spec.width) != shorter:
        x = fn.resize(x, resize_shorter=float(shorter), antialias=True)
    if spec.tencrop:
        pos = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5)]
        crops = [(px, py, m) for (px, py) in pos for m in (0, 1)]
    else:
        crops = [(0.5, 0.5, 0)]
    if jitter is not None:
        return [jittered_crop(g, x, px, py, m, flow, jitter[i]) for i, (px, py, m) in enumerate(crops)]
    return [eval_crop(g, x, px, py, m, flow) for px, py, m in crops]


def eval_graph(g: Graph, encoded, index, nframes, batch_size: int, seed: int) -> list:
    """Per sample and stream: the whole video decoded once, its eval clips gathered, cropped and normalised:
    [crops * clips * T, c, c, 3]; with overlapping windows zero-padded along the first axis to the batch's
    longest (the loader drops the padding by the sample's window count)."""
    from nvidia.dali import fn, types

    spec = g.spec
    idx = eval_indices(g, index)
    ncrops = 10 if spec.tencrop else 1
    jitter = None  # per stream, per crop: (jit, kind, b, c, m)
    if spec.eval_jitter_prob > 0:
        source = EvalJitterSource(spec, batch_size, ncrops, seed)
        src = fn.external_source(source=source, num_outputs=source.num_outputs(), batch=True)
        w = 1 + len(STEP_FIELDS)  # jit, then the steps' fields, per (stream, crop)
        draws = [tuple(src[w * j : w * (j + 1)]) for j in range(len(spec.streams) * ncrops)]
        jitter = [draws[i * ncrops : (i + 1) * ncrops] for i in range(len(spec.streams))]
    results = []
    for si, (stream, enc) in enumerate(zip(spec.streams, encoded)):
        video = decode(g, enc, start_frame=0, end_frame=fn.cast(nframes, dtype=types.INT32))
        video = fn.sequence_rearrange(video, new_order=idx)
        if stream == Stream.flow:
            video = eval_flow_frames(spec, video)
        video = to_device(g, video)
        crops = eval_crops(g, video, flow=stream == Stream.flow, jitter=jitter[si] if jitter else None)
        y = crops[0] if len(crops) == 1 else fn.cat(*crops, axis_name="F")
        if spec.data.eval.windows is EvalWindows.overlap:
            y = fn.pad(y, axis_names="F", fill_value=0.0)  # to the batch's longest sample
        results.append(y)
    return results


def build_pipeline(
    spec: PipeSpec,
    *,
    paths: list[str],
    index_paths: list[str] | None,
    frames: np.ndarray,
    shard_id: int,
    num_shards: int,
    shuffle: bool,
    shuffle_buffer: int,
    batch_size: int,
    num_threads: int,
    prefetch: int,
    device_id: int | None,
    seed: int,
    eval_starts: np.ndarray | None = None,
    pad_starts: np.ndarray | None = None,
):
    """Build (not yet start) the DALI pipeline of ``spec`` over ``paths``; outputs as ``spec.output_names()``.

    ``pad_starts``: [len(frames)] each video's left-padded clip start (< 0; 0 for a video read as usual;
    windows.pad_start). The padding ops join the graph only when some video has one, so a split without short
    videos keeps the graph it had without them, op for op.
    """
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None
    padding = (
        spec.data.short_videos is ShortVideos.pad and pad_starts is not None and bool((pad_starts < 0).any())
    )
    g = Graph(
        spec=spec,
        decoder_device="mixed" if (gpu and spec.nvdec) else "cpu",
        copy_to_gpu=gpu and not spec.nvdec,
        frames=frames,
        pad_starts=pad_starts if padding else None,
        eval_starts=eval_starts,
    )

    @pipeline_def(enable_conditionals=spec.train or spec.eval_jitter_prob > 0)
    def pipe():
        outs = fn.readers.webdataset(
            paths=paths,
            index_paths=index_paths,
            ext=[f"{s.value}.webm" for s in spec.streams] + ["lbl"],
            dtypes=[types.UINT8] * len(spec.streams) + [types.INT64],
            missing_component_behavior="error",
            shard_id=shard_id,
            num_shards=num_shards,
            random_shuffle=shuffle,
            initial_fill=max(1, shuffle_buffer),
            stick_to_shard=True,
            pad_last_batch=not spec.train,
            seed=seed,
            name="reader",
        )
        encoded, lbl = list(outs[:-1]), outs[-1]
        label, index = lbl[0], lbl[1]
        nframes = lookup(index, frames_lut_args(frames))
        graph = train_graph if spec.train else eval_graph
        return (*graph(g, encoded, index, nframes, batch_size, seed), label, index)

    return pipe(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch,
    )
