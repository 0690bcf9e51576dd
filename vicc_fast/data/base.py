"""What both input pipelines share (the DALI loader of loader.py and the DataLoader baseline of
torch_loader.py): the view dtype, where augmentation runs, the shards on disk, and the loader base class with
the sample bookkeeping, the bad-sample policy, epochs and lengths. Both backends import it; neither imports
the other, so ``build_loader`` (loader.py) can pick either."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from vicc_fast.config import (
    Amp,
    BadSample,
    Config,
    ConfigError,
    DataDtype,
    Device,
    EvalCrop,
    EvalWindows,
    ShortVideos,
    Stream,
)
from vicc_fast.data.batch import Batch
from vicc_fast.data.manifest import (
    BadSampleError,
    DataError,
    Manifest,
    Shard,
    Split,
    check_recipe,
    clip_span,
    load_manifest,
    load_sample_meta,
    rank_range,
    shard_order,
)
from vicc_fast.data.windows import drop_bound, fixed_starts, overlap_count, pad_start

log = logging.getLogger(__name__)

# DALI names the sample in its errors as "<tar path>:<offset>:<member name>"
_SOURCE_RE = re.compile(r"([^\s\"'(]+\.tar):\d+:([^\s\"'.]+)\.")


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
    manifest = load_manifest(root)
    check_recipe(manifest, cfg.data.require_recipe.value)  # every train and eval loader starts here
    return manifest


class BaseLoader:
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
        self.crops = 10 if (not self.train and cfg.data.eval.crop == EvalCrop.tencrop) else 1
        self.clips = 1 if self.train else cfg.data.eval.clips
        # eval clips, computed once on the host for both backends: with overlapping windows a count per sample
        # index (their starts follow from it); otherwise self.clips starts per sample index, [N, clips]
        self.window_counts: np.ndarray | None = None
        self.eval_starts: np.ndarray | None = None
        if not self.train:
            d = cfg.data
            if d.eval.windows == EvalWindows.overlap:
                self.window_counts = overlap_count(self.split.frames, d.num_frames, d.stride)
            else:
                self.eval_starts = fixed_starts(
                    self.split.frames, d.num_frames, d.stride, d.eval.windows, self.clips, cfg.train.seed
                )
        if self.train:
            self.batch_size = cfg.train.batch_size
        else:
            per_video = self.clips if self.window_counts is None else float(np.mean(self.window_counts))
            self.max_clips = cfg.eval.batch_size  # the most clips a consumer should forward at once
            self.batch_size = max(1, int(cfg.eval.batch_size // (per_video * self.crops)))  # videos per step
        # per sample index, the first frame of a left-padded clip (< 0) or 0: both backends read it
        self.pad_starts = np.zeros(self.split.num_samples, np.int64)
        if cfg.data.short_videos == ShortVideos.pad:
            self._pad_short_videos(split)
        else:
            self._reject_short_videos(split)

    def _pad_short_videos(self, split: str) -> None:
        """``data.short_videos=pad``: as the released loaders, leave out the videos of at most
        :func:`drop_bound` frames and read the other videos shorter than a clip left-padded. The left-out ones are
        not bad samples (the released code filters them when it lists the split), so even
        ``data.on_bad_sample=error`` only counts them (``skipped``) and warns once."""
        d = self.cfg.data
        frames = self.split.frames
        bound = drop_bound(d.num_frames, d.stride)
        dropped = np.nonzero(frames <= bound)[0]
        for i in dropped:
            _, key = self.split.locate(int(i))
            self.excluded[key] = (
                f"{int(frames[i])} frames: at most num_frames // 2 * stride + 1 = {bound}, the released loader "
                "drops such videos"
            )
        padded = (frames < self.span) & (frames > bound)
        self.pad_starts[padded] = pad_start(frames[padded], d.num_frames, d.stride)
        if len(dropped):
            warnings.warn(
                f"{len(dropped)} video(s) of split '{split}' left out: at most {bound} frames, which the released "
                f"loader drops (a clip of {d.num_frames} at stride {d.stride}; data.short_videos=pad)",
                stacklevel=3,
            )

    def _reject_short_videos(self, split: str) -> None:
        """``data.short_videos=reject``: a video shorter than a clip is a bad sample (``data.on_bad_sample``)."""
        d = self.cfg.data
        short = np.nonzero(self.split.frames < self.span)[0]
        for i in short:
            shard, key = self.split.locate(int(i))
            reason = f"{int(self.split.frames[i])} frames, a clip of {d.num_frames} at stride {d.stride} needs {self.span}"
            if not self.skip:  # one error for the first, with how many more there are and the way out
                raise BadSampleError(
                    shard.tar,
                    key,
                    f"{reason} ({len(short)} video(s) of split '{split}' are shorter than a clip; "
                    "data.on_bad_sample=skip leaves them out, counted and warned; data.short_videos=pad reads "
                    "them left-padded as the released loaders do)",
                )
            self.excluded[key] = reason
        if self.excluded:
            warnings.warn(f"{len(self.excluded)} bad samples left out of split '{split}'", stacklevel=3)

    # ---------------------------------------------------------------- sizes
    @property
    def num_samples(self) -> int:
        """Videos in the split (all ranks), bad ones left out."""
        return self.split.num_samples - len(self.excluded)

    @property
    def skipped(self) -> int:
        return len(self.excluded)

    @property
    def num_videos(self) -> int:
        """Videos in the split, the left-out ones included: the range of ``Batch.index``."""
        return self.split.num_samples

    def clips_per_video(self) -> np.ndarray:
        """[num_videos] int: the clip rows an eval pass yields for each video (its windows x crops; the consumer
        checks them, so a video read twice or cut short is an error, not a silently skewed average)."""
        if self.window_counts is not None:
            return self.window_counts.astype(np.int64) * self.crops
        return np.full(self.num_videos, self.clips * self.crops, dtype=np.int64)

    def excluded_indices(self) -> np.ndarray:
        """Split indices of the videos left out so far (recorded rejections: too short to pad, or bad with
        ``data.on_bad_sample=skip``; a skip found while decoding joins once the loader has met it)."""
        if not self.excluded:
            return np.zeros(0, dtype=np.int64)
        return np.array([i for i, k in enumerate(self.split.keys) if k in self.excluded], dtype=np.int64)

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
        """Views arrive as ``[B, T, H, W, C]`` (or ``[B, crops * clips * T, H, W, C]`` in eval; with overlapping
        windows each sample's clips first, zero padding after): permute to ``[B', C, T, H, W]``, which is
        ``channels_last_3d`` without a copy; cast and move."""
        T = self.cfg.data.num_frames
        index = index.reshape(-1).to(torch.int64)
        reps = None  # clips per sample when they vary (overlapping eval windows)
        if self.window_counts is not None:
            reps = torch.from_numpy(self.window_counts[index.cpu().numpy()] * self.crops)
        out: dict[Stream, list[torch.Tensor]] = {}
        for s, vs in views.items():
            conv = []
            for v in vs:
                if reps is not None:  # drop each sample's padding: [sum(reps) * T, H, W, C]
                    v = torch.cat([v[i, : int(r) * T] for i, r in enumerate(reps)])[None]
                b, f, h, w, c = v.shape
                v = v.reshape(b * (f // T), T, h, w, c).permute(0, 4, 1, 2, 3)
                v = v.to(self.device, dtype=self.dtype, non_blocking=True)
                if not v.is_contiguous(memory_format=torch.channels_last_3d):
                    v = v.contiguous(memory_format=torch.channels_last_3d)
                conv.append(v)
            out[s] = conv
        label = label.reshape(-1).to(torch.int64)
        if reps is not None:
            label, index = (x.repeat_interleave(reps.to(x.device)) for x in (label, index))
        elif self.clips * self.crops > 1:
            label, index = (x.repeat_interleave(self.clips * self.crops) for x in (label, index))
        source = None
        if self.split.sources is not None:
            source = torch.from_numpy(self.split.sources)[index.cpu()].to(self.device)
        return Batch(views=out, label=label.to(self.device), index=index.to(self.device), source=source)

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
