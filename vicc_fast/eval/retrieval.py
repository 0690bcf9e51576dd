"""Nearest-neighbour video retrieval: test videos query the train videos (cosine similarity), Recall@k.

Protocol of CoCLR / ViCC (section 4): every test video is a query, every train video is in the gallery, a query
counts as a hit at k if any of its k nearest gallery videos shares its class. Numbers are percentages, as the
papers report them.

Features as the released ``test_retrieval`` (ViCC and CoCLR ``main_classifier.py``) builds them, by default
(``eval.retrieval.*``, :func:`retrieval_cfg`): centre-cropped clips, each clip's feature L2-normalised, averaged
per video (one clip per train video; every half-overlapping window of each test video, ``data.eval.windows``, as
the released code), then each split centred by its own mean and L2-normalised.

R+F fusion, both forms reported (the papers average the two streams' similarity scores, CoCLR Table 3, ViCC
Table 1 "averaging predictions"):
- ``sum``: the similarity of a pair is the sum of its RGB and its flow cosine similarity (it ranks the gallery
  as the papers' average does). With ``eval.retrieval.centre_each`` (the default) this is the released
  ``merge_sim`` (CoCLR ``eval/merge_2stream_prob.py``, also shipped with ViCC): each stream's train and test
  features centred by their own mean and L2-normalised, the two cosine matrices summed. Summing cosine
  similarities equals the dot product of the concatenated per-stream normalised features, which is how it is
  computed here (one matrix product, same chunking).
- ``concat``: the raw (clip-averaged, not yet normalised) features of the two streams are concatenated, then
  centred and normalised as one vector; each stream then weighs in by its own feature norm, so this differs from
  ``sum`` whenever the two encoders' feature scales differ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vicc_fast.config import Config, Stream

DEFAULT_CHUNK = 1024
DEFAULT_GALLERY_CHUNK = 65536


def _as_streams(x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [x] if isinstance(x, torch.Tensor) else list(x)


def _check_pair(query: list[torch.Tensor], gallery: list[torch.Tensor]) -> None:
    if not query or len(query) != len(gallery):
        raise ValueError(
            f"need the same number (>=1) of query and gallery streams, got {len(query)} and {len(gallery)}"
        )
    nq, ng = query[0].shape[0], gallery[0].shape[0]
    for i, (q, g) in enumerate(zip(query, gallery)):
        if q.dim() != 2 or g.dim() != 2:
            raise ValueError(
                f"stream {i}: features must be [N, D], got query {tuple(q.shape)} gallery {tuple(g.shape)}"
            )
        if q.shape[1] != g.shape[1]:
            raise ValueError(f"stream {i}: query dim {q.shape[1]} != gallery dim {g.shape[1]}")
        if q.shape[0] != nq or g.shape[0] != ng:
            raise ValueError(
                f"stream {i}: every stream must hold the same videos ({nq} queries, {ng} gallery)"
            )
    if nq == 0 or ng == 0:
        raise ValueError(f"empty query ({nq}) or gallery ({ng}) set")


@torch.no_grad()
def nearest_neighbours(
    query: torch.Tensor | Sequence[torch.Tensor],
    gallery: torch.Tensor | Sequence[torch.Tensor],
    k: int,
    chunk: int = DEFAULT_CHUNK,
    gallery_chunk: int = DEFAULT_GALLERY_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k gallery items of every query by cosine similarity (summed over streams when several are given).

    query: ``[Nq, D]`` or a sequence of per-stream ``[Nq, D_s]``; gallery: ``[Ng, D]`` or per-stream ``[Ng, D_s]``.
    Returns ``(scores [Nq, k'], index [Nq, k'])``, best first, with ``k' = min(k, Ng)``.

    Memory stays at ``chunk x gallery_chunk`` similarities: queries are taken ``chunk`` rows at a time, the
    gallery ``gallery_chunk`` rows at a time, and the running top-k is merged across gallery blocks. Works on
    whatever device the tensors live on (GPU for Kinetics-size galleries).
    """
    qs, gs = _as_streams(query), _as_streams(gallery)
    _check_pair(qs, gs)
    if chunk < 1 or gallery_chunk < 1:
        raise ValueError(f"chunk sizes must be >= 1, got {chunk}, {gallery_chunk}")
    # Summed cosine similarity == dot product of the concatenated per-stream unit vectors.
    q = torch.cat([F.normalize(x.float(), dim=1) for x in qs], dim=1)
    g = torch.cat([F.normalize(x.float(), dim=1) for x in gs], dim=1).to(q.device)
    nq, ng = q.shape[0], g.shape[0]
    kk = min(k, ng)
    out_s = torch.empty(nq, kk, dtype=torch.float32, device=q.device)
    out_i = torch.empty(nq, kk, dtype=torch.int64, device=q.device)
    for a in range(0, nq, chunk):
        qc = q[a : a + chunk]
        best_s: torch.Tensor | None = None
        best_i: torch.Tensor | None = None
        for b in range(0, ng, gallery_chunk):
            sim = qc @ g[b : b + gallery_chunk].T  # [c, g]
            s, i = sim.topk(min(kk, sim.shape[1]), dim=1)
            i = i + b
            if best_s is not None:
                s, pos = torch.cat([best_s, s], 1).topk(min(kk, best_s.shape[1] + s.shape[1]), dim=1)
                i = torch.cat([best_i, i], 1).gather(1, pos)
            best_s, best_i = s, i
        assert best_s is not None and best_i is not None
        out_s[a : a + chunk], out_i[a : a + chunk] = best_s, best_i
    return out_s, out_i


