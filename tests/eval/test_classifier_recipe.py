"""The linear probe's and finetuning's training steps as the released main_classifier.py runs them (issue 25
items 2, 3, 7): 128 clips per optimiser step in forwards of 32 (4 GPUs x 32 under DataParallel), one coin per
step flipping the whole batch, the finetune classifier initialised N(0, 0.01), evaluation in fp32."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from vicc_fast import config as C
from vicc_fast.config import Stream
from vicc_fast.data.batch import Batch
from vicc_fast.eval.finetune import FinetuneModel, finetune
from vicc_fast.eval.linear import accumulated_step, fit_linear_augmented

torch.set_num_threads(1)
CPU = torch.device("cpu")


class ListLoader:
    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, e):
        pass

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class BNEncoder(nn.Module):
    """conv -> BN -> mean; records every forward's input (its BatchNorm batch)."""

    feature_dim = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 6, 1)
        self.bn = nn.BatchNorm3d(6)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.bn(self.conv(x)).mean(dim=(2, 3, 4))


def batches(n_batches: int, rows: int, seed: int = 0) -> list[Batch]:
    """Clips whose left and right halves differ (a flip is visible), labels 0..2."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_batches):
        y = torch.arange(rows) % 3
        x = torch.randn(rows, 3, 2, 4, 4, generator=g) + torch.linspace(-1, 1, 4)  # a ramp along W
        out.append(Batch({Stream.rgb: [x]}, y, torch.arange(i * rows, (i + 1) * rows)))
    return out


class StepCounter:
    """Counts optimiser steps of every optimiser (torch's global step hook)."""

    def __enter__(self):
        self.n = 0
        self.h = register_optimizer_step_post_hook(lambda *a: setattr(self, "n", self.n + 1))
        return self

    def __exit__(self, *exc):
        self.h.remove()


# --------------------------------------------------------------------------------- item 2: batch per step
def test_paper_configs_train_probe_and_finetune_on_128_clips_per_step_in_forwards_of_32():
    """Released lin/ft scripts: --batch_size 32 --gpu 0,1,2,3, main_classifier.py l. 100 multiplies: 128 clips per
    SGD step, DataParallel forwarding 32 per GPU (each GPU's BatchNorm batch). Finetune and probe: one optimiser
    step per loader batch of eval.train_batch_size rows, the encoder (and the probe's BatchNorm1d) fed 32 rows
    at a time."""
    e = C.load(C.CONFIG_DIR / "ucf101_s3d.yaml").eval
    n, chunk = e.train_batch_size, e.train_forward_batch
    assert (n, chunk) == (128, 32)
    torch.manual_seed(0)
    enc = BNEncoder()
    with StepCounter() as steps:
        finetune(FinetuneModel(enc, 3, dropout=0.0), ListLoader(batches(3, n)), Stream.rgb, CPU, epochs=2,
                 lr=0.01, optim="sgd", forward_batch=chunk)  # fmt: skip
    assert steps.n == 2 * 3  # one SGD step per 128-clip batch
    assert [x.shape[0] for x in enc.seen] == [32] * (4 * 2 * 3)  # BN batches of 32, 4 per step

    # CoCLR's README commands name no --gpu (main_classifier.py l. 92-93: num_gpu 1): 32 clips per step, one forward
    e = C.load(C.CONFIG_DIR / "ucf101_coclr_s3d.yaml").eval
    enc = BNEncoder()
    with StepCounter() as steps:
        finetune(FinetuneModel(enc, 3, dropout=0.0), ListLoader(batches(3, e.train_batch_size)), Stream.rgb, CPU,
                 epochs=1, lr=0.01, optim="sgd", forward_batch=e.train_forward_batch)  # fmt: skip
    assert steps.n == 3 and [x.shape[0] for x in enc.seen] == [32] * 3

    probe_bn: list[int] = []
    h = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: probe_bn.append(a[0].shape[0]) if isinstance(m, nn.BatchNorm1d) else None
    )
    enc = BNEncoder()
    try:
        with StepCounter() as steps:
            fit_linear_augmented(enc, ListLoader(batches(3, n)), Stream.rgb, 6, 3, CPU, epochs=2, lr=0.1,
                                 optim="sgd", forward_batch=chunk)  # fmt: skip
    finally:
        h.remove()
    assert steps.n == 2 * 3
    assert probe_bn == [32] * (4 * 2 * 3)  # the probe's BatchNorm1d sees each GPU's share
    assert [x.shape[0] for x in enc.seen] == [32] * (4 * 2 * 3)


