"""Cluster evaluation (ViCC supplementary 3.1.2, measures as defined by SeLa, Asano et al.).

Hard cluster assignments (K-means on features with K = number of classes, or each video's best-scoring
prototype) are compared with the ground-truth classes: accuracy after Hungarian matching, NMI, ARI, mean
entropy of the class distribution inside each cluster (natural log; 0 is best) and mean maximal class purity
per cluster. Percentages except entropy, as in the supplementary's Table 1.

With more clusters than classes (e.g. 300 prototypes, 10 classes) Hungarian matching pairs only as many clusters
as there are classes; the videos of unmatched clusters count as errors (the paper trains K = #classes for this).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


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
