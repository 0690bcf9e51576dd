"""Choose and build the input pipeline: the one entry point the engine and evaluation call.

Contract (the engine and the evaluation build against this; the data issue implements it):

    loader = build_loader(cfg, split="train", mode="train", streams=(Stream.rgb, Stream.flow),
                          num_views=2, rank=0, world_size=1, device=torch.device("cpu"))
    len(loader)          # steps per epoch, known in advance
    loader.num_samples   # videos in the split (all ranks)
    loader.set_epoch(e)  # reshuffle with a seed derived from (cfg.train.seed, e); restartable
    for batch in loader: # vicc_fast.data.batch.Batch
        ...

Semantics shared by both backends (``data.backend=dali|torch``):
- train: an epoch is one clip pair (``num_views`` clips) per video of this rank's part of the split; the order
  is a function of (seed, epoch) only, so a run restarted at an epoch boundary sees the same batches. Every rank
  yields ``len(loader)`` full batches (the ragged tail is dropped) so that collectives never wait.
- eval: each video exactly once across all ranks (ranks may differ by one step), ``eval_clips`` uniformly spaced
  clips per video (x10 with ten-crop), batch = videos x clips; ``index`` tells which video each clip is.
- bad data: a sample whose video is shorter than a clip or fails to decode raises :class:`BadSampleError`
  naming its shard and key; with ``data.on_bad_sample=skip`` it is counted (``loader.skipped``), warned about
  and left out.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from vicc_fast.config import (
    Amp,
    BadSample,
    Config,
    ConfigError,
    DataBackend,
    DataDtype,
    Decoder,
    Device,
    EvalCrop,
    Stream,
)
from vicc_fast.data.batch import Batch
from vicc_fast.data.manifest import (
    BadSampleError,
    DataError,
    Manifest,
    Shard,
    Split,
    clip_span,
    load_manifest,
    load_sample_meta,
    rank_range,
    read_index,
    shard_order,
    write_index,
)

log = logging.getLogger(__name__)

# DALI names the sample in its errors as "<tar path>:<offset>:<member name>"
_SOURCE_RE = re.compile(r"([^\s\"'(]+\.tar):\d+:([^\s\"'.]+)\.")
_MAX_REBUILDS = 100  # decode failures tolerated per epoch in skip mode before giving up


def torch_dtype(cfg: Config) -> torch.dtype:
    """The dtype of the views: ``data.dtype``, or with ``auto`` the one ``train.amp`` computes in."""
    d = cfg.data.dtype
    if d == DataDtype.auto:
        d = {Amp.off: DataDtype.float32, Amp.fp16: DataDtype.float16, Amp.bf16: DataDtype.bfloat16}[
            cfg.train.amp
        ]
    return {
        DataDtype.float32: torch.float32,
        DataDtype.float16: torch.float16,
        DataDtype.bfloat16: torch.bfloat16,
    }[d]


def use_gpu_pipeline(cfg: Config, device: torch.device) -> bool:
    if cfg.data.device == Device.cpu:
        return False
    if cfg.data.device == Device.gpu:
        if device.type != "cuda":
            raise ConfigError("config key 'data.device': gpu needs a CUDA training device")
        return True
    return device.type == "cuda"


def ensure_shards(cfg: Config) -> Manifest:
    """Load the manifest at ``data.root``; build the synthetic set there first when it is missing and
    ``data.build_if_missing`` says so."""
    root = Path(cfg.data.root)
    if not (root / "manifest.json").is_file() and cfg.data.build_if_missing:
        from data_prep.build import build_synthetic  # offline tool, imported only when needed

        build_synthetic(root, cfg.data.synthetic, workers=cfg.data.threads)
    return load_manifest(root)


class _Base:
    """What both backends share: sample bookkeeping, bad-sample policy, epochs, lengths."""

    def __init__(
        self,
        cfg: Config,
        split: str,
        mode: str,
        streams: tuple[Stream, ...],
        num_views: int,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', not {mode!r}")
        if not streams:
            raise ValueError("streams must name at least one of rgb, flow")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.cfg = cfg
        self.train = mode == "train"
        self.streams = tuple(Stream(s) for s in streams)
        self.num_views = num_views if self.train else 1
        self.rank, self.world = rank, world_size
        self.device = device
        self.dtype = torch_dtype(cfg)
        self.manifest = ensure_shards(cfg)
        video = self.manifest.video
        size = (int(video["height"]), int(video["width"])) if "height" in video and "width" in video else None
        self.split: Split = load_sample_meta(self.manifest.split(split), size)
        self.span = clip_span(cfg.data.num_frames, cfg.data.stride)
        self.skip = cfg.data.on_bad_sample == BadSample.skip
        self.excluded: dict[str, str] = {}  # key -> reason
        self.epoch = 0
        self.crops = 10 if (not self.train and cfg.data.eval_crop == EvalCrop.tencrop) else 1
        self.clips = 1 if self.train else cfg.data.eval_clips
        if self.train:
            self.batch_size = cfg.train.batch_size
        else:
            self.batch_size = max(1, cfg.eval.batch_size // (self.clips * self.crops))  # videos per step
        for i in np.nonzero(self.split.frames < self.span)[0]:
            shard, key = self.split.locate(int(i))
            reason = f"{int(self.split.frames[i])} frames, a clip of {cfg.data.num_frames} at stride {cfg.data.stride} needs {self.span}"
            if not self.skip:
                raise BadSampleError(shard.tar, key, reason)
            self.excluded[key] = reason
        if self.excluded:
            warnings.warn(f"{len(self.excluded)} bad samples left out of split '{split}'", stacklevel=2)

    # ---------------------------------------------------------------- sizes
    @property
    def num_samples(self) -> int:
        """Videos in the split (all ranks), bad ones left out."""
        return self.split.num_samples - len(self.excluded)

    @property
    def skipped(self) -> int:
        return len(self.excluded)

    def rank_samples(self) -> int:
        lo, hi = rank_range(self.num_samples, self.rank, self.world)
        return hi - lo

    def __len__(self) -> int:
        if self.train:
            steps = (self.num_samples // self.world) // self.batch_size
            if steps == 0:
                raise DataError(
                    f"split '{self.split.name}' has {self.num_samples} usable videos: fewer than one batch of "
                    f"{self.batch_size} per rank on {self.world} ranks"
                )
            return steps
        return math.ceil(self.rank_samples() / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_seed(self) -> int:
        """A 31-bit seed from (train.seed, epoch, rank): the same triple gives the same batches."""
        h = hashlib.sha256(f"{self.cfg.train.seed}:{self.epoch}:{self.rank}:{self.train}".encode()).digest()
        return int.from_bytes(h[:4], "little") & 0x7FFFFFFF

    def shard_sequence(self) -> list[Shard]:
        order = shard_order(len(self.split.shards), self.cfg.train.seed, self.epoch, shuffle=self.train)
        return [self.split.shards[i] for i in order]

    # ---------------------------------------------------------------- output
    def to_batch(
        self, views: dict[Stream, list[torch.Tensor]], label: torch.Tensor, index: torch.Tensor
    ) -> Batch:
        """Views arrive as ``[B, T, H, W, C]`` (or ``[B, clips * T, H, W, C]`` in eval): permute to
        ``[B', C, T, H, W]``, which is ``channels_last_3d`` without a copy; cast and move."""
        T = self.cfg.data.num_frames
        out: dict[Stream, list[torch.Tensor]] = {}
        for s, vs in views.items():
            conv = []
            for v in vs:
                b, f, h, w, c = v.shape
                v = v.reshape(b * (f // T), T, h, w, c).permute(0, 4, 1, 2, 3)
                v = v.to(self.device, dtype=self.dtype, non_blocking=True)
                if not v.is_contiguous(memory_format=torch.channels_last_3d):
                    v = v.contiguous(memory_format=torch.channels_last_3d)
                conv.append(v)
            out[s] = conv
        label = label.reshape(-1).to(torch.int64)
        index = index.reshape(-1).to(torch.int64)
        reps = self.clips * self.crops
        if reps > 1:
            label, index = label.repeat_interleave(reps), index.repeat_interleave(reps)
        return Batch(views=out, label=label.to(self.device), index=index.to(self.device))

    def explain(self, exc: BaseException) -> list[BadSampleError]:
        """The sample(s) behind a pipeline failure: named in DALI's message, or found by scanning the split;
        a failure no sample explains is re-raised as a DataError."""
        m = _SOURCE_RE.search(str(exc))
        if m is not None:
            last = str(exc).strip().splitlines()[-1][:200]
            return [BadSampleError(m.group(1), m.group(2), f"video fails to decode ({last})")]
        from vicc_fast.data.probe import find_bad_samples

        found = find_bad_samples(self.split, self.streams, self.excluded)
        if not found:
            raise DataError(f"input pipeline failed on split '{self.split.name}': {exc}") from exc
        return found


class DaliLoader(_Base):
    """The DALI backend (see vicc_fast/data/dali.py for the graph)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gpu = use_gpu_pipeline(self.cfg, self.device)
        if self.cfg.data.decoder == Decoder.nvdec and not self.gpu:
            raise ConfigError(
                "config key 'data.decoder': nvdec decodes on the GPU, but this loader augments on the CPU "
                f"(data.device={self.cfg.data.device.value}, training device {self.device}): use data.decoder=cpu"
            )
        self._idx_dir: Path | None = None

    def _index_paths(self, shards: list[Shard]) -> list[str] | None:
        """DALI index files; with samples left out, filtered copies that list only the usable samples."""
        if not self.excluded and all(s.index is not None for s in shards):
            return [str(s.index) for s in shards]
        if self._idx_dir is None:
            self._idx_dir = Path(tempfile.mkdtemp(prefix="vicc_idx_"))
        out = []
        for s in shards:
            entries = read_index(s.index) if s.index is not None else _scan_tar(s.tar)
            keep = [e for e in entries if next(iter(e.values()))[2].split(".", 1)[0] not in self.excluded]
            tag = hashlib.sha1(f"{s.tar}:{sorted(self.excluded)}".encode()).hexdigest()[:12]
            p = self._idx_dir / f"{s.tar.stem}-{tag}.idx"
            if not p.exists():
                write_index(p, keep)
            out.append(str(p))
        return out

    def _build(self):
        from vicc_fast.data.dali import PipeSpec, build_pipeline

        d = self.cfg.data
        spec = PipeSpec(
            train=self.train,
            streams=self.streams,
            num_views=self.num_views,
            num_frames=d.num_frames,
            stride=d.stride,
            crop_size=d.crop_size,
            crop_scale=(float(d.crop_scale[0]), float(d.crop_scale[1])),
            aspect_ratio=(float(d.aspect_ratio[0]), float(d.aspect_ratio[1])),
            same_start_prob=d.same_start_prob,
            hflip=d.hflip,
            color_jitter_prob=d.color_jitter_prob,
            brightness=d.brightness,
            contrast=d.contrast,
            saturation=d.saturation,
            hue=d.hue,
            grayscale_prob=d.grayscale_prob,
            blur_prob=d.blur_prob,
            blur_sigma=(float(d.blur_sigma[0]), float(d.blur_sigma[1])),
            union_decode=d.union_decode,
            eval_clips=self.clips,
            tencrop=self.crops == 10,
            # DALI has no bfloat16: on the GPU emit float16 and cast there (cheap); on the CPU float32 (the
            # cheapest cast to bfloat16 there)
            half=self.dtype == torch.float16 or (self.dtype == torch.bfloat16 and self.gpu),
            height=int(self.manifest.video.get("height", 128)),
            width=int(self.manifest.video.get("width", 171)),
            nvdec=self.gpu and d.decoder == Decoder.nvdec,
            align_streams=d.align_streams,
            flow_photometric=d.flow_photometric,
            flow_flip_negate=d.flow_flip_negate,
            aug_controller=d.aug_controller,
            strong_aug_prob=d.strong_aug_prob,
            grayscale=d.grayscale.value,
            eval_crop_fraction=d.eval_crop_fraction,
            flow_normalisation=d.flow_normalisation.value,
        )
        shards = self.shard_sequence()
        device_id = None
        if self.gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        pipe = build_pipeline(
            spec,
            paths=[str(s.tar) for s in shards],
            index_paths=self._index_paths(shards),
            frames=self.split.frames,
            shard_id=self.rank,
            num_shards=self.world,
            shuffle=self.train,
            shuffle_buffer=min(d.shuffle_buffer, max(1, self.rank_samples())),
            batch_size=self.batch_size,
            num_threads=d.threads,
            prefetch=d.prefetch,
            device_id=device_id,
            seed=self.epoch_seed(),
        )
        return spec, pipe

    def _iterator(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        spec, pipe = self._build()
        return DALIGenericIterator(
            [pipe],
            spec.output_names(),
            reader_name="reader",
            last_batch_policy=LastBatchPolicy.DROP if self.train else LastBatchPolicy.PARTIAL,
            auto_reset=False,
        )

    def __iter__(self) -> Iterator[Batch]:
        steps = len(self)
        rebuilds = done = 0
        it = None
        while done < steps:
            try:
                if it is None:
                    it = self._iterator()  # prefetches: decode errors can surface here already
                out = next(it)[0]
            except StopIteration:
                if not self.train or not self.excluded:
                    break  # eval: this rank's part is exhausted
                it.reset()  # skip mode shrank the set mid-epoch: keep the promised step count
                continue
            except RuntimeError as exc:
                it = None
                found = self.explain(exc)
                if not self.skip or rebuilds >= _MAX_REBUILDS:
                    raise found[0] from None
                rebuilds += 1
                for bad in found:
                    self.excluded[bad.key] = bad.reason
                    warnings.warn(f"skipping {bad}", stacklevel=2)
                continue
            views = {s: [out[f"{s.value}{v}"] for v in range(self.num_views)] for s in self.streams}
            yield self.to_batch(views, out["label"], out["index"])
            done += 1


def _scan_tar(tar: Path) -> list[dict[str, tuple[int, int, str]]]:
    """A DALI-style index of ``tar`` built with tarfile (for shards that came without one)."""
    import tarfile

    samples: dict[str, dict[str, tuple[int, int, str]]] = {}
    with tarfile.open(tar) as tf:
        for m in tf:
            if not m.isfile():
                continue
            name = Path(m.name).name
            key, _, ext = name.partition(".")
            samples.setdefault(key, {})[ext] = (m.offset_data, m.size, name)
    return list(samples.values())


def build_loader(
    cfg: Config,
    split: str,
    mode: str,
    streams: tuple[Stream, ...],
    num_views: int,
    rank: int,
    world_size: int,
    device: torch.device,
):
    """The input pipeline of ``cfg.data.backend`` (see the module docstring for the semantics)."""
    args = (cfg, split, mode, tuple(streams), num_views, rank, world_size, torch.device(device))
    if cfg.data.backend == DataBackend.torch:
        from vicc_fast.data.torch_loader import TorchLoader

        return TorchLoader(*args)
    return DaliLoader(*args)
