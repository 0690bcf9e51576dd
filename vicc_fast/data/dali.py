"""NVIDIA DALI pipelines: WebDataset shards -> decoded, frame-consistently augmented, aligned RGB/flow views.

One graph serves the CPU backend (``device_id=None``) and the GPU (``device="mixed"`` decoding, augmentation on
the GPU); the only difference is the decoder's device. Every output is per-sample ``FHWC`` so that PyTorch sees
``[B, T, H, W, C]`` and a permute gives ``[B, C, T, H, W]`` in ``channels_last_3d`` without a copy.

Train graph, per sample (one video):
    lbl -> (label, index) -> frames = LUT[index]
    starts: view 0 uniform in [0, frames - span]; view v > 0 the same start with ``same_start_prob``,
            else its own uniform draw (span = (T - 1) * stride + 1)
    decode: when all views fit in one window no longer than the views decoded one by one (``union_decode``)
            the window is decoded once and each view is gathered from it (``sequence_rearrange``); else each
            view is decoded on its own with ``start_frame`` / ``sequence_length`` / ``stride``. RGB and flow
            use the same starts, so view v of both streams covers the same frames.
    RGB:  random resized crop -> colour jitter (p) with grayscale (p) folded into its saturation -> Gaussian
          blur (p) -> flip + normalise (``crop_mirror_normalize``), all parameters per sample, so every frame
          of a clip gets the same crop / flip / colours.
    flow: the (2H) x W frame holds x above y: reshape [T, 2H, W, 3] -> [2T, H, W, 3] (free) so that one random
          resized crop applies the same window to both halves; keep channel 0 (x and y sit in luma; the
          decoder's RGB has R = G = B); [2T, c, c, 1] -> [T, c, c, 2]; flip, normalise with the x std negated
          on flipped samples (v -> 255 - v is x -> -x after normalising), append the zero third channel.

Eval graph: the whole video is decoded once and ``eval_clips`` uniformly spaced clips are gathered from it; centre
crop, or ten-crop (4 corners + centre, each also flipped); output per sample [clips * crops * T, c, c, 3].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vicc_fast.config import Stream

RGB_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
RGB_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
FLOW_MEAN = 127.5  # stored flow coding: 0 motion <-> 127.5; [0, 255] -> [-1, 1]
FLOW_STD = 127.5
MAX_LUT_KEYS = 65536  # fn.lookup_table keys live in [0, 65535]


@dataclass(frozen=True)
class PipeSpec:
    """Everything a pipeline graph depends on (no config objects inside the graph code)."""

    train: bool
    streams: tuple[Stream, ...]
    num_views: int
    num_frames: int
    stride: int
    crop_size: int
    crop_scale: tuple[float, float]
    aspect_ratio: tuple[float, float]
    same_start_prob: float
    hflip: bool
    color_jitter_prob: float
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale_prob: float
    blur_prob: float
    blur_sigma: tuple[float, float]
    union_decode: bool
    eval_clips: int
    tencrop: bool
    half: bool  # float16 output (else float32)
    height: int  # stored video size (crop/resize decisions at graph build time)
    width: int

    @property
    def span(self) -> int:
        return (self.num_frames - 1) * self.stride + 1

    def output_names(self) -> list[str]:
        names = [f"{s.value}{v}" for s in self.streams for v in range(self.num_views if self.train else 1)]
        return [*names, "label", "index"]


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
):
    """Build (not yet start) the DALI pipeline of ``spec`` over ``paths``; outputs as ``spec.output_names()``."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dmath

    decoder_device = "cpu" if device_id is None else "mixed"
    lut = frames_lut_args(frames)
    exts = [f"{s.value}.webm" for s in spec.streams] + ["lbl"]
    dtypes = [types.UINT8] * len(spec.streams) + [types.INT64]
    out_dtype = types.FLOAT16 if spec.half else types.FLOAT
    c = spec.crop_size
    T = spec.num_frames

    def coin(p: float):
        return fn.random.coin_flip(probability=float(p), dtype=types.BOOL)

    def uniform(lo: float, hi: float):
        return fn.random.uniform(range=[float(lo), float(hi)])

    # ------------------------------------------------------------------ temporal sampling
    def draw_starts(nframes):
        room = nframes - float(spec.span - 1)  # number of valid starts (>= 1, checked on the host)

        def one():
            s = fn.cast(fn.random.uniform(range=[0.0, 1.0]) * room, dtype=types.INT32)
            return dmath.min(s, fn.cast(room, dtype=types.INT32) - 1)

        starts = [one()]
        for _ in range(1, spec.num_views):
            if spec.same_start_prob >= 1:
                starts.append(starts[0])
                continue
            same = fn.cast(coin(spec.same_start_prob), dtype=types.INT32)
            starts.append(same * starts[0] + (1 - same) * one())
        return starts

    def decode_views(encoded, starts, union):
        """One clip per view: [T, h, w, 3] uint8, frames start + j * stride."""
        if union is None:
            return [
                fn.decoders.video(
                    encoded,
                    device=decoder_device,
                    start_frame=s,
                    sequence_length=T,
                    stride=spec.stride,
                    pad_mode="none",
                )
                for s in starts
            ]
        lo, hi = union
        window = fn.decoders.video(
            encoded, device=decoder_device, start_frame=lo, end_frame=hi, pad_mode="none"
        )
        offs = types.Constant(np.arange(T, dtype=np.int32) * spec.stride)
        return [fn.sequence_rearrange(window, new_order=(s - lo) + offs) for s in starts]

    # ------------------------------------------------------------------ spatial augmentation
    def rrc(x):
        return fn.random_resized_crop(
            x,
            size=[c, c],
            random_area=list(spec.crop_scale),
            random_aspect_ratio=list(spec.aspect_ratio),
            antialias=False,
        )

    def flip_flag():
        return fn.cast(coin(0.5), dtype=types.INT32) if spec.hflip else None

    def augment_rgb(x):
        x = rrc(x)
        if spec.color_jitter_prob > 0 or spec.grayscale_prob > 0:
            jit = fn.cast(coin(spec.color_jitter_prob), dtype=types.FLOAT)
            gray = fn.cast(coin(spec.grayscale_prob), dtype=types.FLOAT)

            def factor(strength):
                return 1.0 + jit * (uniform(max(0.0, 1 - strength), 1 + strength) - 1.0)

            bri, con, sat = factor(spec.brightness), factor(spec.contrast), factor(spec.saturation)
            hue = jit * uniform(-spec.hue * 360.0, spec.hue * 360.0)  # DALI hue is in degrees
            sat = sat * (1.0 - gray)
            if fn.cast(jit + gray, dtype=types.BOOL):
                x = fn.color_twist(x, brightness=bri, contrast=con, saturation=sat, hue=hue)
        if spec.blur_prob > 0:
            sigma = uniform(*spec.blur_sigma)
            if coin(spec.blur_prob):
                x = fn.gaussian_blur(x, sigma=sigma)
        flip = flip_flag()
        return fn.crop_mirror_normalize(
            x,
            mirror=flip if flip is not None else 0,
            mean=list(RGB_MEAN),
            std=list(RGB_STD),
            dtype=out_dtype,
            output_layout="FHWC",
        )

    def flow_xy(x):
        """[T, 2H, W, 3] -> [2T, H, W, 1]: x_0, y_0, x_1, y_1, ... as frames, luma channel only."""
        x = fn.reshape(x, rel_shape=[2, 0.5, 1, 1], layout="FHWC")
        return x[:, :, :, 0:1]

    def finish_flow(x, flip):
        """[2T, c, c, 1] uint8 -> [T, c, c, 3] normalised (x, y, 0); x negated when flipped."""
        x = fn.reshape(x, shape=[T, 2, c, c], layout="")
        x = fn.transpose(x, perm=[0, 2, 3, 1], output_layout="FHWC")
        if flip is None:
            std = [FLOW_STD, FLOW_STD]
            mirror = 0
        else:
            std = fn.stack(
                FLOW_STD * (1.0 - 2.0 * fn.cast(flip, dtype=types.FLOAT)), types.Constant(FLOW_STD)
            )
            mirror = flip
        x = fn.crop_mirror_normalize(
            x, mirror=mirror, mean=[FLOW_MEAN, FLOW_MEAN], std=std, dtype=out_dtype, output_layout="FHWC"
        )
        return fn.pad(x, axis_names="C", shape=[3], fill_value=0.0)

    def augment_flow(x):
        return finish_flow(rrc(flow_xy(x)), flip_flag())

    # ------------------------------------------------------------------ eval
    def eval_indices(nframes):
        n = spec.eval_clips
        frac = np.repeat(np.linspace(0.0, 1.0, n) if n > 1 else np.array([0.5]), T).astype(np.float32)
        offs = np.tile(np.arange(T, dtype=np.int32) * spec.stride, n)
        first = fn.cast(types.Constant(frac) * (nframes - float(spec.span)), dtype=types.INT32)
        return first + types.Constant(offs)

    def eval_crops(x, flow: bool):
        """[N*T, H, W, *] -> list of (crop, mirrored) outputs [N*T, c, c, C]."""
        if min(spec.height, spec.width) != c:
            x = fn.resize(x, resize_shorter=float(c), antialias=True)
        if spec.tencrop:
            pos = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5)]
            crops = [(px, py, m) for (px, py) in pos for m in (0, 1)]
        else:
            crops = [(0.5, 0.5, 0)]
        outs = []
        for px, py, m in crops:
            if flow:
                mean, std = [FLOW_MEAN, FLOW_MEAN], [FLOW_STD * (-1.0 if m else 1.0), FLOW_STD]
            else:
                mean, std = list(RGB_MEAN), list(RGB_STD)
            y = fn.crop_mirror_normalize(
                x,
                crop=[c, c],
                crop_pos_x=px,
                crop_pos_y=py,
                mirror=m,
                mean=mean,
                std=std,
                dtype=out_dtype,
                output_layout="FHWC",
            )
            outs.append(fn.pad(y, axis_names="C", shape=[3], fill_value=0.0) if flow else y)
        return outs

    def eval_flow_frames(x):
        """[F, 2H, W, 3] -> [F, H, W, 2] (x, y) uint8."""
        x = fn.reshape(flow_xy(x), shape=[-1, 2, spec.height, spec.width], layout="")
        return fn.transpose(x, perm=[0, 2, 3, 1], output_layout="FHWC")

    @pipeline_def(enable_conditionals=spec.train)
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
            starts = draw_starts(nframes)
            if spec.union_decode and spec.num_views > 1:
                lo, hi = starts[0], starts[0]
                for s in starts[1:]:
                    lo, hi = dmath.min(lo, s), dmath.max(hi, s)
                hi = hi + spec.span
                # one window when it is no longer than the views decoded one by one
                use_union = (hi - lo) <= spec.num_views * spec.span
                if use_union:
                    decoded = [decode_views(e, starts, (lo, hi)) for e in encoded]
                else:
                    decoded = [decode_views(e, starts, None) for e in encoded]
            else:
                decoded = [decode_views(e, starts, None) for e in encoded]
            per_stream = dict(zip(spec.streams, decoded))
            for stream in spec.streams:
                aug = augment_rgb if stream == Stream.rgb else augment_flow
                results += [aug(v) for v in per_stream[stream]]
        else:
            idx = eval_indices(nframes)
            for stream, enc in zip(spec.streams, encoded):
                video = fn.decoders.video(
                    enc, device=decoder_device, start_frame=0, end_frame=fn.cast(nframes, dtype=types.INT32)
                )
                video = fn.sequence_rearrange(video, new_order=idx)
                if stream == Stream.flow:
                    video = eval_flow_frames(video)
                crops = eval_crops(video, flow=stream == Stream.flow)
                results.append(crops[0] if len(crops) == 1 else fn.cat(*crops, axis_name="F"))
        return (*results, label, index)

    return pipe(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch,
    )
