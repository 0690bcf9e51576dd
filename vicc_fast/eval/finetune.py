"""End-to-end finetuning: the whole encoder plus dropout and a linear classifier, trained with labels.

Protocol of CoCLR / ViCC: training clips come from the train-mode pipeline (the self-supervised augmentation without
Gaussian blur); at test time every video is seen as moving-window clips (``data.eval.windows``: every
half-overlapping window, or ``data.eval.clips`` uniformly spaced clips) times ten crops (centre, four corners and
their horizontal flips; ``data.eval.crop=tencrop`` in the eval pipeline) and the softmax probabilities of all its
clips and crops are averaged. R+F averages the two streams' per-video probabilities.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from vicc_fast.config import Amp, Stream
from vicc_fast.data.batch import Batch
from vicc_fast.eval.features import _autocast, feature_dim, in_chunks, left_out, wrong_clip_counts


class FinetuneModel(nn.Module):
    """``[B, C, T, H, W] -> [B, num_classes]``: encoder, dropout, linear classifier.

    ``released_init``: the classifier as the released ``src/model/classifier.py`` l. 46, 64-69
    (``_initialize_weights``): weight N(0, 0.01), bias 0; false: PyTorch's default nn.Linear init."""

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        dropout: float = 0.5,
        in_dim: int | None = None,
        released_init: bool = True,
    ):
        super().__init__()
        dim = in_dim if in_dim is not None else feature_dim(encoder)
        if dim is None:
            raise ValueError("encoder has no feature_dim; pass in_dim")
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        if released_init:
            nn.init.normal_(self.fc.weight, mean=0.0, std=0.01)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.encoder(x).flatten(1)))


def average_by_video(
    scores: torch.Tensor, index: torch.Tensor, num_videos: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of clip/crop rows per video: scores ``[B, C]``, index ``[B]`` -> ``([num_videos, C], counts [num_videos])``."""
    sums = torch.zeros(num_videos, scores.shape[1], dtype=torch.float32, device=scores.device)
    sums.index_add_(0, index.long(), scores.float())
    counts = torch.zeros(num_videos, device=scores.device).index_add_(
        0, index.long(), torch.ones(index.shape[0], device=scores.device)
    )
    return sums / counts.clamp(min=1)[:, None], counts


def finetune(
    model: FinetuneModel,
    loader: Iterable[Batch],
    stream: Stream,
    device: torch.device,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    amp: Amp | str | None = None,
    seed: int = 0,
    progress: bool = False,
    optim: str = "adam",
    milestones: Sequence[int] = (),
    encoder_lr_scale: float = 1.0,
    forward_batch: int = 0,
    batch_flip: bool = False,
) -> FinetuneModel:
    """Train every parameter of ``model`` with cross-entropy on train-mode clips of ``stream`` (``optim``;
    cosine lr, or /10 at each of ``milestones`` epochs as the released classifier); the encoder's parameters at
    ``encoder_lr_scale`` times that rate (CoCLR's released finetune: 0.1). Each loader batch is one
    optimiser step, forwarded ``forward_batch`` clips at a time with the gradients summed (each its own
    BatchNorm batch, as DataParallel's per-GPU share; 0 = one forward); ``batch_flip``: the released one-coin
    flip of the whole batch (:class:`~vicc_fast.eval.linear.BatchFlip`)."""
    from vicc_fast.eval.linear import BatchFlip, accumulated_step, lr_at, make_optimizer

    torch.manual_seed(seed)
    model.to(device).train()
    enc = {id(p) for p in model.encoder.parameters()}
    groups = [
        {"params": list(model.encoder.parameters()), "lr_scale": encoder_lr_scale},
        {"params": [p for p in model.parameters() if id(p) not in enc], "lr_scale": 1.0},
    ]
    opt = make_optimizer(groups, optim, lr, weight_decay)
    amp = Amp(amp) if amp is not None else Amp.off
    scaler = torch.amp.GradScaler("cuda", enabled=amp is Amp.fp16 and device.type == "cuda")
    spe = len(loader)  # type: ignore[arg-type]
    total = max(epochs * spe, 1)
    step = 0
    flip = BatchFlip(batch_flip, seed)
    bar = tqdm(total=total, desc=f"finetune {Stream(stream).value}", disable=not progress, leave=False)
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for b in loader:
            for g in opt.param_groups:
                g["lr"] = lr_at(lr, step, total, spe, milestones) * g["lr_scale"]
            x = flip(b.views[stream][0].to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss = accumulated_step(
                model,
                x,
                b.label.to(device).long(),
                forward_batch,
                lambda part: scaler.scale(part).backward(),
                lambda: _autocast(device, amp),
            )
            scaler.step(opt)
            scaler.update()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval()


@torch.no_grad()
def predict_videos(
    model: nn.Module,
    loader: Iterable[Batch],
    stream: Stream,
    device: torch.device,
    num_videos: int,
    amp: Amp | str | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-video class probabilities averaged over all clips and crops the eval loader yields.

    Returns ``(probs [K, C], labels [K], index [K])`` on CPU for the K of ``num_videos`` videos the loader kept
    (rows in video-index order, ``index`` their split indices, as :func:`vicc_fast.eval.features.extract`;
    left-out videos, ``excluded_indices``, get no row); raises if a kept video got no clip.
    """
    model.eval()
    total: torch.Tensor | None = None
    counts = torch.zeros(num_videos)
    labels = torch.zeros(num_videos, dtype=torch.int64)
    for b in tqdm(loader, desc=f"test {Stream(stream).value}", disable=not progress, leave=False):
        with _autocast(device, amp):
            x = b.views[stream][0].to(device, non_blocking=True)
            logits = in_chunks(model, x, getattr(loader, "max_clips", None))
        probs = logits.float().softmax(1).cpu()
        idx = b.index.cpu().long()
        if total is None:
            total = torch.zeros(num_videos, probs.shape[1])
        total.index_add_(0, idx, probs)
        counts.index_add_(0, idx, torch.ones(idx.shape[0]))
        labels[idx] = b.label.cpu().long()
    keep = ~left_out(loader, num_videos)
    if total is None or bool(((counts == 0) & keep).any()):  # no clip at all, or a kept video without one
        missing = int(keep.sum()) if total is None else int(((counts == 0) & keep).sum())
        raise RuntimeError(f"test loader left {missing} of {int(keep.sum())} kept videos without a clip")
    wrong = wrong_clip_counts(loader, counts, keep)
    if wrong:
        raise RuntimeError(f"test loader gave {wrong} kept video(s) another number of clips than it promised")
    return total[keep] / counts[keep][:, None], labels[keep], torch.arange(num_videos)[keep]


def fuse_probabilities(*probs: torch.Tensor) -> torch.Tensor:
    """R+F: the mean of the streams' per-video probabilities ``[N, C]`` each."""
    shapes = {tuple(p.shape) for p in probs}
    if len(shapes) != 1:
        raise ValueError(f"streams' probabilities differ in shape: {sorted(shapes)}")
    return torch.stack([p.float() for p in probs]).mean(0)


def clone_encoder(encoder: nn.Module) -> nn.Module:
    """A trainable copy, so finetuning never alters the encoder the other evaluations use."""
    enc = copy.deepcopy(encoder)
    for p in enc.parameters():
        p.requires_grad_(True)
    return enc
