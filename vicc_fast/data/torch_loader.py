"""The plain PyTorch input pipeline: ``webdataset`` reads the shards, PyAV decodes, torchvision.transforms.v2
crops, flips and blurs, a ``DataLoader`` runs ``data.threads`` worker processes (started by a forkserver: a
fork of a process running other threads, DALI's say, copies their locks mid-use). The fallback
(``data.backend=torch``) and the baseline the DALI pipeline is measured against; same samples per rank, same clip
sampling, same augmentation semantics and output as vicc_fast/data/dali.py: the same host-side draws
(vicc_fast/data/augment.py: controller, flips, blur, colour maps) and crop-window rule, from its own generator.
"""

from __future__ import annotations

import functools
import io
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from vicc_fast.config import DataConfig, FlowLayout, Stream
from vicc_fast.data.augment import (
    FLOW_CONST,
    HOST_CROPS,
    LUMA,
    RGB_MEAN,
    RGB_STD,
    draw_eval_jitter,
    flow_norm,
)
from vicc_fast.data.base import BaseLoader
from vicc_fast.data.batch import Batch
from vicc_fast.data.dali import eval_resize
from vicc_fast.data.manifest import BadSampleError, DataError, rank_range
from vicc_fast.data.windows import clip_indices, overlap_starts
from vicc_fast.owner import exit_with_owner


class VideoDecodeError(RuntimeError):
    pass


