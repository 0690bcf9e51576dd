import math

import numpy as np
import pytest
import torch

from vicc_fast.eval.cluster import (
    cluster_metrics,
    hungarian_accuracy,
    kmeans_assign,
    mean_cluster_entropy,
    mean_max_purity,
    prototype_assign,
)


def test_permuted_labels_are_perfect():
    true = np.array([0, 0, 1, 1, 2, 2, 3])
    pred = np.array([7, 7, 3, 3, 0, 0, 5])  # a relabelling of the same partition
    m = cluster_metrics(pred, true)
    assert m["acc"] == 100.0
    assert m["nmi"] == pytest.approx(100.0)
    assert m["ari"] == pytest.approx(100.0)
    assert m["entropy"] == 0.0
    assert m["purity"] == 100.0
    assert m["clusters"] == 4


def test_hungarian_known_case():
    # cluster 0 = {a,a,b}, cluster 1 = {b,b,a}: best map 0->a, 1->b gives 4/6
    true = np.array([0, 0, 1, 1, 1, 0])
    pred = np.array([0, 0, 0, 1, 1, 1])
    assert hungarian_accuracy(pred, true) == pytest.approx(100 * 4 / 6)
    # a single cluster can match only one class even if it is the majority for two
    assert hungarian_accuracy(np.zeros(6), true) == pytest.approx(50.0)


def test_more_clusters_than_classes_unmatched_count_as_errors():
    true = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 2, 3])  # four pure singleton clusters, two classes
    assert hungarian_accuracy(pred, true) == 50.0
    assert mean_max_purity(pred, true) == 100.0
    assert mean_cluster_entropy(pred, true) == 0.0


def test_entropy_and_purity_hand_computed():
    # cluster 0: classes {0,1} half/half -> H = ln 2, purity 50; cluster 1: {2,2,2,0} -> H = -(.75ln.75+.25ln.25), purity 75
    true = np.array([0, 1, 2, 2, 2, 0])
    pred = np.array([0, 0, 1, 1, 1, 1])
    h1 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert mean_cluster_entropy(pred, true) == pytest.approx((math.log(2) + h1) / 2)
    assert mean_max_purity(pred, true) == pytest.approx((50 + 75) / 2)


def test_nmi_ari_independent_labelling_near_zero():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 5, 2000)
    pred = rng.integers(0, 5, 2000)
    m = cluster_metrics(pred, true)
    assert abs(m["ari"]) < 2 and m["nmi"] < 2


def test_kmeans_recovers_separated_blobs():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 8)) * 10
    true = np.repeat(np.arange(4), 25)
    x = centres[true] + rng.normal(size=(100, 8))
    pred = kmeans_assign(torch.from_numpy(x), 4, restarts=3)
    assert cluster_metrics(pred, true)["acc"] == 100.0


def test_prototype_assign():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    c = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    assert prototype_assign(z, c).tolist() == [1, 0, 0]
    with pytest.raises(ValueError):
        prototype_assign(z, torch.zeros(3, 5))


def test_bad_input():
    with pytest.raises(ValueError):
        cluster_metrics(np.array([0, 1]), np.array([0, 1, 2]))
    with pytest.raises(ValueError):
        kmeans_assign(np.zeros((3, 2)), 5)
