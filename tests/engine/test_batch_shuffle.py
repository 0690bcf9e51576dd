"""The batch shuffle's all_to_all exchange is the all_gather definition it replaces: ``shuffle_route`` leaves
``full[perm[rank*B:(rank+1)*B]]`` on every rank and its reverse puts every row back (one process, simulated
exchange, W up to 4), and on real gloo ranks the shuffled/unshuffled slices and their gradients are bit-identical
to gather-permute-slice, as is a module wrapped by ``BatchShuffle`` (same permutation, so resumed runs repeat)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from vicc_fast.config import Stream
from vicc_fast.engine.distributed import (
    BatchShuffle,
    ShuffleRoute,
    derive_seed,
    free_port,
    gather_with_grad,
    shuffle_route,
    shuffled_slice,
    unshuffled_slice,
)


def perms(world: int, batch: int) -> list[torch.Tensor]:
    """Random permutations plus the corner cases: nothing moves, everything moves to the next rank, reversed."""
    n = world * batch
    out = [torch.randperm(n, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    out.append(torch.arange(n))  # every row stays home: sends to the other ranks are empty
    out.append((torch.arange(n) + batch) % n)  # every slice comes from one other rank
    out.append(torch.arange(n).flip(0))
    return out


def simulate(xs: list[torch.Tensor], routes: list[ShuffleRoute]) -> list[torch.Tensor]:
    """What ``exchange_rows`` computes on W ranks, with the all_to_all done by hand. xs: W x [B, ...]."""
    world = len(xs)
    chunks = [xs[s][routes[s].send_order].split(routes[s].send_counts) for s in range(world)]
    outs = []
    for r in range(world):
        parts = [chunks[s][r] for s in range(world)]
        assert [p.shape[0] for p in parts] == routes[r].recv_counts
        outs.append(torch.cat(parts)[routes[r].recv_index])
    return outs


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 3, 5])
def test_route_equals_gather_permute_slice(world: int, batch: int) -> None:
    xs = [torch.arange(batch * 2, dtype=torch.float32).view(batch, 2) + 100 * r for r in range(world)]
    full = torch.cat(xs)
    for perm in perms(world, batch):
        routes = [shuffle_route(perm, r, world, batch) for r in range(world)]
        for rt in routes:
            assert sorted(rt.send_order.tolist()) == list(range(batch))  # every local row sent exactly once
            assert sum(rt.send_counts) == sum(rt.recv_counts) == batch
        shuffled = simulate(xs, routes)
        inverse = torch.argsort(perm)
        for r in range(world):
            assert torch.equal(shuffled[r], full[perm[r * batch : (r + 1) * batch]])
        # the reverse route undoes the shuffle, and on any outputs is the gather definition of the unshuffle
        back = simulate(shuffled, [rt.reversed() for rt in routes])
        ys = [x * 7 + 1 for x in xs]
        unshuffled = simulate(ys, [rt.reversed() for rt in routes])
        for r in range(world):
            assert torch.equal(back[r], xs[r])
            assert torch.equal(unshuffled[r], torch.cat(ys)[inverse[r * batch : (r + 1) * batch]])


def test_route_checks_the_permutation_length_and_one_process_is_a_local_permute() -> None:
    with pytest.raises(ValueError, match="expected \\(8,\\)"):
        shuffle_route(torch.arange(6), 0, 2, 4)
    x, perm = torch.randn(5, 3), torch.randperm(5)
    assert torch.equal(shuffled_slice(x, perm, 0), x[perm])  # no process group: W = 1
    assert torch.equal(unshuffled_slice(x[perm], perm, 0), x)


# --------------------------------------------------------------------------------------------- real ranks

B = 5


def ref_shuffled(x: torch.Tensor, perm: torch.Tensor, rank: int) -> torch.Tensor:
    """The all_gather definition the exchange replaces (the code before the all_to_all)."""
    return gather_with_grad(x)[perm[rank * B : (rank + 1) * B]]


def ref_unshuffled(y: torch.Tensor, perm: torch.Tensor, rank: int) -> torch.Tensor:
    return gather_with_grad(y)[torch.argsort(perm)[rank * B : (rank + 1) * B]]


def _pair(rank: int, world: int, perm: torch.Tensor, shuffle, unshuffle) -> dict[str, torch.Tensor]:
    """Shuffle, a per-row op, unshuffle, a rank- and row-dependent loss: the values and the input's gradient,
    plus the gradients of each exchange alone."""
    x = (torch.arange(B * 6, dtype=torch.float32).view(B, 2, 3) + 100 * rank).requires_grad_(True)
    weight = torch.arange(1.0, B + 1).view(B, 1, 1) * (rank + 2)
    s = shuffle(x, perm, rank)
    u = unshuffle(s.square(), perm, rank)
    (u * weight).sum().backward()
    out = {"shuffled": s.detach(), "unshuffled": u.detach(), "grad": x.grad.clone()}
    x2 = x.detach().clone().requires_grad_(True)
    (shuffle(x2, perm, rank) * weight).sum().backward()
    out["grad_shuffle"] = x2.grad
    y = x.detach().clone().requires_grad_(True)
    (unshuffle(y, perm, rank) * weight).sum().backward()
    out["grad_unshuffle"] = y.grad
    return out


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out: dict = {"slices": []}
        for perm in perms(world, B):
            new = _pair(rank, world, perm, shuffled_slice, unshuffled_slice)
            ref = _pair(rank, world, perm, ref_shuffled, ref_unshuffled)
            out["slices"].append((new, ref))
        # a module under BatchShuffle against the gather definition with the permutation BatchShuffle draws
        torch.manual_seed(0)
        lin = nn.Linear(3, 4)
        x = torch.randn(B, 3, generator=torch.Generator().manual_seed(rank))
        bs = BatchShuffle([lin], seed=11)
        bs.set_step("rgb1", 3)
        got = lin(x)
        got.sum().backward()
        grad_new = lin.weight.grad.clone()
        bs.remove()
        lin.weight.grad = None
        g = torch.Generator().manual_seed(derive_seed(11, ("rgb1", 3), 0))
        perm = torch.randperm(world * B, generator=g)
        want = ref_unshuffled(lin(ref_shuffled(x, perm, rank)), perm, rank)
        want.sum().backward()
        out["hooked"] = (got.detach(), want.detach(), grad_new, lin.weight.grad.clone())
        bs = BatchShuffle([lin], seed=11)
        lin.eval()  # the frozen stream: untouched, no collective
        out["eval"] = (lin(x).detach(), x @ lin.weight.detach().T + lin.bias.detach())
        bs.remove()
        lin.train()
        out["skip_first"] = _skip_first(lin, x, rank, world)
        out["vicc"] = {views: _vicc_views(rank, world, views) for views in ("second", "all")}
        torch.save(out, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _skip_first(lin: nn.Module, x: torch.Tensor, rank: int, world: int) -> dict:
    """BatchShuffle(skip_first=True): the inputs the module sees in two steps of two calls each."""
    seen: list[torch.Tensor] = []
    bs = BatchShuffle([lin], seed=11, skip_first=True)
    h = lin.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))  # after the shuffle's
    outs = []
    for step in (3, 4):
        bs.set_step("rgb1", step)
        outs += [lin(x).detach(), lin(x).detach()]
    h.remove()
    bs.remove()
    perms_ = [
        torch.randperm(world * B, generator=torch.Generator().manual_seed(derive_seed(11, ("rgb1", s), 0)))
        for s in (3, 4)
    ]
    want = [x, ref_shuffled(x, perms_[0], rank), x, ref_shuffled(x, perms_[1], rank)]
    return {"seen": seen, "want": want, "outs": outs, "plain": lin(x).detach()}


def _vicc_views(rank: int, world: int, views: str) -> dict:
    """ViCC's cross-stream step on this rank under the trainer's batch shuffle (train.batch_shuffle_views),
    at a step where the released quirk runs the frozen stream in train mode: the inputs each backbone saw."""
    from tests.methods.methods_helpers import make_batch, small_config, state_at
    from vicc_fast.config import ShuffleViews
    from vicc_fast.engine.trainer import make_batch_shuffle
    from vicc_fast.methods import build_method

    torch.manual_seed(0)
    cfg = small_config()
    cfg.train.batch_shuffle_views = ShuffleViews(views)
    m = build_method(cfg)
    phase = next(p for p in m.phases() if p.name == "cross_rgb_c1")
    m.setup_phase(phase)
    m.train()
    bs = make_batch_shuffle(cfg, m, phase, world)
    seen: dict[str, list[torch.Tensor]] = {"rgb": [], "flow": []}
    for s in seen:
        m.nets[s].backbone.register_forward_pre_hook(
            lambda mod, a, s=s: seen[s].append(a[0].detach().clone())
        )
    bs.set_step(phase.name, 5)
    m.loss(make_batch(B=B, seed=rank), state_at(phase, 0, 5))  # step 5 of epoch 0: frozen flow in train mode
    bs.remove()
    return seen


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"{w}ranks")
def ranks(request, tmp_path_factory) -> list[dict]:
    world = request.param
    tmp = tmp_path_factory.mktemp(f"shuffle{world}")
    # fork: the children inherit the imported modules (spawn would re-import torch in each child)
    mp.start_processes(
        _worker, args=(world, free_port(), str(tmp)), nprocs=world, join=True, start_method="fork"
    )
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


def test_all_to_all_slices_and_gradients_equal_the_all_gather_definition(ranks) -> None:
    for r, res in enumerate(ranks):
        for i, (new, ref) in enumerate(res["slices"]):
            for k in ref:
                assert torch.equal(new[k], ref[k]), (r, i, k)


def test_batch_shuffle_hooks_equal_the_all_gather_definition(ranks) -> None:
    for res in ranks:
        got, want, grad_got, grad_want = res["hooked"]
        assert torch.equal(got, want)
        torch.testing.assert_close(grad_got, grad_want, rtol=0, atol=0)
        out, plain = res["eval"]
        torch.testing.assert_close(out, plain)


def test_skip_first_shuffles_only_the_later_calls_of_a_step(ranks) -> None:
    """skip_first (train.batch_shuffle_views=second): each step's first call of a module runs on the rank's own
    rows, its second on the slice of the permuted global batch; outputs return to their rows either way."""
    for res in ranks:
        r = res["skip_first"]
        assert len(r["seen"]) == 4
        for got, want in zip(r["seen"], r["want"]):
            assert torch.equal(got, want)
        assert not torch.equal(r["seen"][1], r["seen"][0])
        for o in r["outs"]:
            torch.testing.assert_close(o, r["plain"])


def test_vicc_shuffles_the_views_the_config_says_and_never_the_frozen_stream(ranks) -> None:
    """Released pretrain.py (l. 594-614): x1 through encoder_q as it is, x2 shuffled across GPUs; second(f2),
    second(f1) never shuffled (also while the quirk keeps it in train mode). train.batch_shuffle_views=second does
    that; all (ours) shuffles both views of the trained encoder."""
    from tests.methods.methods_helpers import make_batch

    world = len(ranks)
    own = [make_batch(B=B, seed=r) for r in range(world)]
    for rank, res in enumerate(ranks):
        mine = own[rank].views
        for views, shuffled in (("second", [False, True]), ("all", [True, True])):
            seen = res["vicc"][views]
            assert len(seen["rgb"]) == 2  # one forward per view (train.bn_per_view)
            for v, (got, sh) in enumerate(zip(seen["rgb"], shuffled)):
                assert torch.equal(got, mine[Stream.rgb][v]) is not sh, (views, v)
                pool = torch.cat([b.views[Stream.rgb][v] for b in own]).flatten(1)
                assert all((pool == row).all(1).any() for row in got.flatten(1))  # rows of the global view
            # the frozen stream, in train mode at this step: its own rows, view 2 then view 1 (released order)
            assert [torch.equal(a, b) for a, b in zip(seen["flow"], mine[Stream.flow][::-1])] == [True, True]