def decode_window(data: bytes, start: int, stop: int, flow: bool) -> np.ndarray:
    """Frames ``[start, stop)`` of a VP9 WebM: RGB ``[n, H, W, 3]`` or, for flow, the luma ``[n, 2H, W]``
    (x above y, stored full range: luma is the value itself, no colour conversion needed).

    Seeks to the keyframe at or before ``start`` and decodes forward; frame numbers come from timestamps."""
    import av

    out = []
    try:
        with av.open(io.BytesIO(data), "r") as c:
            s = c.streams.video[0]
            s.thread_type = "NONE"  # workers are the parallelism; decoder threads would oversubscribe
            rate, tb = s.average_rate or s.guessed_rate, s.time_base
            seek = start > 0 and rate is not None and tb is not None
            if seek:
                c.seek(int(start / rate / tb), stream=s, backward=True, any_frame=False)
            for n, frame in enumerate(c.decode(s)):
                i = round(float(frame.pts * tb * rate)) if seek and frame.pts is not None else n
                if i >= stop:
                    break
                if i < start:
                    continue
                if flow:
                    p = frame.planes[0]
                    y = np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[: frame.height, : frame.width]
                    out.append(y.copy())
                else:
                    out.append(frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(str(exc)) from None
    if len(out) != stop - start:
        raise VideoDecodeError(f"decoded {len(out)} of frames [{start}, {stop})")
    return np.stack(out)


class _Augment:
    """Per-view augmentation of ``[T, C, H, W]`` uint8 clips with the host draws of
    :func:`vicc_fast.data.augment.draw_views` (the DALI graph's draws and colour maps): one crop window, flip,
    blur and colour map per clip, so every frame of a clip gets the same ones."""

    def __init__(self, d: DataConfig, train: bool, clips: int, tencrop: bool, out_dtype: torch.dtype) -> None:
        self.d, self.a, self.train, self.tencrop, self.out_dtype = d, d.augment, train, tencrop, out_dtype
        self.rgb_mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1)
        self.rgb_std = torch.tensor(RGB_STD).view(1, 3, 1, 1)

    @property
    def v2(self) -> Any:
        """torchvision.transforms.v2, imported where it runs (a module does not pickle to a worker)."""
        from torchvision.transforms import v2

        return v2

    def _spatial(
        self, v: torch.Tensor, window: tuple[int, int, int, int], flip: bool, blur: float
    ) -> torch.Tensor:
        """Crop ``window`` (top, left, h, w) resized to c x c, flipped, blurred with sigma ``blur`` (0 = none)."""
        c = self.d.crop_size
        if self.a.crop in HOST_CROPS:  # PIL's Image.BICUBIC resize, antialiased as PIL's is
            v = self.v2.functional.resized_crop(
                v, *window, [c, c], interpolation=self.v2.InterpolationMode.BICUBIC, antialias=True
            )
        else:
            v = self.v2.functional.resized_crop(v, *window, [c, c], antialias=False)
        if flip:
            v = v.flip(-1)
        return self._blur(v, blur)

    def _affine(self, v: torch.Tensor, m: np.ndarray, t: np.ndarray) -> torch.Tensor:
        """[T, 3, c, c] pixels -> ``M x + t`` per pixel -> [T, c, c, 3] in the output dtype; M [3, 3], t [3], or
        one map per frame (M [T, 3, 3], t [T, 3]: the grayscale channel drawn per frame)."""
        if m.ndim == 3:
            y = torch.einsum("tij,tjhw->thwi", torch.from_numpy(m).float(), v.float())
            return (y + torch.from_numpy(t).float()[:, None, None, :]).to(self.out_dtype)
        y = (
            torch.einsum("ij,tjhw->thwi", torch.from_numpy(m).float(), v.float())
            + torch.from_numpy(t).float()
        )
        return y.to(self.out_dtype)

    def _flow_image(self, v: torch.Tensor) -> torch.Tensor:
        """[T, 2, c, c] (x, y) -> [T, 3, c, c] the flow image of data.flow_layout: (x, y, 0) | released
        (128, y, x)."""
        if self.d.flow_layout is FlowLayout.released:
            const = int(FLOW_CONST[FlowLayout.released])
            return torch.cat([torch.full_like(v[:, :1], const), v[:, 1:2], v[:, :1]], 1)
        return torch.cat([v, torch.zeros_like(v[:, :1])], 1)

    def _blur(self, v: torch.Tensor, sigma: float) -> torch.Tensor:
        if sigma <= 0:
            return v
        k = 2 * math.ceil(3 * float(self.a.blur_sigma[1])) + 1
        return self.v2.functional.gaussian_blur(v, [k, k], [sigma, sigma])

    @staticmethod
    def _jitter_steps(v: torch.Tensor, steps: Any) -> torch.Tensor:
        """The released jitter's steps (one sample's augment.JitterSteps; augment.jitter_steps_np is the
        reference): [T, 3, c, c] -> float [T, 3, c, c] of 8-bit values."""
        from vicc_fast.data.augment import STEP_BC, STEP_MATRIX

        y = v.float()
        luma = torch.tensor(LUMA).view(1, 3, 1, 1)
        for kind, b, c in zip(steps.kind, steps.b, steps.c):
            if kind == STEP_BC:
                centre = torch.floor((y.mean(dim=(2, 3), keepdim=True) * luma).sum(1, keepdim=True) + 0.5)
                y = float(b) * (centre + float(c) * (y - centre))
            elif kind == STEP_MATRIX:
                y = torch.einsum("ij,tjhw->tihw", torch.from_numpy(np.asarray(steps.m)).float(), y)
            y = torch.floor(y + 0.5).clamp(0, 255)  # halves up, as the reference and DALI
        return y

    def _view(
        self, v: torch.Tensor, window: tuple[int, int, int, int], draw: Any, i: int, stream: str
    ) -> torch.Tensor:
        """One view of ``stream``: crop, flip, then (one-map jitter) blur and the map, or (released jitter)
        the jitter steps on the flow image (data.flow_layout) / RGB image, blur, the map (grayscale,
        normalisation)."""
        sigma = float(draw.sigma[i]) if getattr(draw, f"blur_{stream}")[i] else 0.0
        flip = bool(getattr(draw, f"flip_{stream}")[i])
        m, t = getattr(draw, f"{stream}_m")[i], getattr(draw, f"{stream}_t")[i]
        jit = getattr(draw, f"jit_{stream}")
        v = self._spatial(v, window, flip, 0.0 if jit is not None else sigma)
        if stream == "flow":
            v = self._flow_image(v)
        if jit is not None:
            if jit[i]:
                v = self._jitter_steps(v, getattr(draw, f"{stream}_steps")[i])
            v = self._blur(v.float(), sigma)
        return self._affine(v, m, t)

    def rgb(self, v: torch.Tensor, window: tuple[int, int, int, int], draw: Any, i: int) -> torch.Tensor:
        """[T, 3, H, W] uint8 -> [T, c, c, 3] normalised; ``draw``: the view's ViewDraw, sample ``i``."""
        return self._view(v, window, draw, i, "rgb")

    def flow(self, v: torch.Tensor, window: tuple[int, int, int, int], draw: Any, i: int) -> torch.Tensor:
        """[T, 2, H, W] uint8 (x, y) -> [T, c, c, 3]: the flow image (_flow_image) through the view's flow map."""
        return self._view(v, window, draw, i, "flow")

    def _eval_crop(self, crop: torch.Tensor, mirror: bool, flow: bool, steps: Any = None) -> torch.Tensor:
        """One eval crop [N*T, C, c, c] uint8 -> [N*T, c, c, 3] normalised: mirrored, flow's x negated on
        mirrored crops with ``flow_flip_negate``, made the flow image of data.flow_layout, the released test-time
        jitter ``steps`` (one sample's augment.JitterSteps) when given, the normalisation."""
        v = crop.float()
        if mirror:
            v = v.flip(-1)
        if flow:
            if mirror and self.a.flow_flip_negate:
                v[:, 0] = 255.0 - v[:, 0]
            v = self._flow_image(v)
            mean, std = (
                torch.tensor(a).float().view(1, 3, 1, 1)
                for a in flow_norm(self.d.flow_normalisation, self.d.flow_layout)
            )
        else:
            mean, std = self.rgb_mean, self.rgb_std
        if steps is not None:
            v = self._jitter_steps(v, steps)
        return ((v - mean) / std).permute(0, 2, 3, 1).to(self.out_dtype)

    def eval(self, v: torch.Tensor, flow: bool, rng: np.random.Generator | None = None) -> torch.Tensor:
        """[N*T, C, H, W] -> [crops*N*T, c, c, 3]: centre crop, or 4 corners + centre each also flipped; with
        ``data.eval.color_jitter_prob`` each crop gets the released test-time jitter draw from ``rng``."""
        v2, c = self.v2, self.d.crop_size
        shorter = eval_resize(c, self.d.eval.crop_fraction)
        if min(v.shape[-2:]) != shorter:
            v = v2.functional.resize(v, shorter, antialias=True)
        h, w = v.shape[-2:]
        if self.tencrop:
            pos = [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c), ((h - c + 1) // 2, (w - c + 1) // 2)]
            wins = [(y, x, m) for (y, x) in pos for m in (False, True)]
        else:
            wins = [((h - c + 1) // 2, (w - c + 1) // 2, False)]
        outs = []
        prob = float(self.d.eval.color_jitter_prob)
        for y, x, m in wins:
            steps = None
            if prob > 0:  # the released test-time jitter: one draw per video, stream and crop
                if rng is None:
                    raise ValueError("the eval-mode colour jitter needs the sample's generator")
                jit, drawn = draw_eval_jitter(rng, 1, prob, self.d.eval.color_jitter)
                steps = drawn[0] if jit[0] else None
            outs.append(self._eval_crop(v[..., y : y + c, x : x + c], m, flow, steps))
        return torch.cat(outs)


class _ClipDataset(torch.utils.data.IterableDataset):
    """This rank's samples (the same contiguous range of the epoch's shard order as DALI's shard_id split),
    spread over the DataLoader workers, shuffled in a buffer seeded by (seed, epoch, rank, worker)."""

    def __init__(self, owner: TorchLoader) -> None:
        self.o = owner
        self.paths = [str(s.tar) for s in owner.shard_sequence()]
        self.lo, self.hi = rank_range(owner.num_samples, owner.rank, owner.world)
        self.seed = owner.epoch_seed()

    def _samples(self, worker: int, nworkers: int) -> Iterator[dict]:
        import webdataset as wds

        ds = wds.WebDataset(
            self.paths, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False
        )
        pos = 0
        for sample in ds:
            if self.o.excluded.get(sample["__key__"]) is not None:
                continue
            if self.lo <= pos < self.hi and (pos - self.lo) % nworkers == worker:
                yield sample
            pos += 1
            if pos >= self.hi:
                break

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, nworkers = (info.id, info.num_workers) if info else (0, 1)
        torch.manual_seed(self.seed * 1009 + worker)
        rng = np.random.default_rng([self.seed, worker])
        src = self._samples(worker, nworkers)
        if not self.o.train:
            yield from (self.o.process(s, rng) for s in src)
            return
        buf: list[dict] = []
        size = max(1, self.o.cfg.data.shuffle_buffer // nworkers)
        for s in src:
            buf.append(s)
            if len(buf) >= size:
                yield self.o.process(buf.pop(int(rng.integers(len(buf)))), rng)
        while buf:
            yield self.o.process(buf.pop(int(rng.integers(len(buf)))), rng)


def _worker_context() -> Any:
    """The forkserver context, its server importing what a worker runs (torch, torchvision, PyAV, this module)
    once, so that each worker forked from it starts in milliseconds rather than re-importing them."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["vicc_fast.data.torch_loader", "torchvision.transforms.v2", "av"])
    return ctx


def _worker_init(owner: int, worker_id: int) -> None:
    """Each worker exits with the loader's process (vicc_fast/owner.py: a forkserver's worker outlived a
    SIGKILLed owner, and kept the server alive)."""
    exit_with_owner(owner)


def _shutdown(it: Any) -> None:
    """Stop a DataLoader iterator's worker processes now (single-process iterators have none)."""
    stop = getattr(it, "_shutdown_workers", None)
    if stop is not None:
        stop()


class TorchLoader(BaseLoader):
    """``data.backend=torch``: the DataLoader baseline with the DALI loader's interface and semantics."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.aug = _Augment(self.cfg.data, self.train, self.clips, self.crops == 10, self.dtype)
        video = self.manifest.video
        self.split_size = (int(video.get("height", 128)), int(video.get("width", 171)))  # stored frame size

    # ------------------------------------------------------------------ per sample (in a worker)
    def _starts(self, nframes: int, same: bool, pad: int, rng: np.random.Generator) -> list[int]:
        """Each view's first frame: uniform draws, or for a padded video (``pad`` < 0, BaseLoader.pad_starts) its
        pad start for every view (no draw)."""
        if pad < 0:
            return [pad] * self.num_views
        room = nframes - self.span + 1
        first = int(rng.integers(room))
        return [first] + [first if same else int(rng.integers(room)) for _ in range(1, self.num_views)]

    def process(self, sample: dict, rng: np.random.Generator) -> dict | BadSampleError:
        key = sample["__key__"]
        url = sample.get("__url__", "?")
        try:
            label, index = np.frombuffer(sample["lbl"], "<i8")
            nframes = int(self.split.frames[index])
            d, a, T = self.cfg.data, self.cfg.data.augment, self.cfg.data.num_frames
            out: dict[str, Any] = {"label": int(label), "index": int(index)}
            if self.train:
                from vicc_fast.data.augment import draw_crop_window, draw_views

                same, draws = draw_views(rng, 1, self.num_views, d)
                pad = int(self.pad_starts[index])
                starts = self._starts(nframes, bool(same[0]), pad, rng)
                h, w = self.split_size

                def window() -> tuple[int, int, int, int]:
                    return draw_crop_window(rng, h, w, tuple(a.crop_scale), tuple(a.aspect_ratio), a.crop)

                # one window per view for both streams (released code), or one per stream and view
                shared = [window() for _ in starts] if a.align_streams else None
                lo, hi = min(starts), max(starts) + self.span
                # a padded video's clip repeats frame 0: read from the window [0, hi) by clamped indices
                union = pad < 0 or (d.union_decode and (hi - lo) <= self.num_views * self.span)
                for s in self.streams:
                    data = sample[f"{s.value}.webm"]
                    flow = s == Stream.flow
                    frames = decode_window(data, max(lo, 0), hi, flow) if union else None
                    wins = shared or [window() for _ in starts]
                    for v, st in enumerate(starts):
                        if pad < 0:
                            clip = frames[clip_indices(st, T, d.stride)]
                        elif frames is not None:
                            clip = frames[st - lo : st - lo + self.span : d.stride]
                        else:
                            clip = decode_window(data, st, st + self.span, flow)[:: d.stride]
                        aug = self.aug.flow if flow else self.aug.rgb
                        out[f"{s.value}{v}"] = aug(self._to_tchw(clip, flow), wins[v], draws[v], 0)
            else:
                if self.eval_starts is not None:
                    first = self.eval_starts[index]
                else:
                    first = overlap_starts(nframes, T, d.stride)
                idx = clip_indices(first, T, d.stride).reshape(
                    -1
                )  # a padded video's one clip repeats frame 0
                for s in self.streams:
                    flow = s == Stream.flow
                    video = decode_window(sample[f"{s.value}.webm"], 0, nframes, flow)[idx]
                    out[f"{s.value}0"] = self.aug.eval(self._to_tchw(video, flow), flow, rng)
            return out
        except (VideoDecodeError, KeyError, ValueError) as exc:
            return BadSampleError(url, key, f"video fails to decode ({exc})")

    @staticmethod
    def _to_tchw(clip: np.ndarray, flow: bool) -> torch.Tensor:
        if flow:  # [n, 2H, W] -> [n, 2, H, W]: channel 0 = x (top half), 1 = y
            n, h2, w = clip.shape
            return torch.from_numpy(np.ascontiguousarray(clip.reshape(n, 2, h2 // 2, w)))
        return torch.from_numpy(clip).permute(0, 3, 1, 2)

    # ------------------------------------------------------------------ main process
    def _loader(self):
        return torch.utils.data.DataLoader(
            _ClipDataset(self),
            batch_size=None,
            num_workers=self.cfg.data.threads,
            prefetch_factor=max(1, self.cfg.data.prefetch) * self.batch_size,
            persistent_workers=False,
            # workers start from a clean server process, not a fork of this one: a fork copies this process's
            # threads' locks (DALI's, the codecs') in whatever state they are, and CI once hung on it
            multiprocessing_context=_worker_context(),  # data.threads > 0 (config.validate)
            worker_init_fn=functools.partial(_worker_init, os.getpid()),
        )

    def __iter__(self) -> Iterator[Batch]:
        steps = len(self)
        done, buf, rebuilds = 0, [], 0
        names = [f"{s.value}{v}" for s in self.streams for v in range(self.num_views)]
        while done < steps:
            got = 0
            it = iter(self._loader())
            try:
                for item in it:
                    if isinstance(item, BadSampleError):
                        if not self.skip or rebuilds >= 100:
                            raise item
                        rebuilds += 1
                        self.excluded[item.key] = item.reason
                        warnings.warn(f"skipping {item}", stacklevel=2)
                        continue
                    got += 1
                    buf.append(item)
                    if len(buf) == self.batch_size:
                        yield self._collate(buf, names)
                        buf, done = [], done + 1
                        if done == steps:
                            return
            finally:
                _shutdown(it)  # this epoch's workers stop now, not whenever the iterator is collected
            if not self.train:
                break
            if got == 0:  # skip mode left nothing usable on this rank
                raise DataError(f"split '{self.split.name}': no usable samples for rank {self.rank}")
        if buf:
            yield self._collate(buf, names)

    def _collate(self, items: list[dict], names: list[str]) -> Batch:
        views = {s: [] for s in self.streams}
        for n in names:
            s = Stream(n.rstrip("0123456789"))
            xs = [it[n] for it in items]
            longest = max(len(x) for x in xs)  # overlapping eval windows: zero-pad as the DALI graph does
            xs = [
                torch.cat([x, x.new_zeros(longest - len(x), *x.shape[1:])]) if len(x) < longest else x
                for x in xs
            ]
            views[s].append(torch.stack(xs))
        label = torch.tensor([it["label"] for it in items])
        index = torch.tensor([it["index"] for it in items])
        return self.to_batch(views, label, index)
