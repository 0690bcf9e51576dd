"""Feature cache: per-video features of one (checkpoint, stream, split, eval settings) stored once on disk.

The key hashes the encoder's weights (so the RGB-1 encoder stored in both ``rgb1.pt`` and ``flow1.pt`` is
encoded once) and every setting that changes the features (the shard set's
manifest hash, frames, stride, crop, clips per video, crop mode, decode device, precision), so changed
weights or settings never read stale features, and a repeated evaluation reads them in milliseconds.
Files are written atomically; an unreadable cache file is recomputed (it is a cache, the checkpoint is the truth).
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vicc_fast import atomic
from vicc_fast.config import Config, EvalWindows, Stream

FORMAT = 1
Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # feats [N, F], labels [N], index [N]


def feature_settings(cfg: Config) -> dict[str, Any]:
    """The settings the eval features depend on (besides checkpoint, stream and split)."""
    d = cfg.data
    return {
        "num_frames": d.num_frames,
        "stride": d.stride,
        "crop_size": d.crop_size,
        "eval_clips": d.eval.clips,
        "eval_windows": d.eval.windows.value,
        # random windows are drawn from the seed: another seed reads other clips
        "windows_seed": cfg.train.seed if d.eval.windows == EvalWindows.random else None,
        "eval_crop": d.eval.crop.value,
        "eval_crop_fraction": d.eval.crop_fraction,
        "backend": d.backend.value,
        "data_device": d.device.value,
        "amp": cfg.train.amp.value,
        "flow_normalisation": d.flow_normalisation.value,
        "flow_flip_negate": d.augment.flow_flip_negate,
        "short_videos": d.short_videos.value,
        # features computed while skipping bad videos must not answer a run that should stop on them
        "on_bad_sample": d.on_bad_sample.value,
        # the test-time jitter is drawn from the seed too: another seed perturbs other videos
        "eval_jitter": [d.eval.color_jitter_prob, *map(float, d.eval.color_jitter), cfg.train.seed]
        if d.eval.color_jitter_prob > 0
        else None,
    }


def cache_key(
    weights_sha256: str,
    stream: Stream,
    split: str,
    cfg: Config,
    manifest_sha256: str,
    clip_l2norm: bool = False,
) -> str:
    """The features' identity; ``clip_l2norm``: clip features normalised before the video average (retrieval)."""
    doc = {
        "format": FORMAT,
        "weights": weights_sha256,
        "stream": Stream(stream).value,
        "split": split,
        "manifest": manifest_sha256,
        **feature_settings(cfg),
    }
    if clip_l2norm:  # only when set, so the keys of features cached before this setting existed still match
        doc["clip_l2norm"] = True
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class FeatureCache:
    """``get(key, compute)``: the cached features of ``key``, computing and storing them on a miss."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def path(self, key: str, name: str = "") -> Path:
        return self.folder / f"{name + '_' if name else ''}{key[:24]}.pt"

    def get(self, key: str, compute: Callable[[], Features], name: str = "") -> Features:
        p = self.path(key, name)
        if p.is_file():
            try:
                d = torch.load(p, map_location="cpu", weights_only=True)
                if d.get("key") == key:
                    self.hits += 1
                    return d["feats"], d["labels"], d["index"]
            except Exception as exc:  # noqa: BLE001  a damaged cache entry is recomputed, never trusted
                warnings.warn(f"feature cache {p} unreadable ({exc}); recomputing", stacklevel=2)
        self.misses += 1
        feats, labels, index = compute()
        buf = io.BytesIO()
        torch.save({"key": key, "feats": feats.cpu(), "labels": labels.cpu(), "index": index.cpu()}, buf)
        atomic.write_bytes(p, buf.getvalue())
        return feats, labels, index
