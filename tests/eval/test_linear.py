import pytest
import torch

from vicc_fast.eval.linear import fit_linear_on_features, predict, topk_accuracy


def _separable(n_per, classes, dim, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(classes, dim, generator=g)
    y = torch.arange(classes).repeat_interleave(n_per)
    x = 4 * w[y] + scale * torch.randn(len(y), dim, generator=g) * 0.3
    return x, y


def test_linear_probe_separable_reaches_near_100():
    x, y = _separable(30, 6, 16, seed=0)
    xt, yt = _separable(10, 6, 16, seed=0)  # same class directions, fresh noise draw order
    probe = fit_linear_on_features(x, y, 6, epochs=30, lr=1e-2, batch_size=32)
    acc = topk_accuracy(predict(probe, xt), yt)
    assert acc["top1"] >= 98.0
    assert acc["top5"] == 100.0


def test_linear_probe_random_labels_stays_low_on_held_out():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(200, 16, generator=g), torch.randint(0, 5, (200,), generator=g)
    xt, yt = torch.randn(200, 16, generator=g), torch.randint(0, 5, (200,), generator=g)
    probe = fit_linear_on_features(x, y, 5, epochs=20, lr=1e-2, batch_size=50)
    assert topk_accuracy(predict(probe, xt), yt)["top1"] < 40.0


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    acc = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert acc["top1"] == pytest.approx(100 / 3)
    assert acc["top2"] == pytest.approx(200 / 3)
    assert acc["top5"] == 100.0  # capped at C


def test_linear_bad_labels():
    with pytest.raises(ValueError, match="labels must lie"):
        fit_linear_on_features(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), 3, epochs=1)