def recall_from_neighbours(
    neighbour_index: torch.Tensor, query_labels: torch.Tensor, gallery_labels: torch.Tensor, ks: Sequence[int]
) -> dict[str, float]:
    """Recall@k in percent from precomputed neighbours.

    neighbour_index: ``[Nq, kmax]`` gallery rows, best first; query_labels: ``[Nq]``; gallery_labels: ``[Ng]``.
    A k larger than the gallery is capped at the gallery size (every gallery item retrieved).
    """
    gl = gallery_labels.to(neighbour_index.device)
    hits = gl[neighbour_index] == query_labels.to(neighbour_index.device)[:, None]  # [Nq, kmax]
    out: dict[str, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"Recall@k needs k >= 1, got {k}")
        out[f"R@{k}"] = 100.0 * hits[:, :k].any(dim=1).float().mean().item()
    return out


def _check_labels(nq: int, ng: int, query_labels: torch.Tensor, gallery_labels: torch.Tensor) -> None:
    if query_labels.shape != (nq,) or gallery_labels.shape != (ng,):
        raise ValueError(
            f"labels must be [Nq]={nq} and [Ng]={ng}, got {tuple(query_labels.shape)} and {tuple(gallery_labels.shape)}"
        )


def recall_at_k(
    query: torch.Tensor | Sequence[torch.Tensor],
    query_labels: torch.Tensor,
    gallery: torch.Tensor | Sequence[torch.Tensor],
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10, 20, 50),
    chunk: int = DEFAULT_CHUNK,
    gallery_chunk: int = DEFAULT_GALLERY_CHUNK,
) -> dict[str, float]:
    """Recall@k in percent, ``{"R@1": .., "R@5": ..}``: a hit if any of the top k gallery items shares the class.

    query: ``[Nq, D]`` (or a sequence of streams, fused by summed cosine similarity), query_labels: ``[Nq]``,
    gallery: ``[Ng, D]`` (or the same number of streams), gallery_labels: ``[Ng]``.
    """
    qs, gs = _as_streams(query), _as_streams(gallery)
    _check_pair(qs, gs)
    _check_labels(qs[0].shape[0], gs[0].shape[0], query_labels, gallery_labels)
    _, idx = nearest_neighbours(qs, gs, max(ks), chunk=chunk, gallery_chunk=gallery_chunk)
    return recall_from_neighbours(idx, query_labels, gallery_labels, ks)


def concat_features(*streams: torch.Tensor) -> torch.Tensor:
    """Feature-level fusion: ``[N, D_1] ... [N, D_s] -> [N, sum D]`` (callers centre and normalise afterwards)."""
    n = {s.shape[0] for s in streams}
    if len(n) != 1:
        raise ValueError(f"streams hold different numbers of videos: {sorted(n)}")
    return torch.cat([s.float() for s in streams], dim=1)


