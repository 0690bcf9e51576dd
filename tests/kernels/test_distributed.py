"""The distributed Sinkhorn on 2 gloo ranks (CPU, spawned processes) equals one process on the concatenated
batch: the per-prototype statistics are all-reduced every iteration, the per-sample ones stay local."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
B, L, K, D = 13, 20, 37, 20  # per rank: 13 batch rows + 20 queue rows


def _inputs():
    from tests.kernels.conftest import unit

    z = unit(WORLD, 2, B + L, D, seed=21)  # [rank, view, N, D]
    c = unit(K, D, seed=22)
    return z, c


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        import kernels
        from kernels import reference as R

        z, c = _inputs()
        s = R.prototype_scores(z[rank], c)  # [V, N, K]
        hook = kernels.make_all_reduce()
        res = {
            "torch": kernels.sinkhorn(s, 0.05, 3, B, hook, backend="torch"),
            "triton": kernels.sinkhorn(s.bfloat16(), 0.05, 3, B, hook, backend="triton"),
            "triton_z": kernels.assign(z[rank], c, 0.05, 3, B, hook, backend="triton"),
            "swav": torch.stack([R.sinkhorn_swav(s[v], 0.05, 3, B, hook, WORLD) for v in range(2)]),
        }
        torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_ranks_equal_one_rank_on_concatenated_batch(tmp_path):
    import kernels
    from kernels import reference as R

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    z, c = _inputs()
    # One process: every rank's batch rows first, then every rank's queue rows (row order does not matter).
    z_all = torch.cat([z[r, :, :B] for r in range(WORLD)] + [z[r, :, B:] for r in range(WORLD)], dim=1)
    s_all = R.prototype_scores(z_all, c)
    single = kernels.sinkhorn(s_all, 0.05, 3, WORLD * B, backend="torch")
    single_bf16 = kernels.sinkhorn(s_all.bfloat16(), 0.05, 3, WORLD * B, backend="torch")
    for r in range(WORLD):
        rows = slice(r * B, (r + 1) * B)
        torch.testing.assert_close(got[r]["torch"], single[:, rows], atol=2e-5, rtol=0)
        torch.testing.assert_close(got[r]["swav"], single[:, rows], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(got[r]["triton"], single_bf16[:, rows], atol=2e-5, rtol=0)
        torch.testing.assert_close(got[r]["triton_z"], single[:, rows], atol=2e-5, rtol=0)
    # and the distributed answer is not simply each rank on its own
    alone = kernels.sinkhorn(R.prototype_scores(z[0], c), 0.05, 3, B, backend="torch")
    assert (alone - got[0]["torch"]).abs().max() > 1e-3
