"""Video-level features of a frozen encoder: clip features averaged per video, gathered across ranks.

The eval loader yields ``B = videos x clips`` clips per batch with ``index`` naming the video of each clip
(docs/architecture.md, Contracts: Loader). :func:`extract` sums clip features into per-video rows by that index, so it neither cares
how clips are batched nor which rank saw which video; across ranks the per-video sums are all-reduced, which is
also where the "each video exactly once across ranks" promise of the loader is checked.

Features returned are raw (as the encoder produced them, clip-averaged): centring needs the *train* mean, so
:func:`centre_normalise` is a separate step that the caller applies to train and test together.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vicc_fast.config import Amp, Config, Stream
from vicc_fast.data.batch import Batch


def feature_dim(encoder: nn.Module) -> int | None:
    """``encoder.feature_dim`` (looking through DDP / torch.compile wrappers), or None when it has none."""
    m: Any = encoder
    for _ in range(4):
        if hasattr(m, "feature_dim"):
            return int(m.feature_dim)
        m = getattr(m, "module", None) or getattr(m, "_orig_mod", None)
        if m is None:
            break
    return None


def with_eval_precision(cfg: Config) -> Config:
    """``cfg`` with ``train.amp`` := ``eval.amp``: every evaluation forward (and, with ``data.dtype=auto``, the
    eval loaders' dtype) follows the evaluation precision, fp32 by default as the released evaluation ran,
    whatever precision the training used."""
    if cfg.train.amp is cfg.eval.amp:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=cfg.eval.amp))


def _autocast(device: torch.device, amp: Amp | str | None) -> contextlib.AbstractContextManager:
    """Autocast as the training engine runs it, on CPU too: with ``train.amp`` on, the loader delivers bf16/fp16
    clips (``data.dtype=auto``), which fp32 weights only accept inside autocast."""
    amp = Amp(amp) if amp is not None else Amp.off
    if amp is Amp.off:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp is Amp.bf16 else torch.float16)


def _pick_stream(batch: Batch, stream: Stream | None) -> torch.Tensor:
    if stream is None:
        if len(batch.views) != 1:
            raise ValueError(
                f"batch holds streams {sorted(s.value for s in batch.views)}: name the one to encode"
            )
        stream = next(iter(batch.views))
    views = batch.views.get(Stream(stream))
    if not views:
        raise ValueError(
            f"batch holds no {Stream(stream).value} view (it has {sorted(s.value for s in batch.views)})"
        )
    return views[0]


def clip_rows(f: torch.Tensor, l2norm: bool) -> torch.Tensor:
    """Encoder output ``[B, F, ...]`` -> float32 clip rows ``[B, F']``, unit length with ``l2norm``.

    The released retrieval (ViCC/CoCLR ``test_retrieval``) encodes clips through ``LinearClassifier`` with
    ``use_l2_norm`` on (``--train_what last``, the default), so every clip is normalised before the video
    average: each clip then weighs alike, whatever its feature norm.
    """
    f = f.float().flatten(1)
    return F.normalize(f, dim=1) if l2norm else f


def in_chunks(fn: Any, x: torch.Tensor, rows: int | None) -> torch.Tensor:
    """``fn`` over ``x`` [B, ...] in pieces of at most ``rows`` rows (None or 0: at once), outputs concatenated.

    An eval batch with overlapping windows holds every window of its videos, so one long video can bring
    many times ``eval.batch_size`` clips (the loader sizes batches by the mean window count): the encoder
    never sees more than ``rows`` at a time."""
    if not rows or x.shape[0] <= rows:
        return fn(x)
    return torch.cat([fn(x[i : i + rows]) for i in range(0, x.shape[0], rows)])


def clip_features(
    encoder: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    num_videos: int,
    stream: Stream | None = None,
    amp: Amp | str | None = None,
    progress: bool = False,
    desc: str = "features",
    clip_l2norm: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch: ``(index [B] int64, label [B] int64, rows [B, F] float32)`` on ``device``, one row per clip
    (the encoder's pooled output; L2-normalised with ``clip_l2norm``), ``index`` its video's split index."""
    was_training = encoder.training
    encoder.eval()
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            x = _pick_stream(batch, stream).to(device, non_blocking=True)
            index = batch.index.to(device, non_blocking=True).long()
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_videos):
                raise ValueError(f"loader yielded video index {int(index.max())} outside [0, {num_videos})")
            with torch.no_grad(), _autocast(device, amp):
                f = in_chunks(encoder, x, getattr(loader, "max_clips", None))
            yield index, batch.label.to(device).long(), clip_rows(f, clip_l2norm)
    finally:
        encoder.train(was_training)


@torch.no_grad()
def encode_clips(
    encoder: nn.Module,
    loader: Iterable[Batch],
    device: torch.device,
    num_videos: int,
    stream: Stream | None = None,
    amp: Amp | str | None = None,
    progress: bool = False,
    desc: str = "features",
    clip_l2norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's per-video sums of clip features (each clip's row L2-normalised first with ``clip_l2norm``).

    Returns ``(sums [N, F] float32, clip_counts [N] float32, labels [N] int64)`` on ``device``, zero for
    videos this rank did not see; ``N = num_videos``.
    """
    dim = feature_dim(encoder)
    sums = torch.zeros(num_videos, dim, device=device) if dim is not None else None
    counts = torch.zeros(num_videos, device=device)
    labels = torch.zeros(num_videos, dtype=torch.int64, device=device)
    rows = clip_features(encoder, loader, device, num_videos, stream, amp, progress, desc, clip_l2norm)
    for index, label, f in rows:
        if sums is None:
            sums = torch.zeros(num_videos, f.shape[1], device=device)
        sums.index_add_(0, index, f)
        counts.index_add_(0, index, torch.ones_like(index, dtype=torch.float32))
        labels[index] = label
    if sums is None:
        raise ValueError("the eval loader yielded no clips and the encoder has no feature_dim")
    return sums, counts, labels


def wrong_clip_counts(loader: Any, counts: torch.Tensor, keep: torch.Tensor) -> int:
    """How many kept videos got another number of clip rows than ``loader.clips_per_video()`` promises (0 for
    a loader without it). counts, keep: [num_videos], all ranks' rows summed."""
    promised = getattr(loader, "clips_per_video", None)
    if promised is None:
        return 0
    want = torch.as_tensor(promised(), dtype=counts.dtype, device=counts.device)
    return int(((counts != want) & keep).sum())


def left_out(loader: Any, num_videos: int, device: torch.device | None = None) -> torch.Tensor:
    """[num_videos] bool: the videos ``loader`` left out as recorded rejections (``excluded_indices``; none for
    a loader without it), OR-ed over ranks when torch.distributed is initialised (a decode failure is met by
    one rank only). Call after iterating the loader."""
    mask = torch.zeros(num_videos, dtype=torch.int64, device=device)
    get = getattr(loader, "excluded_indices", None)
    if get is not None:
        idx = torch.as_tensor(get(), dtype=torch.long, device=device)
        mask[idx] = 1
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(mask)
    return mask > 0


def extract(
    encoder: nn.Module,
    loader: Any,
    device: torch.device,
    stream: Stream | None = None,
    amp: Amp | str | None = None,
    progress: bool = False,
    desc: str = "features",
    clip_l2norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-video features of ``encoder`` over an eval ``loader`` (clip features averaged per video; with
    ``clip_l2norm`` each clip's feature is L2-normalised before the average, as the released retrieval).

    loader: iterable of :class:`Batch` with ``num_videos`` (videos in the split, the range of the batch index)
    or ``num_samples``; videos it left out (``excluded_indices``: too short to pad, or bad under
    ``data.on_bad_sample=skip``) get no row. Returns ``(feats [N, F] float32, labels [N] int64, index [N]
    int64)`` on CPU, identical on every rank (all-reduced when torch.distributed is initialised), rows in
    video-index order, ``index`` the videos' split indices. Raises when a kept video got no clip or a video was
    seen by more than one rank.
    """
    n = int(getattr(loader, "num_videos", 0) or getattr(loader, "num_samples", 0) or 0)
    if n <= 0:
        raise ValueError("eval loader reports no videos (num_samples == 0)")
    sums, counts, labels = encode_clips(encoder, loader, device, n, stream, amp, progress, desc, clip_l2norm)
    seen = (counts > 0).to(torch.int64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # Each video lives on exactly one rank, so summing rows assembles the whole split everywhere.
        for t in (sums, counts, labels, seen):
            dist.all_reduce(t)
    keep = ~left_out(loader, n, seen.device)
    missing = int(((seen == 0) & keep).sum())
    dup = int((seen > 1).sum())
    wrong = 0 if missing or dup else wrong_clip_counts(loader, counts, keep)
    if missing or dup or wrong:
        raise RuntimeError(
            f"eval loader must cover each of the {int(keep.sum())} kept videos once: {missing} got no clip, "
            f"{dup} seen by several ranks, {wrong} another number of clips than it promised"
        )
    feats = sums[keep] / counts[keep][:, None]
    return feats.cpu(), labels[keep].cpu(), torch.arange(n)[keep.cpu()]


def common_rows(
    per_stream: Mapping[Any, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> tuple[dict[Any, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The rows of the videos every stream kept, so that R+F and per-stream numbers compare the same videos.

    per_stream: stream -> (values [N_s, ...], labels [N_s], index [N_s]), rows in video-index order with
    ``index`` their split indices (as :func:`extract` and ``finetune.predict_videos`` return them). The streams
    can keep different videos: with ``data.on_bad_sample=skip`` a video whose flow file fails is left out of
    the flow stream only. Returns (stream -> values [M, ...], labels [M], index [M]) over the M videos all
    streams kept, in video-index order; raises if two streams give one video different labels.
    """
    first, *rest = per_stream
    common = per_stream[first][2]
    for s in rest:
        common = common[torch.isin(common, per_stream[s][2])]
    values: dict[Any, torch.Tensor] = {}
    labels: torch.Tensor | None = None
    for s, (v, lab, index) in per_stream.items():
        pos = torch.searchsorted(index, common)
        values[s] = v[pos]
        if labels is None:
            labels = lab[pos]
        elif not torch.equal(labels, lab[pos]):
            raise RuntimeError(f"streams disagree on the labels of the same videos ({first} vs {s})")
    assert labels is not None
    return values, labels, common


def centre_each_normalise(*splits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each split ``[N_i, F]`` minus its own mean feature, then L2-normalised rows (the released ViCC / CoCLR
    retrieval: ``test_feature - test_feature.mean(0)``, ``train_feature - train_feature.mean(0)``)."""
    return tuple(F.normalize(x.float() - x.float().mean(dim=0, keepdim=True), dim=1) for x in splits)


def centre_normalise(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Subtract the train-set mean feature from every set, then L2-normalise rows.

    train: ``[Ntr, F]``; others: ``[N_i, F]``. Returns ``(train', *others')`` with unit rows. Centring removes the
    component every video shares, which otherwise dominates cosine similarity of ReLU features.
    """
    mean = train.float().mean(dim=0, keepdim=True)
    return tuple(F.normalize(x.float() - mean.to(x.device), dim=1) for x in (train, *others))
