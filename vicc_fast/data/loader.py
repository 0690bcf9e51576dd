"""Choose and build the input pipeline: the one entry point the engine and evaluation call.

Contract (the engine and the evaluation build against this; both backends implement it; summarised in
docs/architecture.md, Contracts):

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
- eval: each video exactly once across all ranks (ranks may differ by one step), its eval clips
  (``data.eval.windows``: every half-overlapping window, or ``eval_clips`` uniformly spaced; x10 with ten-crop),
  batch = videos x their clips; ``index`` tells which video each clip is.
- short videos (``data.short_videos``): with ``pad`` (the default, the released loaders) a video of at most
  ``num_frames // 2 * stride + 1`` frames is left out (counted in ``loader.skipped``, one warning, never an error)
  and a longer one shorter than a clip is read left-padded with its first frame (vicc_fast/data/windows.py); with
  ``reject`` a video shorter than a clip is a bad sample.
- bad data: a sample that fails to decode (or, with ``data.short_videos=reject``, is shorter than a clip) raises
  :class:`BadSampleError` naming its shard and key; with ``data.on_bad_sample=skip`` it is counted
  (``loader.skipped``), warned about and left out.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from vicc_fast.config import (
    Config,
    ConfigError,
    DataBackend,
    Decoder,
    Stream,
)
from vicc_fast.data.base import BaseLoader, use_gpu_pipeline
from vicc_fast.data.batch import Batch
from vicc_fast.data.manifest import (
    Shard,
    read_index,
    write_index,
)

log = logging.getLogger(__name__)

_MAX_REBUILDS = 100  # decode failures tolerated per epoch in skip mode before giving up


class DaliLoader(BaseLoader):
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
            data=d,
            train=self.train,
            streams=self.streams,
            num_views=self.num_views,
            height=int(self.manifest.video.get("height", 128)),
            width=int(self.manifest.video.get("width", 171)),
            # DALI has no bfloat16: on the GPU emit float16 and cast there (cheap); on the CPU float32 (the
            # cheapest cast to bfloat16 there)
            half=self.dtype == torch.float16 or (self.dtype == torch.bfloat16 and self.gpu),
            nvdec=self.gpu and d.decoder == Decoder.nvdec,
            tencrop=self.crops == 10,
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
            eval_starts=self.eval_starts,
            pad_starts=self.pad_starts,
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
        # eval reads every kept video exactly once: a pipeline rebuilt after a skip starts the split over, so
        # the videos already yielded are dropped from its batches (train only keeps its step count)
        seen: torch.Tensor | None = None if self.train else torch.zeros(self.num_videos, dtype=torch.bool)
        while done < steps or not self.train:
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
            label, index = out["label"], out["index"]
            if seen is not None:
                video = index.reshape(-1).long().cpu()  # one row per video here (the reader's, on the CPU)
                fresh = ~seen[video]
                if not bool(fresh.any()):
                    continue
                if not bool(fresh.all()):  # a rebuilt pipeline replaying the split
                    views = {s: [v[fresh] for v in vs] for s, vs in views.items()}
                    label, index = label[fresh], index[fresh]
                seen[video] = True
            yield self.to_batch(views, label, index)
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
