"""2 gloo ranks with batch B each must compute what 1 rank with 2B computes: the loss, the gradients (DDP
averaging, Sinkhorn sums reduced across ranks) and, through the whole Trainer (DDP wrapper, LARS), the parameters
after a few steps; with batch shuffle off and on (the tiny encoder has no BatchNorm, so shuffling the batch
across ranks must change nothing but the order, and every view's gradient must still arrive)."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from vicc_fast import config as C
from vicc_fast.engine.distributed import (
    BatchShuffle,
    DistInfo,
    free_port,
    gather_with_grad,
    sinkhorn_all_reduce,
)
from vicc_fast.engine.trainer import NonFiniteLossError, Trainer, TrainingStopped
from vicc_fast.methods.base import StepState

from .tiny import TinyLoader, TinyMethod, loader_factory

B = 4


def _cfg(out: str, shuffle: bool) -> C.Config:
    return C.load(
        None,
        [
            f"train.out_dir={out}",
            f"train.batch_size={B}",
            "train.amp='off'",
            "train.channels_last=false",
            "train.progress=false",
            "train.ckpt_every_steps=0",
            f"train.batch_shuffle={str(shuffle).lower()}",
            "eval.after_phase=false",
            "schedule.phase=rgb1",
            "schedule.steps_per_epoch=2",
            "optim.lr=0.6",
            "optim.final_lr=0.3",
        ],
    )


def one_step(
    rank: int, world: int, batch: int, shuffle: bool
) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
    """Loss and gradients of one forward/backward of the tiny method (DDP when world > 1)."""
    torch.manual_seed(0)
    m = TinyMethod(queue_start=5, freeze=0)
    phase = m.phases()[0]
    m.setup_phase(phase)
    for p in m.parameters():
        p.requires_grad_(False)
    for p in m.trainable_parameters(phase):
        p.requires_grad_(True)
    b = next(iter(TinyLoader(phase.streams, 2, batch, rank=rank, world=world)))
    model = DDP(m, broadcast_buffers=False) if world > 1 else m
    seen = []
    if shuffle:
        bs = BatchShuffle(list(m.encoders().values()), seed=0)
        bs.set_step("t", 0)
    m.nets["rgb"].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    losses = model(b, StepState(phase, 0, 0, 0, 1))
    losses["loss"].backward()
    loss = losses["loss"].detach().clone()
    if world > 1:
        dist.all_reduce(loss)
        loss /= world
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    moved = None
    if shuffle:  # how much the encoder input differs from this rank's own batch
        moved = (seen[0] - b.views[phase.train_stream][0]).abs().max()
    return loss, grads, moved


class Crash(Exception):
    pass


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = {}
        for shuffle in (False, True):
            out[("step", shuffle)] = one_step(rank, world, B, shuffle)
            cfg = _cfg(f"{tmp}/run_{shuffle}", shuffle)
            torch.manual_seed(0)
            m = TinyMethod(queue_start=5, freeze=0)
            info = DistInfo(rank=rank, world_size=world)
            Trainer(
                cfg, m, info, loader_factory=loader_factory(B, rank=rank, world=world), tensorboard=False
            ).run()
            out[("train", shuffle)] = {k: v.clone() for k, v in m.state_dict().items()}
        # killed mid-epoch and resumed: per-rank buffers (the queue) must come back too
        cfg = _cfg(f"{tmp}/run_resume", False)
        cfg.train.ckpt_every_steps = 1
        info = DistInfo(rank=rank, world_size=world)

        def kill(phase, state):
            if (state.epoch, state.step) == (1, 0):
                raise Crash

        torch.manual_seed(0)
        factory = loader_factory(B, rank=rank, world=world)
        with contextlib.suppress(Crash):
            Trainer(
                cfg, TinyMethod(queue_start=5, freeze=0), info, loader_factory=factory, step_hook=kill
            ).run()
        torch.manual_seed(1)
        m = TinyMethod(queue_start=5, freeze=0)
        Trainer(
            cfg, m, info, loader_factory=loader_factory(B, rank=rank, world=world), tensorboard=False
        ).run()
        out["resumed"] = {k: v.clone() for k, v in m.state_dict().items()}
        # a stop request that reaches only rank 1: both ranks agree at the next log step and stop together
        cfg = _cfg(f"{tmp}/run_stop", False)
        cfg.train.log_every_steps = 2
        holder = {}

        def ask(phase, state):
            if rank == 1 and state.global_step == 0:
                holder["t"].request_stop()

        holder["t"] = Trainer(
            cfg, TinyMethod(), info, loader_factory=factory, step_hook=ask, tensorboard=False
        )
        try:
            holder["t"].run()
            out["stopped"] = None
        except TrainingStopped as exc:
            out["stopped"] = str(exc)
        # a NaN on rank 1 only: both ranks stop at the same check, rank 0 pointing at the other rank
        cfg = _cfg(f"{tmp}/run_nan", False)
        cfg.train.log_every_steps = 2
        nan_method = TinyMethod(nan_at=1 if rank == 1 else None)
        try:
            Trainer(cfg, nan_method, info, loader_factory=factory, tensorboard=False).run()
            out["nan"] = None
        except NonFiniteLossError as exc:
            out["nan"] = str(exc)
        x = torch.full((2, 3), float(rank + 1), requires_grad=True)
        g = gather_with_grad(x)
        (g * torch.arange(4.0).view(4, 1)).sum().backward()  # every rank weights row r by r
        out["gather"] = (g.detach(), x.grad.clone())
        red = sinkhorn_all_reduce()
        out["reduce"] = red(torch.tensor([float(rank + 1)])) if red else None
        torch.save(out, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo once, before the fork
    # fork: the children inherit the imported modules (spawn re-imports torch, ~30 s per child on a busy CI box)
    mp.start_processes(_worker, args=(2, free_port(), str(tmp)), nprocs=2, join=True, start_method="fork")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_ranks_equal_one_rank_with_twice_the_batch(two_ranks, shuffle):
    loss1, grads1, _ = one_step(0, 1, 2 * B, False)
    for r in range(2):
        loss2, grads2, moved = two_ranks[r][("step", shuffle)]
        torch.testing.assert_close(loss2, loss1, rtol=1e-5, atol=1e-6)
        assert grads1.keys() == grads2.keys() and len(grads1) > 0
        for k in grads1:
            torch.testing.assert_close(grads2[k], grads1[k], rtol=1e-4, atol=1e-6, msg=k)
        if shuffle:
            assert moved > 0.1  # the encoder saw a shuffled batch, not its own
    assert "nets.rgb.conv.weight" in grads1  # the gradient reached the encoder through the shuffle


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_rank_training_equals_one_rank(two_ranks, shuffle, tmp_path):
    cfg = _cfg(str(tmp_path / "one"), shuffle)
    cfg.train.batch_size = 2 * B
    torch.manual_seed(0)
    m = TinyMethod(queue_start=5, freeze=0)
    Trainer(cfg, m, loader_factory=loader_factory(2 * B), tensorboard=False).run()
    want = m.state_dict()
    for r in range(2):
        got = two_ranks[r][("train", shuffle)]
        for k, v in want.items():
            if k.startswith("queue"):
                continue  # per-rank buffer
            torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-6, msg=k)
    assert not torch.equal(want["nets.rgb.conv.weight"], TinyMethod().state_dict()["nets.rgb.conv.weight"])


def test_gather_with_grad_and_all_reduce(two_ranks):
    for r in range(2):
        g, grad = two_ranks[r]["gather"]
        assert torch.equal(g[:2], torch.ones(2, 3)) and torch.equal(g[2:], torch.full((2, 3), 2.0))
        # both ranks weight gathered row i by i: rank r's rows get (sum over ranks) of their weights
        want = 2 * torch.arange(4.0).view(4, 1).expand(4, 3)[2 * r : 2 * r + 2]
        assert torch.equal(grad, want)
        assert torch.equal(two_ranks[r]["reduce"], torch.tensor([3.0]))


def test_two_ranks_resume_exactly_with_their_own_buffers(two_ranks):
    for r in range(2):
        want, got = two_ranks[r][("train", False)], two_ranks[r]["resumed"]
        for k, v in want.items():
            assert torch.equal(v, got[k]), (r, k)
    assert not torch.equal(two_ranks[0]["resumed"]["queue"], two_ranks[1]["resumed"]["queue"])


def test_a_stop_request_on_one_rank_stops_all_after_the_same_step(two_ranks):
    for r in range(2):
        assert two_ranks[r]["stopped"] is not None and "after step 1;" in two_ranks[r]["stopped"]


def test_a_nan_on_one_rank_stops_every_rank(two_ranks):
    assert "at step 1 " in two_ranks[1]["nan"] and "swap_1=nan" in two_ranks[1]["nan"]
    assert "at step 1 " in two_ranks[0]["nan"] and "on another rank" in two_ranks[0]["nan"]