def fused_recall(
    raw_query: dict[Stream, torch.Tensor],
    query_labels: torch.Tensor,
    raw_gallery: dict[Stream, torch.Tensor],
    gallery_labels: torch.Tensor,
    ks: Sequence[int],
    chunk: int = DEFAULT_CHUNK,
    centre_each: bool = True,
) -> dict[str, float]:
    """Per-stream and R+F recall from raw (clip-averaged) features; keys ``"{name}/R@{k}"``.

    raw_query/raw_gallery: stream -> ``[N, F]`` features as the encoder produced them. Each stream is centred
    (``centre_each``: each split by its own mean, as released; else both by the gallery (train) mean) and
    L2-normalised; with two streams, ``rf_sum`` and ``rf_concat`` are added.
    """
    from vicc_fast.eval.features import centre_each_normalise
    from vicc_fast.eval.features import centre_normalise as by_train  # local: features imports this module

    def centre_normalise(gallery: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return centre_each_normalise(gallery, query) if centre_each else by_train(gallery, query)

    out: dict[str, float] = {}
    normed_q: dict[Stream, torch.Tensor] = {}
    normed_g: dict[Stream, torch.Tensor] = {}
    for s in raw_query:
        normed_g[s], normed_q[s] = centre_normalise(raw_gallery[s], raw_query[s])
        for key, v in recall_at_k(normed_q[s], query_labels, normed_g[s], gallery_labels, ks, chunk).items():
            out[f"{Stream(s).value}/{key}"] = v
    if len(raw_query) == 2:
        order = sorted(raw_query, key=lambda s: Stream(s).value == "flow")  # rgb first
        r = recall_at_k(
            [normed_q[s] for s in order],
            query_labels,
            [normed_g[s] for s in order],
            gallery_labels,
            ks,
            chunk,
        )
        out.update({f"rf_sum/{k}": v for k, v in r.items()})
        cg, cq = centre_normalise(
            concat_features(*[raw_gallery[s] for s in order]), concat_features(*[raw_query[s] for s in order])
        )
        r = recall_at_k(cq, query_labels, cg, gallery_labels, ks, chunk)
        out.update({f"rf_concat/{k}": v for k, v in r.items()})
    return out


def retrieval_cfg(cfg: Config, split: str) -> Config:
    """The config the retrieval features of ``split`` are read with: ``eval.retrieval.crop`` as the eval crop,
    and for the train (gallery) split ``eval.retrieval.train_clips`` clips per video when > 0 (released
    ``test_retrieval``: a centre crop, one clip of each train video, half-overlapping windows of each test one).
    Everything else (frames, crop fraction, backend) as ``cfg``."""
    ret = cfg.eval.retrieval
    data_eval = dataclasses.replace(cfg.data.eval, crop=ret.crop)
    if split == "train" and ret.train_clips > 0:
        data_eval = dataclasses.replace(data_eval, clips=ret.train_clips, windows=ret.train_windows)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, eval=data_eval))


def evaluate_phase(
    cfg,  # noqa: ANN001  vicc_fast.config.Config (untyped here to keep this module import-light)
    method,  # noqa: ANN001  vicc_fast.methods.base.Method
    phase,  # noqa: ANN001  vicc_fast.methods.base.PhaseSpec
    rank: int,
    world: int,
    device: torch.device,
    loader_factory=None,  # noqa: ANN001  (cfg, split, stream) -> eval loader; default build_loader
) -> dict[str, float]:
    """kNN retrieval after a training phase, called by the engine on every rank (collective when world > 1).

    Evaluates the phase's trained stream(s) (both for a joint phase), and when the phase has a frozen (already
    trained) stream, that stream too; R+F fusion when two streams are evaluated. Test videos query train videos. Returns ``{"rgb/R@1": .., "rf_sum/R@1": ..}`` on
    every rank (features are gathered across ranks).
    """
    from vicc_fast.eval.features import common_rows, extract, with_eval_precision

    cfg = with_eval_precision(cfg)  # eval.amp (fp32 by default, as released), not the training's precision
    ret = cfg.eval.retrieval
    if loader_factory is None:
        from vicc_fast.data.loader import build_loader

        def loader_factory(cfg, split, stream):  # noqa: ANN001, ANN202
            return build_loader(cfg, split, "eval", (stream,), 1, rank, world, device)

    encoders = method.encoders()
    streams = list(phase.trained_streams)
    if phase.frozen_stream is not None and phase.frozen_stream in encoders:
        streams.append(phase.frozen_stream)
    feats: dict[str, dict[Stream, torch.Tensor]] = {}
    labels: dict[str, torch.Tensor] = {}
    for split in ("train", "test"):
        per_stream = {}
        for s in streams:
            loader = loader_factory(retrieval_cfg(cfg, split), split, s)
            per_stream[s] = extract(
                encoders[s],
                loader,
                device,
                stream=s,
                amp=cfg.train.amp,
                clip_l2norm=ret.clip_l2norm,
            )
        # the videos every stream kept (with data.on_bad_sample=skip one stream can leave out a video)
        feats[split], labels[split], _ = common_rows(per_stream)
    return fused_recall(
        feats["test"],
        labels["test"],
        feats["train"],
        labels["train"],
        list(ret.recall_ks),
        ret.knn_chunk,
        centre_each=ret.centre_each,
    )
