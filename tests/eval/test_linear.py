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


def test_linear_augmented_keeps_encoder_frozen():
    from torch import nn

    from vicc_fast.config import Stream
    from vicc_fast.data.batch import Batch
    from vicc_fast.eval.linear import fit_linear_augmented

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(3, 6, 1)
            self.bn = nn.BatchNorm3d(6)

        def forward(self, x):
            return self.bn(self.conv(x)).mean(dim=(2, 3, 4))

    class Loader:
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            y = torch.arange(12) % 3
            x = (torch.eye(3)[y] * 3)[:, :, None, None, None] + 0.2 * torch.randn(12, 3, 2, 2, 2, generator=g)
            self.batches = [
                Batch({Stream.rgb: [x[i : i + 4]]}, y[i : i + 4], torch.arange(i, i + 4)) for i in (0, 4, 8)
            ]
            self.epochs = []

        def set_epoch(self, e):
            self.epochs.append(e)

        def __iter__(self):
            return iter(self.batches)

        def __len__(self):
            return 3

    enc, loader = Enc().train(), Loader()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    probe = fit_linear_augmented(enc, loader, Stream.rgb, 6, 3, torch.device("cpu"), epochs=20, lr=0.05)
    assert loader.epochs == list(range(20))
    assert all(
        torch.equal(before[k], v) for k, v in enc.state_dict().items()
    )  # weights and BN stats untouched
    assert enc.training  # mode restored
    with torch.no_grad():
        feats = torch.cat([enc.eval()(b.views[Stream.rgb][0]) for b in loader.batches])
    labels = torch.cat([b.label for b in loader.batches])
    assert topk_accuracy(predict(probe, feats), labels)["top1"] == 100.0
