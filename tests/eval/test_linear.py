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


def test_released_linear_and_finetune_protocols_by_default():
    """Released lin-*.sh / ft-*.sh (main_classifier.py): linear probe SGD 0.1 (momentum 0.9), wd 1e-3, 100
    epochs, /10 at 60 and 80, L2-normalised features + BN + FC; finetune SGD 0.1, wd 1e-3, dropout 0.9, 500
    epochs, /10 at 200, 300, 400, 450."""
    from vicc_fast.config import EvalConfig, EvalOptim
    from vicc_fast.eval.linear import LinearProbe, lr_at

    lin, ft = EvalConfig().linear, EvalConfig().finetune
    assert (lin.optim, lin.lr, lin.weight_decay, lin.epochs) == (EvalOptim.sgd, 0.1, 1e-3, 100)
    assert lin.milestones == [60, 80] and lin.l2norm and lin.test_clips
    assert (ft.optim, ft.lr, ft.weight_decay) == (EvalOptim.sgd, 0.1, 1e-3)
    assert (ft.epochs, ft.dropout, ft.milestones) == (500, 0.9, [200, 300, 400, 450])
    spe = 7
    assert [
        lr_at(0.1, ep * spe, 100 * spe, spe, [60, 80]) for ep in (0, 59, 60, 79, 80, 99)
    ] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert lr_at(1.0, 50, 100, 10) == pytest.approx(0.5)  # no milestones: cosine
    probe = LinearProbe(4, 3, l2norm=True)
    x = torch.randn(6, 4)
    probe.eval()
    torch.testing.assert_close(probe(x), probe(10 * x))  # features are L2-normalised first
    assert probe.bn.affine


def test_released_probe_recipe_learns_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.nn.functional.one_hot(y, 3).float() * 4 + torch.randn(60, 3, generator=g)
    probe = fit_linear_on_features(
        x, y, 3, epochs=12, lr=0.1, batch_size=20, optim="sgd", milestones=[8, 10], l2norm=True
    )
    assert topk_accuracy(predict(probe, x), y)["top1"] > 90


def test_supervised_train_clips_as_the_released_classifier():
    """Released main_classifier train transform: crop + ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.3), no per-clip flip (its
    flip is the batch's: test_classifier_recipe.py),
    grayscale or blur; the demo keeps the pretraining augmentation (released_train_augment=false)."""
    from vicc_fast import config as C
    from vicc_fast.eval.runner import supervised_cfg

    d = supervised_cfg(C.load(C.CONFIG_DIR / "ucf101_s3d.yaml")).data.augment
    assert (d.hflip, d.grayscale_prob, d.blur_prob, d.color_jitter_prob, d.aug_controller) == (
        False, 0.0, 0.0, 0.3, False,
    )  # fmt: skip
    assert (d.brightness, d.contrast, d.saturation, d.hue) == (0.4, 0.4, 0.4, 0.1)
    demo = supervised_cfg(C.load(C.DEFAULT_CONFIG)).data.augment
    assert demo.hflip and not demo.aug_controller and demo.blur_prob == 0.0


def test_probe_test_averages_each_clips_probabilities_as_released():
    """eval.linear.test_clips: every clip of a test video through the encoder and the probe, the softmax
    probabilities averaged per video; with L2-normalised probe features that differs from the probe on the
    averaged feature (the cached path)."""
    from vicc_fast.config import Stream
    from vicc_fast.data.batch import Batch
    from vicc_fast.eval.finetune import predict_videos
    from vicc_fast.eval.linear import LinearProbe, ProbeOnEncoder

    torch.manual_seed(0)
    probe = LinearProbe(4, 3, l2norm=True).eval()
    enc = torch.nn.Flatten()  # [B, 4, 1, 1, 1] -> [B, 4]
    clips = torch.randn(5, 4, 1, 1, 1) * torch.tensor([1.0, 3.0, 0.2, 5.0, 1.0])[:, None, None, None, None]
    index = torch.tensor([0, 0, 0, 1, 1])
    batches = [Batch(views={Stream.rgb: [clips]}, label=torch.tensor([2, 2, 2, 1, 1]), index=index)]
    probs, labels, _ = predict_videos(ProbeOnEncoder(enc, probe), batches, Stream.rgb, torch.device("cpu"), 2)
    with torch.no_grad():
        per_clip = probe(clips.flatten(1)).softmax(1)
        want = torch.stack([per_clip[:3].mean(0), per_clip[3:].mean(0)])
        averaged = probe(torch.stack([clips[:3].flatten(1).mean(0), clips[3:].flatten(1).mean(0)])).softmax(1)
    torch.testing.assert_close(probs, want)
    assert labels.tolist() == [2, 1] and not torch.allclose(probs, averaged)
