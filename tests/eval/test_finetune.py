import pytest
import torch
from torch import nn

from vicc_fast.config import Stream
from vicc_fast.data.batch import Batch
from vicc_fast.eval.finetune import (
    FinetuneModel,
    average_by_video,
    clone_encoder,
    finetune,
    fuse_probabilities,
    predict_videos,
)
from vicc_fast.eval.linear import topk_accuracy


class ListLoader:
    def __init__(self, batches, num_samples):
        self.batches, self.num_samples = batches, num_samples
        self.epochs = []

    def set_epoch(self, e):
        self.epochs.append(e)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class SmallEncoder(nn.Module):
    feature_dim = 8

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, 1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3, 4))


def _clips(labels, index, seed):
    g = torch.Generator().manual_seed(seed)
    colour = torch.eye(3)[labels] * 2 - 1  # class = which channel is bright
    x = colour[:, :, None, None, None] + 0.3 * torch.randn(len(labels), 3, 2, 4, 4, generator=g)
    return Batch(views={Stream.rgb: [x]}, label=torch.tensor(labels), index=torch.tensor(index))


def test_average_by_video_and_fusion():
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    mean, counts = average_by_video(scores, torch.tensor([1, 1, 0, 0]), 3)
    torch.testing.assert_close(mean, torch.tensor([[0.75, 0.25], [0.5, 0.5], [0.0, 0.0]]))
    assert counts.tolist() == [2, 2, 0]
    a, b = torch.tensor([[0.9, 0.1]]), torch.tensor([[0.2, 0.8]])
    torch.testing.assert_close(fuse_probabilities(a, b), torch.tensor([[0.55, 0.45]]))
    with pytest.raises(ValueError):
        fuse_probabilities(a, torch.zeros(2, 2))


def test_dropout_sits_before_the_classifier():
    torch.manual_seed(0)
    m = FinetuneModel(SmallEncoder(), 3, dropout=0.5)
    x = torch.randn(4, 3, 2, 4, 4)
    m.train()
    assert not torch.equal(m(x), m(x))  # dropout active in training
    m.eval()
    assert torch.equal(m(x), m(x))
    assert list(dict(m.named_children())) == ["encoder", "dropout", "fc"]


def test_finetune_learns_and_test_averages_clips_and_crops():
    train = ListLoader([_clips([0, 1, 2, 0, 1, 2], list(range(6)), s) for s in range(4)], 6)
    enc = SmallEncoder()
    before = [p.clone() for p in enc.parameters()]
    model = FinetuneModel(clone_encoder(enc), 3, dropout=0.1)
    model = finetune(model, train, Stream.rgb, torch.device("cpu"), epochs=15, lr=0.05)
    assert train.epochs == list(range(15))
    assert all(torch.equal(a, b) for a, b in zip(before, enc.parameters()))  # the original is untouched
    # test: 3 videos x (2 clips x 10 crops) rows, videos interleaved over two batches
    lbl = [0, 1, 2] * 20
    idx = [0, 1, 2] * 20
    test = ListLoader([_clips(lbl[:30], idx[:30], 9), _clips(lbl[30:], idx[30:], 10)], 3)
    probs, labels, _ = predict_videos(model, test, Stream.rgb, torch.device("cpu"), 3)
    assert labels.tolist() == [0, 1, 2]
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    assert topk_accuracy(probs, labels)["top1"] == 100.0


def test_predict_videos_missing_video():
    model = FinetuneModel(SmallEncoder(), 3).eval()
    with pytest.raises(RuntimeError, match="1 of 3 kept videos without a clip"):
        predict_videos(model, ListLoader([_clips([0, 1], [0, 1], 0)], 3), Stream.rgb, torch.device("cpu"), 3)


def test_encoder_lr_scale_slows_the_encoder_only():
    """eval.finetune.encoder_lr_scale: the encoder's parameters train at scale x the classifier's rate (CoCLR's
    released main_classifier.py --train_what ft: the backbone at lr / 10). One Adam step moves every parameter
    by its group's lr: 0.1 * 1e-2 for the encoder, 1e-2 for the classifier; scale 1 moves both by 1e-2."""
    for scale, enc_step in ((0.1, 1e-3), (1.0, 1e-2)):
        torch.manual_seed(0)
        model = FinetuneModel(SmallEncoder(), 3, dropout=0.0)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        loader = ListLoader([_clips([0, 1, 2, 0], [0, 1, 2, 3], 0)], 4)
        finetune(model, loader, Stream.rgb, torch.device("cpu"), 1, lr=1e-2, weight_decay=0.0, optim="adam",
                 milestones=[10], encoder_lr_scale=scale)  # fmt: skip
        for n, p in model.named_parameters():
            moved = (p.detach() - before[n]).abs().max().item()
            assert moved == pytest.approx(enc_step if n.startswith("encoder.") else 1e-2, rel=1e-3), n
