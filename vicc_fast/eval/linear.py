"""Linear probe: a linear classifier on a frozen encoder's features, top-1 / top-5 accuracy.

As in CoCLR / ViCC: the backbone is frozen, a parameter-free batch norm standardises its features and one linear
layer is trained with cross-entropy. Two training inputs:
- ``augment=True`` (the papers): every epoch the train videos are read through the train-mode pipeline
  (random crops, flips, colour jitter; Gaussian blur off) and encoded by the frozen backbone;
- ``augment=False``: the classifier trains on the cached, clip-averaged eval features of the train videos
  (no augmentation; seconds instead of an encoder pass per epoch).
Test videos, as released (``eval.linear.test_clips``): every eval clip and crop through the frozen encoder and
the probe, the softmax probabilities averaged per video; or the probe on each video's cached clip-averaged eval
feature (one encoder pass fewer; with L2-normalised probe features not the same thing).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vicc_fast.config import Stream
from vicc_fast.data.batch import Batch
from vicc_fast.eval.features import _autocast


class ProbeOnEncoder(nn.Module):
    """``[B, C, T, H, W] -> [B, classes]``: a frozen encoder's flattened float features through ``probe`` (the
    released linear classifier's test path, one clip at a time)."""

    def __init__(self, encoder: nn.Module, probe: nn.Module) -> None:
        super().__init__()
        self.encoder, self.probe = encoder, probe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probe(self.encoder(x).float().flatten(1))


