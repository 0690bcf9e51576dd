"""The original data path, as a baseline we measure ourselves: JPEG frames in LMDB, PIL, DataLoader workers.

What the released ViCC loader does (it builds on CoCLR's), written by us from its description:

- storage: one LMDB per stream; per video one key (``%09d``, the sample index) holding a msgpack list of JPEG
  frames; flow frames are RGB JPEGs of (x, y, 0) in the stored [0, 255] coding; meta keys ``__len__``,
  ``__vlen__`` (frames per video), ``__labels__``;
- per sample: both streams' frame lists read in one transaction, two clips sampled independently (a uniform
  start each, T frames at the stride), every frame decoded by PIL, then frame-consistent transforms per clip on
  PIL images, RGB and flow of one clip as one sequence (the same crop and flip): random resized crop, horizontal
  flip, colour jitter (p) and grayscale (p) on RGB, to tensor, normalise;
- a ``torch.utils.data.DataLoader`` with ``data.threads`` worker processes batches the samples.

:func:`build` converts our shards into that layout (so both read the same videos); :class:`JpegLmdbLoader`
iterates ``Batch`` like the project's loaders, so ``python -m vicc_fast.bench loader --backends
dali,torch,jpeg_lmdb`` measures the three the same way. A benchmark baseline only: it is not a training backend.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vicc_fast.config import Config, Stream
from vicc_fast.data.batch import Batch

JPEG_QUALITY = 90
META = ("__len__", "__vlen__", "__labels__")


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
            flow = np.concatenate([q, np.zeros_like(q[..., :1])], -1)  # (x, y, 0), as the released data
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


class _Clips:
    """Frame-consistent transforms of one clip on PIL images, as the released code's ``consistent`` PIL
    transforms: one crop window, flip and colour draw per clip, applied frame by frame."""

    def __init__(self, cfg: Config) -> None:
        from vicc_fast.data.augment import RGB_MEAN, RGB_STD

        self.d = cfg.data
        self.mean = torch.tensor(RGB_MEAN).view(3, 1, 1) / 255
        self.std = torch.tensor(RGB_STD).view(3, 1, 1) / 255

    def _window(self, w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop draw: (left, top, width, height)."""
        area = w * h
        lo, hi = self.d.crop_scale
        r_lo, r_hi = (math.log(x) for x in self.d.aspect_ratio)
        for _ in range(10):
            a = area * rng.uniform(lo, hi)
            ratio = math.exp(rng.uniform(r_lo, r_hi))
            cw, ch = round(math.sqrt(a * ratio)), round(math.sqrt(a / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
        s = min(w, h)
        return (w - s) // 2, (h - s) // 2, s, s

    def __call__(self, rgb: list, flow: list, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """PIL frames of one clip -> RGB [3, T, c, c] normalised and flow [3, T, c, c] in [-1, 1]."""
        import torchvision.transforms.functional as TF
        from PIL import Image

        c = self.d.crop_size
        x, y, cw, ch = self._window(*rgb[0].size, rng)
        flip = self.d.hflip and rng.random() < 0.5
        jitter = rng.random() < self.d.color_jitter_prob
        gray = rng.random() < self.d.grayscale_prob
        b, k, s = (
            rng.uniform(max(0.0, 1 - f), 1 + f)
            for f in (self.d.brightness, self.d.contrast, self.d.saturation)
        )
        hue = rng.uniform(-self.d.hue, self.d.hue)

        def geom(im):
            im = im.resize((c, c), Image.BILINEAR, box=(x, y, x + cw, y + ch))
            return im.transpose(Image.FLIP_LEFT_RIGHT) if flip else im

        out_rgb = []
        for im in rgb:
            im = geom(im)
            if jitter:
                im = TF.adjust_hue(
                    TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(im, b), k), s), hue
                )
            if gray:
                im = TF.to_grayscale(im, num_output_channels=3)
            out_rgb.append((TF.to_tensor(im) - self.mean) / self.std)
        out_flow = []
        for im in flow:
            t = TF.to_tensor(geom(im)) * 2 - 1  # [0, 255] coding -> [-1, 1]
            if flip:
                t[0] = -t[0]
            t[2] = 0
            out_flow.append(t)
        return torch.stack(out_rgb, 1), torch.stack(out_flow, 1)


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
        self.clips = _Clips(cfg)

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
                for s in Stream
            }
        rng = np.random.default_rng([self.seed, i])
        d = self.cfg.data
        span = (d.num_frames - 1) * d.stride + 1
        raw = {}
        for s in Stream:  # the released two-stream dataset reads both streams for every sample
            with self.envs[s].begin() as txn:
                raw[s] = msgpack.loads(txn.get(_key(self.keys[i])))
        out: dict[str, Any] = {"label": self.labels[i], "index": self.keys[i]}
        for v in range(self.num_views):
            start = int(rng.integers(0, self.vlen[i] - span + 1))
            idx = range(start, start + span, d.stride)
            rgb = [Image.open(io.BytesIO(raw[Stream.rgb][j])).convert("RGB") for j in idx]
            flow = [Image.open(io.BytesIO(raw[Stream.flow][j])).convert("RGB") for j in idx]
            r, f = self.clips(rgb, flow, rng)
            out[f"rgb{v}"], out[f"flow{v}"] = r, f
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
