"""NVIDIA DALI pipelines: WebDataset shards -> decoded, frame-consistently augmented, aligned RGB/flow views.

One graph serves the CPU backend (``device_id=None``) and the GPU (augmentation on the GPU); on the GPU the
frames are decoded by DALI's CPU decoder and copied over after the temporal gather (``data.decoder=cpu``, the
default: on an H200 with 8 threads it decoded our 128x171 VP9 clips at 5.3x NVDEC's frames/s, NVDEC paying a
decoder setup per short clip and refusing frames below 128x128), or by NVDEC (``nvdec``: ``device="mixed"``).
Every output is per-sample ``FHWC`` so that PyTorch sees ``[B, T, H, W, C]`` and a permute gives ``[B, C, T, H, W]`` in ``channels_last_3d`` without a copy.

Train graph, per sample (one video):
    lbl -> (label, index) -> frames = LUT[index]
    draws: ViewSource (host, vicc_fast/data/augment.py) per sample: whether the views share a start (the
            released controller's one-clip choice, ``same_start_prob``), which views get the strong
            augmentation, flips, blur flags and sigma, and the colour maps of RGB and flow (normalisation folded)
    starts: view 0 uniform in [0, frames - span]; view v > 0 the same start when the draw says so, else its
            own uniform draw (span = (T - 1) * stride + 1); a video shorter than a clip (``short_videos=pad``)
            takes its negative pad start instead (the draws are made all the same, so the others' stay put)
    decode: when all views fit in one window no longer than the views decoded one by one (``union_decode``)
            the window is decoded once and each view is gathered from it (``sequence_rearrange``); else each
            view is decoded on its own with ``start_frame`` / ``sequence_length`` / ``stride``. RGB and flow
            use the same starts, so view v of both streams covers the same frames. A padded video always
            takes the window path, its window [max(lo, 0), hi) and its indices clamped at 0 (frame 0 repeated).
    crop: one random crop window per view, shared by RGB view i and flow view i (``align_streams``: the
          released code augments [rgb_i, flow_i] as one sequence), else one per stream and view.
    RGB:  crop and flip in one resize (a flipped ROI) -> colour jitter as released (``color_jitter=released``,
          conditional on the draw: the view's steps in its drawn order, brightness / contrast about each frame's
          mean luma as ``brightness_contrast`` and saturation + hue as one colour matrix, 8-bit frames between
          them; ``jitter_steps``) -> Gaussian blur (conditional on the draw) -> grayscale +
          normalisation as one per-sample affine map (``coord_transform``), so every frame of a clip gets the
          same crop / flip / colours. ``color_jitter=affine``: blur first, and the jitter folded into the map.
    flow: the (2H) x W frame holds x above y: reshape [T, 2H, W, 3] -> [2T, H, W, 3] (free) and keep channel 0
          (x and y sit in luma; the decoder's RGB has R = G = B): the x and y planes become consecutive frames,
          so the view's crop window and flip apply to both halves in one resize -> [T, 2(C), c, c] made the
          flow image of ``flow_layout``, channel-last: released (128, y, x), what the released code reads from
          OpenCV's BGR [x, y, 128] JPEGs with PIL (one exact uint8 map), or xy0 (x, y, 0) (a zero plane
          padded) -> the RGB view's jitter steps and blur (``flow_photometric``; with the one-map jitter the
          planes are blurred first) -> one affine map (grayscale, the normalisation, x negated on flipped views
          with ``flow_flip_negate``: after the jitter steps, which see the stored x); per frame with the
          released grayscale (a channel drawn per frame, ``grayscale_per=frame``: ``fn.per_frame`` maps).
    crop: ``crop=released`` / ``classifier``: the windows drawn on the host (augment.draw_crop_window, the
          released RandomSizedCrop: uniform aspect with a w/h swap, one try / ten), resized bicubic with
          antialiasing (PIL's resize); ``torchvision``: ``fn.random_crop_generator``, bilinear, no antialiasing.

Eval graph: the whole video is decoded once and its eval clips are gathered from it (``eval_windows``: every
half-overlapping window, their number looked up per sample, or a fixed count whose starts the loader computed on the
host, looked up per sample; see vicc_fast/data/windows.py; a padded video's clips start at its pad start, indices
clamped at 0); centre crop, or ten-crop (4 corners + centre, each also flipped), each crop with the released
test-time colour jitter when its draw says (``eval_jitter_prob``, EvalJitterSource; the jitter steps before the
normalisation); output per sample [crops * clips * T, c, c, 3], with overlapping windows zero-padded along the
first axis to the batch's longest (the loader drops the padding by the sample's window count).
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

    ``pad_starts``: [len(frames)] the first frame of each video's left-padded clip (< 0; 0 for a video read as
    usual; vicc_fast/data/windows.py pad_start), with ``spec.short_videos=pad``. The graph gains its padding ops only
    when some video has one: a split without short videos gets the graph it had before padding existed, op for op.
    """
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dmath

    gpu = device_id is not None
    decoder_device = "mixed" if (gpu and spec.nvdec) else "cpu"
    copy_to_gpu = gpu and not spec.nvdec

    def to_device(x):
        """CPU-decoded frames go to the GPU after the temporal gather: augmentation runs where it is fast."""
        return x.gpu() if copy_to_gpu else x

    lut = frames_lut_args(frames)
    exts = [f"{s.value}.webm" for s in spec.streams] + ["lbl"]
    dtypes = [types.UINT8] * len(spec.streams) + [types.INT64]
    out_dtype = types.FLOAT16 if spec.half else types.FLOAT
    c = spec.data.crop_size
    T = spec.data.num_frames
    stride = spec.data.stride
    padding = (
        spec.data.short_videos is ShortVideos.pad and pad_starts is not None and bool((pad_starts < 0).any())
    )
    pad_lut = frames_lut_args(pad_starts) if padding else None

    def pad_of(index):
        """Per sample: its pad start (int32, < 0 for a padded video, else 0)."""
        return fn.cast(
            fn.lookup_table(fn.cast(index, dtype=types.INT32), **pad_lut, dtype=types.FLOAT),
            dtype=types.INT32,
        )

    # ------------------------------------------------------------------ temporal sampling
    def draw_starts(nframes, same_start, pad=None):
        """same_start: per-sample int32 0/1 from ViewSource (the controller's one-clip choice). pad: per-sample
        pad start (int32, :func:`pad_of`) or None. A padded video takes it for every view; the uniform draws are
        made for every sample all the same (same operators, same order), so the other videos' starts do not
        move."""
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

    def decode_views(encoded, starts, union, flow: bool, clamp: bool = False):
        """One clip per view, frames start + j * stride: RGB [T, h, w, 3] uint8; flow [2T, h, w, 1] (the x and
        y planes of each frame as consecutive frames, see flow_xy). ``clamp`` (the padding graph, with a union
        window): frames max(0, start + j * stride) from the window [max(lo, 0), hi), so a negative (pad) start
        repeats frame 0; for a start >= 0 the same frames as without it."""
        if union is None:
            clips = [
                fn.decoders.video(
                    encoded,
                    device=decoder_device,
                    start_frame=s,
                    sequence_length=T,
                    stride=stride,
                    pad_mode="none",
                )
                for s in starts
            ]
            return [to_device(flow_xy(c)) for c in clips] if flow else [to_device(c) for c in clips]
        lo, hi = union
        if clamp:
            lo = dmath.max(lo, 0)
        window = fn.decoders.video(
            encoded, device=decoder_device, start_frame=lo, end_frame=hi, pad_mode="none"
        )
        offs = np.arange(T, dtype=np.int32) * stride
        if clamp:  # each frame's index in the window: max(s + j * stride, 0) - lo
            if flow:  # x and y planes of frame j at 2 * index and 2 * index + 1
                window = flow_xy(window)
                rep2 = types.Constant(np.repeat(offs, 2).astype(np.int32))
                xy = types.Constant(np.tile(np.array([0, 1], np.int32), T))
                return [
                    to_device(fn.sequence_rearrange(window, new_order=2 * (dmath.max(s + rep2, 0) - lo) + xy))
                    for s in starts
                ]
            return [
                to_device(
                    fn.sequence_rearrange(window, new_order=dmath.max(s + types.Constant(offs), 0) - lo)
                )
                for s in starts
            ]
        if flow:  # gather planes after dropping the two redundant channels: a third of the bytes to move
            window = flow_xy(window)
            offs = (np.repeat(2 * offs, 2) + np.tile([0, 1], T)).astype(np.int32)
            return [
                to_device(fn.sequence_rearrange(window, new_order=2 * (s - lo) + types.Constant(offs)))
                for s in starts
            ]
        return [
            to_device(fn.sequence_rearrange(window, new_order=(s - lo) + types.Constant(offs)))
            for s in starts
        ]

    # ------------------------------------------------------------------ spatial augmentation
    def crop_window():
        """(anchor, shape) of a random resized crop of the stored H x W frame; RGB and flow frames (and the x
        and y planes of flow) have that size, so one window can serve both streams of a view."""
        return fn.random_crop_generator(
            types.Constant(np.array([spec.height, spec.width], np.int64)),
            random_area=list(spec.aug.crop_scale),
            random_aspect_ratio=list(spec.aug.aspect_ratio),
        )

    def host_window(d, stream: str):
        """data.augment.crop=released: the view's window drawn on the host (ViewSource win_<stream>: top, left, h, w)."""
        win = d[f"win_{stream}"]
        return win[0:2], win[2:4]

    released_crop = spec.aug.crop in HOST_CROPS  # released / classifier: host windows, bicubic + antialiasing

    def crop_flip_resize(x, flip, window):
        """Random resized crop and horizontal flip in one resampling pass: the flip is a reversed ROI. Released
        crop: bicubic with antialiasing (PIL's resize, which the released RandomSizedCrop calls with
        Image.BICUBIC); else bilinear without."""
        anchor, shape = window
        y0, x0 = fn.cast(anchor[0], dtype=types.FLOAT), fn.cast(anchor[1], dtype=types.FLOAT)
        h, w = fn.cast(shape[0], dtype=types.FLOAT), fn.cast(shape[1], dtype=types.FLOAT)
        f = fn.cast(flip, dtype=types.FLOAT)
        start, end = fn.stack(y0, x0 + f * w), fn.stack(y0 + h, x0 + (1.0 - f) * w)
        if released_crop:
            return fn.resize(
                x,
                size=[c, c],
                roi_start=start,
                roi_end=end,
                roi_relative=False,
                interp_type=types.INTERP_CUBIC,
                antialias=True,
            )
        return fn.resize(x, size=[c, c], roi_start=start, roi_end=end, roi_relative=False, antialias=False)

    def blur(x, d, stream: str):
        """Gaussian blur of the samples whose flag (from ViewSource) is set; no flags when blur is off."""
        if f"blur_{stream}" not in d:
            return x
        if d[f"blur_{stream}"]:
            x = fn.gaussian_blur(x, sigma=d["sigma"])
        return x

    def released_jitter(x, d, stream: str):
        """The released colour jitter (data.augment.color_jitter=released) on the samples whose draw has it: the
        view's JitterSteps (jitter_steps), uint8 in and out. Without the draw's keys (jitter off, or flow
        without photometric augmentation): unchanged."""
        if f"jit_{stream}" not in d:
            return x
        if d[f"jit_{stream}"]:
            x = jitter_steps(x, *(d[f"{stream}_j{f}"] for f in STEP_FIELDS))
        return x

    def augment_rgb(x, window, d):
        """d: this view's ViewSource outputs (see ViewSource); the colour map folds jitter, grayscale and the
        normalisation into one per-sample affine map. With the released jitter the order is the released
        code's: crop and flip, jitter steps, blur, then the map (grayscale and the normalisation)."""
        x = crop_flip_resize(x, d["flip_rgb"], window)
        if spec.aug.color_jitter is ColorJitterMode.released:
            x = released_jitter(x, d, "rgb")
        return finish(blur(x, d, "rgb"), d["rgb_m"], d["rgb_t"])

    def flow_xy(x):
        """[T, 2H, W, 3] -> [2T, H, W, 1]: x_0, y_0, x_1, y_1, ... as frames, luma channel only."""
        x = fn.reshape(x, rel_shape=[2, 0.5, 1, 1], layout="FHWC")
        return x[:, :, :, 0:1]

    def flow_image(x):
        """[2T, c, c, 1] uint8 -> [T, c, c, 3], the flow image of data.flow_layout: [T, 2, c, c] read
        channel-first (free); xy0: a zero third plane padded on the small uint8 data, made channel-last;
        released: made channel-last, then (x, y) -> (128, y, x) by one exact uint8 map (the image the released
        code reads from OpenCV's BGR [x, y, 128] JPEGs)."""
        x = fn.reshape(x, shape=[T, 2, c, c], layout="FCHW")
        if spec.data.flow_layout is FlowLayout.released:
            x = fn.transpose(x, perm=[0, 2, 3, 1], output_layout="FHWC")
            return fn.coord_transform(x, M=FLOW_LAYOUT_M, T=[128.0, 0.0, 0.0], dtype=types.UINT8)
        x = fn.pad(x, axis_names="C", shape=[3], fill_value=0)
        return fn.transpose(x, perm=[0, 2, 3, 1], output_layout="FHWC")

    per_frame = per_frame_maps(spec.aug)

    def finish(x, m, t):
        """One affine map per sample, or per frame with a grayscale channel drawn per frame (ViewSource:
        jitter/grayscale when the view's draw has them, the normalisation, and flow x's sign when flips negate
        it) to the output dtype; unjittered, flow's constant plane stays constant."""
        if per_frame:
            m, t = fn.per_frame(m), fn.per_frame(t)
        x = fn.coord_transform(x, M=m, T=t, dtype=types.FLOAT)
        return fn.cast(x, dtype=types.FLOAT16) if spec.half else x

    def augment_flow(x, window, d):
        """[2T, h, w, 1] -> [T, c, c, 3]: crop and flip both planes in one resize, then as RGB (the released
        code augments the flow image, flow_image): one-map jitter: blur the planes, then the map; released
        jitter: the steps on the flow image, blur, the map."""
        x = crop_flip_resize(x, d["flip_flow"], window)
        if spec.aug.color_jitter is ColorJitterMode.released:
            x = blur(released_jitter(flow_image(x), d, "flow"), d, "flow")
        else:
            x = flow_image(blur(x, d, "flow"))
        return finish(x, d["flow_m"], d["flow_t"])

    # ------------------------------------------------------------------ eval
    def eval_indices(index):
        if spec.data.eval.windows is EvalWindows.overlap:
            # every window's frame indices back to back; each sample keeps the first count * T of them
            counts = overlap_count(frames, T, stride)
            starts = np.arange(int(counts.max()) if len(counts) else 1) * overlap_step(T, stride)
            table = (starts[:, None] + np.arange(T)[None] * stride).reshape(-1).astype(np.int32)
            count = fn.lookup_table(
                fn.cast(index, dtype=types.INT32), **frames_lut_args(counts), dtype=types.FLOAT
            )
            n = fn.cast(count, dtype=types.INT32) * T
            idx = fn.slice(types.Constant(table, device="cpu"), n * 0, n, axes=[0])
            if padding:  # a padded video has one window: shifted to its pad start, clamped at frame 0
                idx = dmath.max(idx + pad_of(index), 0)
            return idx
        # a fixed count per video: its host-computed starts, looked up
        if eval_starts is None:
            raise ValueError(
                f"{spec.data.eval.windows.value} eval windows need the per-video starts (eval_starts)"
            )
        ii = fn.cast(index, dtype=types.INT32)
        starts = [
            fn.cast(
                fn.lookup_table(ii, **frames_lut_args(eval_starts[:, k]), dtype=types.FLOAT),
                dtype=types.INT32,
            )
            for k in range(eval_starts.shape[1])
        ]
        first = fn.reshape(fn.stack(*starts), shape=[-1, 1])  # [clips, 1]
        offs = types.Constant((np.arange(T, dtype=np.int32) * stride)[None])  # [1, T]
        idx = first + offs
        if padding:  # a padded video's starts are its pad start (windows.fixed_starts): repeat frame 0
            idx = dmath.max(idx, 0)
        return fn.reshape(idx, shape=[-1])

    def eval_crop(x, px, py, m, flow: bool, raw: bool = False):
        """One eval crop at (px, py), mirrored when ``m``: [N*T, c, c, 3], normalised in the output dtype, or
        (``raw``) 8-bit values. Flow: x negated on mirrored crops with flow_flip_negate ((255 - v - mu) / s =
        (v - (255 - mu)) / -s), then the constant channel (normalised) where data.flow_layout puts it."""
        layout = spec.data.flow_layout
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
            const = (
                (FLOW_CONST[layout] - mu[ik]) / sd[ik] if layout is FlowLayout.released else -mu[ik] / sd[ik]
            )
            mean = [255.0 - mean[ix] if neg else mean[ix], mean[iy]]
            std = [-std[ix] if neg else std[ix], std[iy]]
        y = fn.crop_mirror_normalize(
            x,
            crop=[c, c],
            crop_pos_x=px,
            crop_pos_y=py,
            mirror=m,
            mean=mean,
            std=std,
            dtype=types.UINT8 if raw else out_dtype,
            output_layout="FHWC",
        )
        if flow and layout is FlowLayout.released:  # (x, y) -> (const, y, x), exact
            y = fn.coord_transform(
                y, M=FLOW_LAYOUT_M, T=[float(const), 0.0, 0.0], dtype=types.UINT8 if raw else out_dtype
            )
        elif flow:
            y = fn.pad(y, axis_names="C", shape=[3], fill_value=0 if raw else float(const))
        return y

    def jittered_crop(x, px, py, m, flow: bool, jitter):
        """With the test-time jitter: the 8-bit crop, the released jitter steps where the draw says, then the
        normalisation. jitter: this crop's (jit, *steps) from EvalJitterSource."""
        y = eval_crop(x, px, py, m, flow, raw=True)
        jit, *steps = jitter
        if jit:
            y = jitter_steps(y, *steps)
        mu, sd = (
            flow_norm(spec.data.flow_normalisation, spec.data.flow_layout)
            if flow
            else (np.array(RGB_MEAN), np.array(RGB_STD))
        )
        scale = 1.0 / np.asarray(sd, np.float64)
        return fn.coord_transform(
            y, M=np.diag(scale).reshape(-1).tolist(), T=(-np.asarray(mu) * scale).tolist(), dtype=out_dtype
        )

    def eval_crops(x, flow: bool, jitter=None):
        """[N*T, H, W, *] -> list of (crop, mirrored) outputs [N*T, c, c, C]; jitter: per crop the test-time
        jitter draws (EvalJitterSource), or None."""
        shorter = eval_resize(c, spec.data.eval.crop_fraction)
        if min(spec.height, spec.width) != shorter:
            x = fn.resize(x, resize_shorter=float(shorter), antialias=True)
        if spec.tencrop:
            pos = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5)]
            crops = [(px, py, m) for (px, py) in pos for m in (0, 1)]
        else:
            crops = [(0.5, 0.5, 0)]
        if jitter is not None:
            return [jittered_crop(x, px, py, m, flow, jitter[i]) for i, (px, py, m) in enumerate(crops)]
        return [eval_crop(x, px, py, m, flow) for px, py, m in crops]

    def eval_flow_frames(x):
        """[F, 2H, W, 3] -> [F, H, W, 2] (x, y) uint8."""
        x = fn.reshape(flow_xy(x), shape=[-1, 2, spec.height, spec.width], layout="")
        return fn.transpose(x, perm=[0, 2, 3, 1], output_layout="FHWC")

    @pipeline_def(enable_conditionals=spec.train or spec.eval_jitter_prob > 0)
    def pipe():
        outs = fn.readers.webdataset(
            paths=paths,
            index_paths=index_paths,
            ext=exts,
            dtypes=dtypes,
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
        nframes = fn.lookup_table(fn.cast(index, dtype=types.INT32), **lut, dtype=types.FLOAT)
        results = []
        if spec.train:
            source = ViewSource(spec, batch_size, seed)
            k, o = len(source.keys), int(spec.num_views > 1)  # o: the leading `same` output
            src = fn.external_source(source=source, num_outputs=o + k * spec.num_views, batch=True)
            draws = [dict(zip(source.keys, src[o + k * v : o + k * (v + 1)])) for v in range(spec.num_views)]
            pad = pad_of(index) if padding else None
            starts = draw_starts(nframes, src[0] if o else None, pad)
            if spec.data.union_decode and spec.num_views > 1:
                lo, hi = starts[0], starts[0]
                for s in starts[1:]:
                    lo, hi = dmath.min(lo, s), dmath.max(hi, s)
                hi = hi + spec.span
                # one window when it is no longer than the views decoded one by one (always for a padded video:
                # all its views start at its pad start)
                use_union = (hi - lo) <= spec.num_views * spec.span
                if use_union:
                    decoded = [
                        decode_views(e, starts, (lo, hi), s == Stream.flow, clamp=padding)
                        for s, e in zip(spec.streams, encoded)
                    ]
                else:
                    decoded = [
                        decode_views(e, starts, None, s == Stream.flow) for s, e in zip(spec.streams, encoded)
                    ]
            elif padding:
                # a padded video needs the clamped gather; its views share one start, so the window is one span
                short = pad < 0
                if short:
                    decoded = [
                        decode_views(e, starts, (pad, pad + spec.span), s == Stream.flow, clamp=True)
                        for s, e in zip(spec.streams, encoded)
                    ]
                else:
                    decoded = [
                        decode_views(e, starts, None, s == Stream.flow) for s, e in zip(spec.streams, encoded)
                    ]
            else:
                decoded = [
                    decode_views(e, starts, None, s == Stream.flow) for s, e in zip(spec.streams, encoded)
                ]
            per_stream = dict(zip(spec.streams, decoded))
            # one crop window per view for both streams (the released code's shared sequence), or one each
            if released_crop:  # windows drawn on the host (ViewSource: one per view, shared when aligned)
                shared = None
            else:
                shared = [crop_window() for _ in range(spec.num_views)] if spec.aug.align_streams else None
            for stream in spec.streams:
                if released_crop:
                    windows = [host_window(draws[v], stream.value) for v in range(spec.num_views)]
                else:
                    windows = shared or [crop_window() for _ in range(spec.num_views)]
                aug = augment_rgb if stream == Stream.rgb else augment_flow
                results += [aug(v, windows[i], draws[i]) for i, v in enumerate(per_stream[stream])]
        else:
            idx = eval_indices(index)
            ncrops = 10 if spec.tencrop else 1
            jitter = None  # per stream, per crop: (jit, kind, b, c, m)
            if spec.eval_jitter_prob > 0:
                source = EvalJitterSource(spec, batch_size, ncrops, seed)
                src = fn.external_source(source=source, num_outputs=source.num_outputs(), batch=True)
                w = 1 + len(STEP_FIELDS)  # jit, then the steps' fields, per (stream, crop)
                draws = [tuple(src[w * j : w * (j + 1)]) for j in range(len(spec.streams) * ncrops)]
                jitter = [draws[i * ncrops : (i + 1) * ncrops] for i in range(len(spec.streams))]
            for si, (stream, enc) in enumerate(zip(spec.streams, encoded)):
                # pad_mode none: a file that ends before its .json's frame count gives a shorter sequence, and
                # the frame lookup below fails on it (the loader then names the file); the default pads
                # it with zeros, silently
                video = fn.decoders.video(
                    enc,
                    device=decoder_device,
                    start_frame=0,
                    end_frame=fn.cast(nframes, dtype=types.INT32),
                    pad_mode="none",
                )
                video = fn.sequence_rearrange(video, new_order=idx)
                if stream == Stream.flow:
                    video = eval_flow_frames(video)
                video = to_device(video)
                crops = eval_crops(video, flow=stream == Stream.flow, jitter=jitter[si] if jitter else None)
                y = crops[0] if len(crops) == 1 else fn.cat(*crops, axis_name="F")
                if spec.data.eval.windows is EvalWindows.overlap:
                    y = fn.pad(y, axis_names="F", fill_value=0.0)  # to the batch's longest sample
                results.append(y)
        return (*results, label, index)

    return pipe(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch,
    )
