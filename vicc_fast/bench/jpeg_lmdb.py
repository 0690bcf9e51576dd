"""The original data path, as a baseline we measure ourselves: JPEG frames in LMDB, PIL, DataLoader workers.

What the released ViCC loader does (it builds on CoCLR's), written by us from its description:

- storage: one LMDB per stream; per video one key (``%09d``, the sample index) holding a msgpack list of JPEG
  frames; flow frames are RGB JPEGs of (x, y, 0) in the stored [0, 255] coding; meta keys ``__len__``,
  ``__vlen__`` (frames per video), ``__labels__``;
- per sample (``UCF101_2STREAM_LMDB_2CLIP`` + ``main_cross.get_transform``): both streams' frame lists read in one
  transaction (a single-stream run reads its own stream's LMDB only, as the stage-1 datasets ``UCF101LMDB_2CLIP`` /
  ``UCF101Flow_LMDB_2CLIP`` do); two clips sampled independently (a uniform start each, T frames at the stride) and
  all 4T frames decoded by PIL, even when the one-clip transform then keeps only one clip; then RGB and flow of a
  clip augmented as ONE frame sequence: one crop window (bicubic resize), one colour jitter (brightness, contrast,
  saturation, hue in random order), one grayscale (a channel split), one Gaussian blur and one flip for both
  streams. A controller picks the one-clip transform (both views from one clip, exactly one strong) or the two-clip
  transform (each view strong with p = 0.3); a view that is not strong gets crop and flip only. Flow frames are
  images to it: jittered, blurred, flipped without negating x, and normalised with the RGB ImageNet mean/std (on the
  GPU in the released code; on the host here, the same arithmetic);
- a ``torch.utils.data.DataLoader`` with ``data.threads`` worker processes batches the samples.

:func:`build` converts our shards into that layout (so both read the same videos); :class:`JpegLmdbLoader`
iterates ``Batch`` like the project's loaders, so ``python -m vicc_fast.bench loader --backends
dali,torch,jpeg_lmdb`` measures the three the same way. A benchmark baseline only: it is not a training backend.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vicc_fast.config import Config, Stream
from vicc_fast.data.augment import RGB_MEAN, RGB_STD, crop_window, flow_norm, strong_views
from vicc_fast.data.batch import Batch

JPEG_QUALITY = 90


def _key(i: int) -> bytes:
    return f"{i:09d}".encode("ascii")


def build(shard_root: str | Path, out: str | Path, split: str = "train", quality: int = JPEG_QUALITY) -> dict:
    """Our shards of ``split`` -> ``out/{rgb,flow}.lmdb`` (written to a temporary name, then renamed: an
    interrupted build leaves no half database behind). Returns sizes and the build time."""
    import lmdb
    import msgpack
    from PIL import Image

    from data_prep import codec, shards
    from vicc_fast.data.manifest import load_manifest

    out = Path(out)
    done = out / "build.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    m = load_manifest(shard_root)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    envs = {s: lmdb.open(str(tmp / f"{s.value}.lmdb"), map_size=1 << 36, subdir=True) for s in Stream}

    def jpeg(frame: np.ndarray) -> bytes:
        b = io.BytesIO()
        Image.fromarray(frame).save(b, format="JPEG", quality=quality)
        return b.getvalue()

    vlen: dict[int, int] = {}
    labels: dict[int, int] = {}
    shard_bytes = 0
    for sh in m.split(split).shards:
        shard_bytes += sh.tar.stat().st_size
        for _, mem in shards.iter_tar_samples(sh.tar):
            label, index = (int(x) for x in np.frombuffer(mem["lbl"], "<i8"))
            rgb = codec.decode_rgb(mem["rgb.webm"])
            q = codec.decode_flow(mem["flow.webm"])  # [T, H, W, 2]
            # (x, y, 0); the released JPEGs hold BGR [x, y, 128] (a constant channel all the same to the decoder)
            flow = np.concatenate([q, np.zeros_like(q[..., :1])], -1)
            for s, frames in ((Stream.rgb, rgb), (Stream.flow, flow)):
                with envs[s].begin(write=True) as txn:
                    txn.put(_key(index), msgpack.dumps([jpeg(f) for f in frames]))
            vlen[index], labels[index] = len(rgb), label
    order = sorted(vlen)
    for env in envs.values():
        with env.begin(write=True) as txn:
            txn.put(b"__len__", msgpack.dumps(len(order)))
            txn.put(b"__vlen__", msgpack.dumps([vlen[i] for i in order]))
            txn.put(b"__labels__", msgpack.dumps([labels[i] for i in order]))
            txn.put(b"__keys__", msgpack.dumps(order))
        env.sync()
        env.close()
    lmdb_bytes = sum(f.stat().st_size for f in tmp.rglob("*.mdb"))
    info = {
        "videos": len(order),
        "jpeg_quality": quality,
        "build_s": time.perf_counter() - t0,
        "lmdb_bytes": lmdb_bytes,
        "lmdb_bytes_per_video": lmdb_bytes / max(1, len(order)),
        "shard_bytes_per_video": shard_bytes / max(1, len(order)),
    }
    (tmp / "build.json").write_text(json.dumps(info, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return info


@dataclass
class _Look:
    """How one stream of one view is augmented: crop window (left, top, width, height), flip, and the strong
    augmentation's photometric draws (None where not applied): colour jitter as ((op, factor), ...) in the order
    applied, the channel a grayscale keeps, the blur radius (PIL's Gaussian radius is the sigma)."""

    window: tuple[int, int, int, int]
    flip: bool
    jitter: tuple[tuple[str, float], ...] | None = None
    gray_channel: int | None = None
    blur: float | None = None


def _draw_look(rng: np.random.Generator, d: Any, w: int, h: int, strong: bool) -> _Look:
    """One view's draws on a w x h frame from ``data.*`` (the released base transform when ``strong``, else its
    crop-and-flip-only null transform)."""
    top, left, ch, cw = crop_window(rng, h, w, tuple(d.crop_scale), tuple(d.aspect_ratio))
    flip = bool(d.hflip and rng.random() < 0.5)
    look = _Look((left, top, cw, ch), flip)
    if not strong:
        return look
    if rng.random() < d.color_jitter_prob:
        ops = [
            ("brightness", rng.uniform(max(0.0, 1 - d.brightness), 1 + d.brightness)),
            ("contrast", rng.uniform(max(0.0, 1 - d.contrast), 1 + d.contrast)),
            ("saturation", rng.uniform(max(0.0, 1 - d.saturation), 1 + d.saturation)),
            ("hue", rng.uniform(-d.hue, d.hue)),
        ]
        look.jitter = tuple(ops[k] for k in rng.permutation(4))  # torchvision's random order, as released
    if rng.random() < d.grayscale_prob:
        look.gray_channel = int(rng.integers(3))
    if rng.random() < d.blur_prob:
        look.blur = float(rng.uniform(*d.blur_sigma))
    return look


def _photometric_off(look: _Look) -> _Look:
    return _Look(look.window, look.flip)


def _augment(frames: list, look: _Look, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """PIL frames of one stream of one view -> [3, T, size, size] normalised ``(x / 255 - mean) / std``, in the
    released base transform's order: crop + bicubic resize, jitter, grayscale, blur, flip, to tensor."""
    import torchvision.transforms.functional as TF
    from PIL import Image, ImageFilter

    adjust = {
        "brightness": TF.adjust_brightness,
        "contrast": TF.adjust_contrast,
        "saturation": TF.adjust_saturation,
        "hue": TF.adjust_hue,
    }
    x, y, cw, ch = look.window
    out = []
    for im in frames:
        im = im.resize((size, size), Image.BICUBIC, box=(x, y, x + cw, y + ch))
        for op, f in look.jitter or ():
            im = adjust[op](im, f)
        if look.gray_channel is not None:  # the released RandomGray: one channel copied to all three
            im = Image.merge("RGB", [im.getchannel(look.gray_channel)] * 3)
        if look.blur is not None:
            im = im.filter(ImageFilter.GaussianBlur(radius=look.blur))
        if look.flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        out.append((TF.to_tensor(im) - mean) / std)
    return torch.stack(out, 1)


class _Views:
    """The released per-sample augmentation, with its probabilities and switches read from ``data.augment`` (whose
    defaults are the released choices; the project's loaders read the same keys, so all backends do the same
    work per sample under one config)."""

    def __init__(self, cfg: Config) -> None:
        self.d = cfg.data
        self.rgb_norm = (
            torch.tensor(RGB_MEAN).view(3, 1, 1) / 255,
            torch.tensor(RGB_STD).view(3, 1, 1) / 255,
        )
        mean, std = flow_norm(self.d.flow_normalisation)
        self.flow_norm = (
            torch.tensor(mean).float().view(3, 1, 1) / 255,
            torch.tensor(std).float().view(3, 1, 1) / 255,
        )

    def __call__(
        self, clips: list[dict[Stream, list]], rng: np.random.Generator
    ) -> list[dict[Stream, torch.Tensor]]:
        """clips: per view its decoded frames per stream (RGB and flow, or the one stream of a single-stream
        run), PIL images of one size -> per view and stream [3, T, c, c]. With probability ``same_start_prob``
        every view takes one clip, drawn among them (the released one-clip transform discards the other after
        decoding it)."""
        d, a = self.d, self.d.augment
        same = rng.random(1) < a.same_start_prob
        if same[0]:
            k = int(rng.integers(len(clips)))
            clips = [clips[k]] * len(clips)
        strong = strong_views(rng, same, len(clips), a)[:, 0]
        w, h = next(iter(clips[0].values()))[0].size
        out = []
        for frames, st in zip(clips, strong, strict=True):
            look_rgb = _draw_look(rng, a, w, h, bool(st))
            look_flow = look_rgb if a.align_streams else _draw_look(rng, a, w, h, bool(st))
            if not a.flow_photometric:
                look_flow = _photometric_off(look_flow)
            view: dict[Stream, torch.Tensor] = {}
            if Stream.rgb in frames:
                view[Stream.rgb] = _augment(frames[Stream.rgb], look_rgb, d.crop_size, *self.rgb_norm)
            if Stream.flow in frames:
                f = _augment(frames[Stream.flow], look_flow, d.crop_size, *self.flow_norm)
                if look_flow.flip and a.flow_flip_negate:  # mirrored motion: x -> 255 - x before normalising
                    mean, std = self.flow_norm
                    f[0] = (1 - (f[0] * std[0] + mean[0]) - mean[0]) / std[0]
                view[Stream.flow] = f
            out.append(view)
        return out


class _Dataset(torch.utils.data.Dataset):
    def __init__(
        self, root: Path, cfg: Config, streams: tuple[Stream, ...], num_views: int, seed: int
    ) -> None:
        import lmdb
        import msgpack

        self.root, self.cfg, self.streams, self.num_views, self.seed = root, cfg, streams, num_views, seed
        env = lmdb.open(str(root / "rgb.lmdb"), readonly=True, lock=False, subdir=True)
        with env, env.begin() as txn:
            self.vlen = msgpack.loads(txn.get(b"__vlen__"))
            self.labels = msgpack.loads(txn.get(b"__labels__"))
            self.keys = msgpack.loads(txn.get(b"__keys__"))
        self.envs: dict[Stream, Any] | None = None  # opened in each worker (an LMDB handle does not fork)
        self.views = _Views(cfg)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import lmdb
        import msgpack
        from PIL import Image

        if self.envs is None:
            self.envs = {
                s: lmdb.open(
                    str(self.root / f"{s.value}.lmdb"),
                    readonly=True,
                    lock=False,
                    readahead=False,
                    meminit=False,
                    subdir=True,
                )  # fmt: skip
                for s in self.streams
            }
        rng = np.random.default_rng([self.seed, i])
        d = self.cfg.data
        span = (d.num_frames - 1) * d.stride + 1
        # The released two-stream dataset (cross-stream stage) reads and decodes both streams of every sample;
        # its single-stream datasets (stage 1) open only their own stream's LMDB.
        raw = {}
        for s in self.streams:
            with self.envs[s].begin() as txn:
                raw[s] = msgpack.loads(txn.get(_key(self.keys[i])))
        out: dict[str, Any] = {"label": self.labels[i], "index": self.keys[i]}
        clips = []
        for _ in range(self.num_views):  # every clip is decoded, as the released double sampler's frames are
            start = int(rng.integers(0, self.vlen[i] - span + 1))
            idx = range(start, start + span, d.stride)
            clips.append({s: [Image.open(io.BytesIO(raw[s][j])).convert("RGB") for j in idx] for s in raw})
        for v, view in enumerate(self.views(clips, rng)):
            for s, x in view.items():
                out[f"{s.value}{v}"] = x
        return out


class JpegLmdbLoader:
    """The released data path over ``root`` (built by :func:`build`), iterating :class:`Batch` on the CPU."""

    def __init__(
        self,
        root: str | Path,
        cfg: Config,
        streams: tuple[Stream, ...],
        num_views: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.root, self.cfg, self.streams, self.num_views = Path(root), cfg, tuple(streams), num_views
        self.device = torch.device(device)
        self.batch_size = cfg.train.batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(_Dataset(self.root, self.cfg, self.streams, self.num_views, 0)) // self.batch_size

    def __iter__(self) -> Iterator[Batch]:
        ds = _Dataset(
            self.root, self.cfg, self.streams, self.num_views, self.cfg.train.seed * 1000 + self.epoch
        )
        g = torch.Generator().manual_seed(self.cfg.train.seed * 1000 + self.epoch)
        dl = torch.utils.data.DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=True,
            generator=g,
            num_workers=self.cfg.data.threads,
            drop_last=True,
            persistent_workers=False,
        )
        for b in dl:
            views = {s: [b[f"{s.value}{v}"] for v in range(self.num_views)] for s in self.streams}
            yield Batch(views=views, label=b["label"], index=b["index"]).to(self.device)
