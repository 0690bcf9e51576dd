"""Cluster evaluation: the two papers' protocols.

``hungarian`` (ViCC supplementary 3.1.2, measures as defined by SeLa, Asano et al.): hard cluster assignments
(K-means on features with K = number of classes, or each video's best-scoring prototype) are compared with the
ground-truth classes: accuracy after Hungarian matching, NMI, ARI, mean entropy of the class distribution inside
each cluster (natural log; 0 is best) and mean maximal class purity per cluster. Percentages except entropy, as in
the supplementary's Table 1. The prototypes scored are, by default, K = number of classes prototypes refitted on
the frozen encoder and head (:func:`refit_prototypes`: "we set the number of prototypes to K=101 for evaluation
purposes only"); with more clusters than classes (e.g. the 300 training prototypes, ``eval.cluster.prototypes=
trained``) Hungarian matching pairs only as many clusters as there are classes and the videos of unmatched
clusters count as errors.

``majority`` (GOCA section 4.3): K-means on the test features, "a label for each cluster via majority voting",
accuracy of the assigned labels, NMI and F1 ("the harmonic mean of recall and precision": macro over the
classes, as accuracy would equal micro F1), "we repeat experiments 50 times and take the average"
(:func:`majority_protocol`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score

import kernels


def _np(x: np.ndarray | torch.Tensor) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return a.astype(np.int64).ravel()


def _check(pred: np.ndarray, true: np.ndarray) -> None:
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(f"need equally long, non-empty label arrays, got {pred.shape} and {true.shape}")


def contingency(pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> np.ndarray:
    """``[clusters, classes]`` counts; row i = cluster id i (ids are compacted to 0..n-1 in sorted order)."""
    p, t = _np(pred), _np(true)
    _check(p, t)
    _, pi = np.unique(p, return_inverse=True)
    _, ti = np.unique(t, return_inverse=True)
    m = np.zeros((pi.max() + 1, ti.max() + 1), dtype=np.int64)
    np.add.at(m, (pi, ti), 1)
    return m


def hungarian_accuracy(pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> float:
    """Accuracy (%) under the one-to-one cluster -> class mapping that maximises it.

    pred: ``[N]`` cluster ids (any integers), true: ``[N]`` class labels.
    """
    m = contingency(pred, true)
    rows, cols = linear_sum_assignment(m, maximize=True)
    return 100.0 * float(m[rows, cols].sum()) / float(m.sum())


def mean_cluster_entropy(pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> float:
    """Mean over non-empty clusters of the entropy (nats) of their class distribution. 0 = every cluster pure."""
    m = contingency(pred, true).astype(np.float64)
    p = m / m.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return float(h.mean())


def mean_max_purity(pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> float:
    """Mean over non-empty clusters of the share (%) of their most frequent class."""
    m = contingency(pred, true).astype(np.float64)
    return 100.0 * float((m.max(axis=1) / m.sum(axis=1)).mean())


def cluster_metrics(pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> dict[str, float]:
    """``{"acc", "nmi", "ari", "entropy", "purity", "clusters"}`` of cluster ids ``pred [N]`` vs labels ``true [N]``."""
    p, t = _np(pred), _np(true)
    _check(p, t)
    return {
        "acc": hungarian_accuracy(p, t),
        "nmi": 100.0 * float(normalized_mutual_info_score(t, p)),
        "ari": 100.0 * float(adjusted_rand_score(t, p)),
        "entropy": mean_cluster_entropy(p, t),
        "purity": mean_max_purity(p, t),
        "clusters": float(len(np.unique(p))),
    }


def kmeans_assign(feats: np.ndarray | torch.Tensor, k: int, restarts: int = 10, seed: int = 0) -> np.ndarray:
    """K-means (k-means++, ``restarts`` initialisations, best inertia kept) cluster ids ``[N]`` of ``feats [N, F]``."""
    x = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
    if x.ndim != 2 or x.shape[0] < k:
        raise ValueError(f"K-means with K={k} needs at least K feature rows [N, F], got {x.shape}")
    km = KMeans(n_clusters=k, n_init=restarts, random_state=seed)
    return km.fit_predict(x.astype(np.float32)).astype(np.int64)


def prototype_assign(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Rounded prototype assignment: ``argmax_k <z_i, c_k>``; z: ``[N, D]`` (projected, L2-normalised),
    prototypes: ``[K, D]``. Returns ``[N]`` int64 cluster ids."""
    if z.dim() != 2 or prototypes.dim() != 2 or z.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"need z [N, D] and prototypes [K, D], got {tuple(z.shape)} and {tuple(prototypes.shape)}"
        )
    return (z.float() @ prototypes.float().T).argmax(dim=1)