def test_accumulated_chunks_give_the_whole_batchs_gradient():
    """Without BatchNorm the 4 forwards of 32 sum to the gradient of one forward of 128 (the mean loss)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 4 * 4, 3))
    b = batches(1, 128)[0]
    x, y = b.views[Stream.rgb][0], b.label
    grads = []
    for chunk in (0, 32):
        model.zero_grad()
        loss = accumulated_step(model, x, y, chunk, lambda part: part.backward())
        grads.append((float(loss), [p.grad.clone() for p in model.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for a, b_ in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-7)


def test_supervised_loader_yields_train_batch_size_rows_per_step(tiny_shards):
    """The real train-mode loader of the probe / finetuning: eval.train_batch_size rows per batch, one batch per
    optimiser step (8 train videos, 4 per step: 2 steps per epoch)."""
    from vicc_fast.data.loader import build_loader
    from vicc_fast.eval.runner import supervised_cfg

    cfg = C.load(None, [f"data.root={tiny_shards}", "data.num_frames=4", "data.crop_size=16", "train.amp='off'",
                        "eval.train_batch_size=4", "eval.batch_size=2"])  # fmt: skip
    loader = build_loader(supervised_cfg(cfg), "train", "train", (Stream.rgb,), 1, 0, 1, CPU)
    loader.set_epoch(0)
    rows = [b.views[Stream.rgb][0].shape[0] for b in loader]
    assert len(loader) == 2 and rows == [4, 4]


# --------------------------------------------------------------------------------- item 3: the batch flip
def _steps_flipped(seen: list[torch.Tensor], loader_batches: list[Batch], per_step: int) -> list[bool]:
    """For each step: True when the inputs the encoder saw are the loader's batch flipped along W, False when
    unflipped; fails when a step mixes flipped and unflipped clips."""
    out = []
    for i, b in enumerate(loader_batches):
        got = torch.cat(seen[i * per_step : (i + 1) * per_step])
        x = b.views[Stream.rgb][0]
        if torch.equal(got, x):
            out.append(False)
        else:
            assert torch.equal(got, x.flip(-1)), f"step {i}: neither the batch nor its flip"
            out.append(True)
    return out


def test_probe_and_finetune_flip_the_whole_batch_on_one_coin_per_step():
    """Released transform_train_cuda (main_classifier.py l. 232-234): T.RandomHorizontalFlip on the batch tensor,
    one random.random() per call (utils/transforms.py l. 286-293): every clip of a step flipped, or none; over
    16 steps both happen. eval.train_batch_flip=false: the batches as the loader gave them."""
    assert C.load(C.CONFIG_DIR / "ucf101_s3d.yaml").eval.train_batch_flip
    data = batches(16, 8)
    enc = BNEncoder()
    finetune(
        FinetuneModel(enc, 3), ListLoader(data), Stream.rgb, CPU, epochs=1, forward_batch=4, batch_flip=True
    )
    flips = _steps_flipped(enc.seen, data, per_step=2)
    assert 3 <= sum(flips) <= 13  # both outcomes (16 fair coins)
    enc = BNEncoder()
    fit_linear_augmented(enc, ListLoader(data), Stream.rgb, 6, 3, CPU, epochs=1, batch_flip=True)
    assert 3 <= sum(_steps_flipped(enc.seen, data, per_step=1)) <= 13
    enc = BNEncoder()
    finetune(FinetuneModel(enc, 3), ListLoader(data), Stream.rgb, CPU, epochs=1, batch_flip=False)
    assert not any(_steps_flipped(enc.seen, data, per_step=1))


def test_released_train_clips_get_no_per_clip_flip_the_demo_keeps_its_own():
    """With eval.released_train_augment the loader flips no clip (the flip is the batch's, above); the demo keeps
    the pretraining augmentation's per-clip flip and no batch flip."""
    from vicc_fast.eval.runner import supervised_cfg

    paper = supervised_cfg(C.load(C.CONFIG_DIR / "ucf101_s3d.yaml"))
    assert not paper.data.augment.hflip and paper.eval.train_batch_flip
    demo = supervised_cfg(C.load(C.DEFAULT_CONFIG))
    assert demo.data.augment.hflip and not demo.eval.train_batch_flip


# --------------------------------------------------------------------------------- item 7: head and precision
def test_finetune_classifier_initialised_as_released():
    """Released classifier.py l. 46, 64-69: the final FC's weight N(0, 0.01), bias 0 (eval.finetune.released_init);
    false: PyTorch's default Linear init (uniform, std 1/sqrt(3 * 1024) = 0.018, non-zero bias)."""
    torch.manual_seed(0)
    enc = nn.Identity()
    fc = FinetuneModel(enc, 101, in_dim=1024).fc
    assert abs(float(fc.weight.detach().std()) - 0.01) < 5e-4 and not fc.bias.any()
    default = FinetuneModel(enc, 101, in_dim=1024, released_init=False).fc
    assert abs(float(default.weight.detach().std()) - 1024**-0.5 / 3**0.5) < 1e-3 and default.bias.any()


class AutocastRecorder(nn.Module):
    feature_dim = 3

    def __init__(self):
        super().__init__()
        self.autocast: list[bool] = []

    def forward(self, x):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return x.float().mean(dim=(2, 3, 4))


@pytest.mark.parametrize(("eval_amp", "autocast"), [(None, False), ("bf16", True)])
def test_evaluation_runs_in_fp32_whatever_the_training_precision(eval_amp, autocast):
    """Released evaluation ran in fp32: with train.amp=bf16 the after-phase retrieval's forwards run without
    autocast and its loaders are built for fp32 clips (train.amp := eval.amp); eval.amp=bf16 is the switch."""
    from tests.eval.test_phase_eval import factory, phase
    from vicc_fast.eval.retrieval import evaluate_phase

    over = ["train.amp=bf16", "eval.retrieval.recall_ks=[1]"] + ([f"eval.amp={eval_amp}"] if eval_amp else [])
    cfg = C.load(None, over)
    enc = AutocastRecorder()
    amps: list[C.Amp] = []
    make = factory()

    def loader_factory(c, split, stream):
        amps.append(c.train.amp)
        return make(c, split, stream)

    method = type("M", (), {"encoders": lambda self: {Stream.rgb: enc}})()
    evaluate_phase(cfg, method, phase(Stream.rgb, None), 0, 1, CPU, loader_factory=loader_factory)
    assert enc.autocast and set(enc.autocast) == {autocast}
    assert set(amps) == {C.Amp.bf16 if autocast else C.Amp.off}
