import math

import numpy as np
import pytest
import torch

from vicc_fast.eval.cluster import (
    cluster_metrics,
    hungarian_accuracy,
    kmeans_assign,
    majority_labels,
    majority_metrics,
    majority_protocol,
    mean_cluster_entropy,
    mean_max_purity,
    prototype_assign,
    refit_prototypes,
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


def test_majority_vote_labels_acc_nmi_f1_hand_computed():
    """GOCA 4.3: each cluster gets its majority class; Acc of those labels, NMI, F1 (macro over classes)."""
    true = np.array([0, 0, 1, 1, 1, 0, 2, 2])
    pred = np.array([5, 5, 5, 9, 9, 9, 9, 7])  # cluster 5: {0,0,1} -> 0; 9: {1,1,0,2} -> 1; 7: {2} -> 2
    assert majority_labels(pred, true).tolist() == [0, 0, 0, 1, 1, 1, 1, 2]
    m = majority_metrics(pred, true)
    assert m["acc"] == pytest.approx(100 * 5 / 8)
    # per class (precision, recall): 0: (2/3, 2/3), 1: (2/4, 2/3), 2: (1/1, 1/2)
    f1 = [2 / 3, 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3), 2 * 1 * 0.5 / 1.5]
    assert m["f1"] == pytest.approx(100 * sum(f1) / 3)
    from sklearn.metrics import normalized_mutual_info_score

    assert m["nmi"] == pytest.approx(100 * normalized_mutual_info_score(true, pred))
    # majority vote, unlike Hungarian matching, lets two clusters carry one class: over-clustering is not punished
    split = np.array([0, 1, 2, 2, 3, 4, 5, 5])
    assert majority_metrics(split, true)["acc"] == 100.0 > hungarian_accuracy(split, true)
    # a class no cluster is labelled with scores F1 0
    assert majority_metrics(np.zeros(8), true)["f1"] == pytest.approx(100 * (2 * 3 / 8 * 1 / (3 / 8 + 1)) / 3)


def test_majority_protocol_averages_independent_runs():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(5, 6)) * 1.5
    true = np.repeat(np.arange(5), 30)
    x = centres[true] + rng.normal(size=(150, 6))
    res = majority_protocol(x, true, 5, runs=6, seed=3)
    per = [majority_metrics(kmeans_assign(x, 5, restarts=1, seed=3 + r), true) for r in range(6)]
    assert res["runs"] == 6
    for key in ("acc", "nmi", "f1"):
        assert res[key] == pytest.approx(np.mean([p[key] for p in per]))
    assert res["acc_sd"] > 0  # the runs differ: one initialisation each (the average is what GOCA reports)
    with pytest.raises(ValueError):
        majority_protocol(x, true, 5, runs=0)


def test_refit_prototypes_finds_the_classes_the_training_prototypes_miss():
    """ViCC supp. 3.1.2: K = #classes prototypes for evaluation. Embeddings of 6 classes on the sphere; 30
    'training' prototypes (several per class) score poorly under Hungarian matching, K=6 refitted ones near 100."""
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1)
    true = torch.arange(6).repeat_interleave(40)
    z = torch.nn.functional.normalize(centres[true] + 0.15 * torch.randn(240, 16, generator=g), dim=1)
    many = torch.nn.functional.normalize(centres.repeat(5, 1) + 0.1 * torch.randn(30, 16, generator=g), dim=1)
    trained_acc = cluster_metrics(prototype_assign(z, many), true)["acc"]
    c = refit_prototypes(
        z, 6, epsilon=0.05, temperature=0.1, sinkhorn_iters=3, epochs=60, lr=0.1, batch_size=64, seed=0
    )
    assert c.shape == (6, 16)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(6))
    m = cluster_metrics(prototype_assign(z, c), true)
    assert m["clusters"] == 6 and m["acc"] > 95 and m["acc"] > trained_acc + 30
    again = refit_prototypes(
        z, 6, epsilon=0.05, temperature=0.1, sinkhorn_iters=3, epochs=60, lr=0.1, batch_size=64, seed=0
    )
    assert torch.equal(c, again)  # seeded: one evaluation, one answer