def majority_labels(pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> np.ndarray:
    """Each sample gets its cluster's most frequent true class (ties: the smallest class id). ``[N]`` int64."""
    p, t = _np(pred), _np(true)
    _check(p, t)
    clusters, pi = np.unique(p, return_inverse=True)
    classes, ti = np.unique(t, return_inverse=True)
    m = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(m, (pi, ti), 1)
    return classes[m.argmax(axis=1)][pi]


def majority_metrics(pred: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor) -> dict[str, float]:
    """GOCA 4.3 of one clustering: ``{"acc", "nmi", "f1"}`` (percent) of majority-vote labels vs ``true``.
    F1 is the macro average over the true classes (a class no cluster is labelled with scores 0)."""
    p, t = _np(pred), _np(true)
    assigned = majority_labels(p, t)
    return {
        "acc": 100.0 * float((assigned == t).mean()),
        "nmi": 100.0 * float(normalized_mutual_info_score(t, p)),
        "f1": 100.0 * float(f1_score(t, assigned, labels=np.unique(t), average="macro", zero_division=0)),
    }


def majority_protocol(
    feats: np.ndarray | torch.Tensor, true: np.ndarray | torch.Tensor, k: int, runs: int, seed: int = 0
) -> dict[str, float]:
    """GOCA 4.3: ``runs`` K-means clusterings (one k-means++ initialisation each, seeds ``seed .. seed+runs-1``)
    of ``feats [N, F]`` into ``k`` clusters, each scored by :func:`majority_metrics`; the mean of each measure,
    its standard deviation over the runs (``*_sd``) and ``runs``."""
    if runs <= 0:
        raise ValueError(f"need at least one K-means run, got {runs}")
    per_run = [
        majority_metrics(kmeans_assign(feats, k, restarts=1, seed=seed + r), true) for r in range(runs)
    ]
    out: dict[str, float] = {}
    for key in ("acc", "nmi", "f1"):
        vals = np.array([m[key] for m in per_run])
        out[key], out[f"{key}_sd"] = float(vals.mean()), float(vals.std())
    out["runs"] = float(runs)
    return out


def refit_prototypes(
    z: torch.Tensor,
    k: int,
    *,
    epsilon: float,
    temperature: float,
    sinkhorn_iters: int,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
) -> torch.Tensor:
    """``k`` unit prototypes ``[k, D]`` trained on fixed unit embeddings ``z [N, D]`` (the frozen encoder and
    head's, one per video) by the swapped-prediction objective with Sinkhorn targets that trained the model's
    own prototypes (SwAV / ViCC eq.: cross-entropy between the equipartitioned assignment Q = Sinkhorn(z C^T,
    ``epsilon``, ``sinkhorn_iters``) and softmax(z C^T / ``temperature``); with one embedding per video a video
    predicts its own assignment), SGD with momentum 0.9 over shuffled batches for ``epochs`` epochs, prototypes
    re-normalised after every step as in training. The ViCC supplementary (3.1.2) trains K = 101 "for evaluation
    purposes only" without saying more; this refit keeps the encoder and head fixed (see FIDELITY.md)."""
    if z.dim() != 2 or z.shape[0] < 2 or k <= 0:
        raise ValueError(f"refit needs embeddings [N >= 2, D] and k > 0, got {tuple(z.shape)} and k={k}")
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(z.detach().float().cpu(), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, x.shape[1], generator=g), dim=1).requires_grad_(True)
    opt = torch.optim.SGD([c], lr=lr, momentum=0.9)
    b = max(2, min(batch_size, x.shape[0]))
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0] - b + 1, b):  # full batches only: Sinkhorn's equipartition is per batch
            xb = x[order[i : i + b]]
            scores = xb @ c.t()
            with torch.no_grad():
                q = kernels.sinkhorn(scores.detach(), epsilon, sinkhorn_iters, b, backend="torch")
            loss = -(q * torch.log_softmax(scores / temperature, dim=1)).sum(dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                c.copy_(torch.nn.functional.normalize(c, dim=1))
    return c.detach()