class LinearProbe(nn.Module):
    """``[B, F] -> [B, C]``: BatchNorm1d without affine parameters, then a linear layer; with ``l2norm`` (the
    released ViCC/CoCLR ``LinearClassifier``): L2-normalised features, an affine BatchNorm1d, the linear layer."""

    def __init__(self, in_dim: int, num_classes: int, l2norm: bool = False):
        super().__init__()
        self.l2norm = l2norm
        self.bn = nn.BatchNorm1d(in_dim, affine=l2norm)
        self.fc = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(F.normalize(x, dim=1) if self.l2norm else x))


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": .., "top5": ..}`` in percent; logits or probabilities ``[N, C]``, labels ``[N]``. k is capped at C."""
    if logits.dim() != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(
            f"need scores [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices
    hit = pred == labels.to(pred.device)[:, None]
    return {f"top{k}": 100.0 * hit[:, : min(k, kmax)].any(1).float().mean().item() for k in ks}


class BatchFlip:
    """The released classifier's GPU flip (``main_classifier.py`` l. 232-234 ``transform_train_cuda``:
    ``T.RandomHorizontalFlip()``, ``utils/transforms.py`` l. 286-293: ``if random.random() < self.p:
    return hflip(vid)`` on the whole batch tensor): one coin per training step (p = 0.5) flips every clip of the
    batch ``[B, C, T, H, W]`` along W, or none. Coins from a generator seeded with ``seed``; off: identity."""

    def __init__(self, enabled: bool, seed: int) -> None:
        self.enabled = enabled
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled and float(torch.rand((), generator=self.gen)) < 0.5:
            return x.flip(-1)
        return x


def accumulated_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int,
    backward: Callable[[torch.Tensor], None],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Cross-entropy of one optimiser step over ``x [N, ...]``, forwarded and back-propagated ``chunk`` rows at a
    time (0 or >= N: one forward), each chunk's loss summed and divided by N so the gradients add up to the
    whole batch's mean, as DataParallel's gathered logits give it (each chunk its own BatchNorm batch, like a
    GPU's share). ``backward(loss)`` runs the backward (a GradScaler's scale, for instance). Returns the
    detached loss of the step."""
    n = x.shape[0]
    if chunk <= 0 or chunk >= n:
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        backward(loss)
        return loss.detach()
    total = torch.zeros((), device=x.device)
    for xc, yc in zip(x.split(chunk), y.split(chunk)):
        with autocast():
            loss = F.cross_entropy(model(xc).float(), yc, reduction="sum") / n
        backward(loss)
        total += loss.detach()
    return total


def lr_at(base: float, step: int, total: int, steps_per_epoch: int, milestones: Sequence[int] = ()) -> float:
    """The rate of ``step`` (0-based, of ``total``): with ``milestones`` (epochs) the released step schedule,
    ``base * 0.1 ** #{m <= epoch}``; without, a cosine from ``base`` to 0."""
    if milestones:
        epoch = step // max(steps_per_epoch, 1)
        return base * 0.1 ** sum(epoch >= m for m in milestones)
    return 0.5 * base * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def make_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict], name: str, lr: float, weight_decay: float
):
    """``sgd`` (momentum 0.9, as the released classifier) or ``adam``, over parameters or param groups."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (sgd | adam)")


def _fit(
    probe: LinearProbe,
    epoch_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    steps_per_epoch: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    progress: bool,
    optim: str = "adam",
    milestones: Sequence[int] = (),
    forward_batch: int = 0,
) -> LinearProbe:
    opt = make_optimizer(probe.parameters(), optim, lr, weight_decay)
    total, step = epochs * steps_per_epoch, 0
    probe.train()
    for epoch in tqdm(range(epochs), desc="linear probe", disable=not progress, leave=False):
        for x, y in epoch_batches(epoch):
            for g in opt.param_groups:
                g["lr"] = lr_at(lr, step, total, steps_per_epoch, milestones)
            opt.zero_grad(set_to_none=True)
            accumulated_step(probe, x, y, forward_batch, lambda loss: loss.backward())
            opt.step()
            step += 1
    return probe.eval()


def fit_linear_on_features(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = False,
    optim: str = "adam",
    milestones: Sequence[int] = (),
    l2norm: bool = False,
) -> LinearProbe:
    """Train a :class:`LinearProbe` on fixed features ``[N, F]`` with labels ``[N]`` (``optim``; cosine lr, or
    /10 at each of ``milestones`` epochs)."""
    if feats.dim() != 2 or labels.shape != (feats.shape[0],):
        raise ValueError(
            f"need feats [N, F] and labels [N], got {tuple(feats.shape)} and {tuple(labels.shape)}"
        )
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]"
        )
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = LinearProbe(feats.shape[1], num_classes, l2norm).to(feats.device)
    n = feats.shape[0]
    bs = min(batch_size, n)
    drop_last = n > bs  # BN needs > 1 sample; a short last batch is folded into the next epoch's shuffle

    def batches(_: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(n, generator=g).to(feats.device)
        stop = n - n % bs if drop_last else n
        for a in range(0, stop, bs):
            i = perm[a : a + bs]
            yield feats[i].float(), labels[i].long()

    return _fit(probe, batches, max(n // bs, 1), epochs, lr, weight_decay, progress, optim, milestones)


def fit_linear_augmented(
    encoder: nn.Module,
    loader: Iterable[Batch],
    stream: Stream,
    in_dim: int,
    num_classes: int,
    device: torch.device,
    epochs: int = 100,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    amp: str | None = None,
    seed: int = 0,
    progress: bool = False,
    optim: str = "adam",
    milestones: Sequence[int] = (),
    l2norm: bool = False,
    forward_batch: int = 0,
    batch_flip: bool = False,
) -> LinearProbe:
    """Train a :class:`LinearProbe` on a frozen ``encoder`` fed augmented train clips from a train-mode loader
    (one view of ``stream`` per video; ``loader.set_epoch`` reshuffles when the loader has it). Each loader batch
    is one optimiser step; ``forward_batch`` clips per forward (the encoder's, and the probe's BatchNorm batch,
    as DataParallel's per-GPU share; 0 = the whole batch); ``batch_flip``: :class:`BatchFlip` on every batch."""
    torch.manual_seed(seed)
    probe = LinearProbe(in_dim, num_classes, l2norm).to(device)
    was_training = encoder.training
    encoder.eval()  # frozen, including batch-norm statistics
    flip = BatchFlip(batch_flip, seed)

    def batches(epoch: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for b in loader:
            x = flip(b.views[stream][0].to(device, non_blocking=True))
            parts = (
                x.split(forward_batch) if forward_batch > 0 else (x,)
            )  # eval mode: chunks bound memory only
            with torch.no_grad(), _autocast(device, amp):
                f = torch.cat([encoder(p).float().flatten(1) for p in parts])
            yield f, b.label.to(device).long()

    try:
        steps = len(loader)  # type: ignore[arg-type]
        return _fit(
            probe, batches, steps, epochs, lr, weight_decay, progress, optim, milestones, forward_batch
        )
    finally:
        encoder.train(was_training)


@torch.no_grad()
def predict(probe: nn.Module, feats: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Class probabilities ``[N, C]`` of features ``[N, F]``."""
    probe.eval()
    dev = next(probe.parameters()).device
    return torch.cat(
        [
            probe(feats[a : a + batch_size].to(dev).float()).softmax(1).cpu()
            for a in range(0, feats.shape[0], batch_size)
        ]
    )
