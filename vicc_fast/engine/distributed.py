"""Process group setup from torchrun's environment and the collectives the engine and methods need.

- :func:`init_distributed` reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by torchrun; absent = one process)
  and starts NCCL on GPU or gloo on CPU. One process never creates a group.
- :func:`sinkhorn_all_reduce` is the ``all_reduce`` callable for ``kernels.sinkhorn``: it sums the Sinkhorn row/col
  sums over ranks so the assignment is the one of the global batch (None on one process).
- :class:`BatchShuffle` shuffles the batch across ranks around an encoder (MoCo/CoCLR batch shuffle, so BatchNorm
  statistics cannot leak intra-batch information) with forward hooks. Both exchanges (uneven all_to_all of only
  the rows each rank needs) carry gradients back to every input, so no view's gradient is cut.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from vicc_fast.config import Device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(pref: Device, local_rank: int = 0) -> torch.device:
    """auto = this rank's GPU when CUDA is available, else CPU; gpu without CUDA is an error."""
    if pref is Device.gpu and not torch.cuda.is_available():
        raise ValueError("config key 'train.device': gpu requested but CUDA is not available")
    if pref is Device.cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(pref: Device = Device.auto, timeout_min: float = 60.0) -> DistInfo:
    """Join the process group described by torchrun's environment variables (no group on one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(minutes=timeout_min),
            device_id=device if device.type == "cuda" else None,
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def current() -> DistInfo:
    """The DistInfo of an already initialised group (or of one process)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())
    return DistInfo()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks; returns ``t`` (identity on one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def sinkhorn_all_reduce() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The ``all_reduce`` argument for ``kernels.sinkhorn``: in-place sum over ranks, or None on one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return all_reduce_sum
    return None


def broadcast_object(obj: object, src: int = 0) -> object:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sends each rank the summed gradient of its own slice.

    x: [B, ...] on every rank -> [W*B, ...]. Backward: the gradients of all ranks w.r.t. the gathered tensor are
    summed (reduce-scatter on NCCL, all-reduce + slice on gloo, which has no reduce-scatter).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.world, ctx.rank, ctx.n = world, rank, x.shape[0]
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        if dist.get_backend() == dist.Backend.NCCL:
            out = torch.empty((ctx.n, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM)
            return out
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [W*B, ...] in rank order, differentiable (identity on one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any values (stable across processes and runs, unlike hash())."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class ShuffleRoute(NamedTuple):
    """Who sends which rows where in one batch-shuffle exchange, seen from one rank (B rows, W ranks).

    send_order: [B] int64, this rank's local rows in the order they are sent (grouped by destination rank);
    send_counts: W ints, rows sent to each rank; recv_counts: W ints, rows received from each rank;
    recv_index: [B] int64, ``received[recv_index]`` puts the received rows (grouped by source) in their final order.
    """

    send_order: torch.Tensor
    send_counts: list[int]
    recv_counts: list[int]
    recv_index: torch.Tensor

    def reversed(self) -> ShuffleRoute:
        """The route of the inverse exchange: every row goes back to where it came from, in its original place.

        The rows to return are the received ones in arrival order (``argsort(recv_index)`` of the final order);
        they arrive back grouped as they were sent, so ``argsort(send_order)`` restores the local order."""
        return ShuffleRoute(
            send_order=torch.argsort(self.recv_index),
            send_counts=self.recv_counts,
            recv_counts=self.send_counts,
            recv_index=torch.argsort(self.send_order),
        )


def shuffle_route(perm: torch.Tensor, rank: int, world: int, batch: int) -> ShuffleRoute:
    """The all_to_all route that leaves ``full[perm[rank*B:(rank+1)*B]]`` on this rank, where ``full`` [W*B, ...]
    is the concatenation of the W ranks' batches [B, ...] in rank order.

    perm: [W*B] a permutation of range(W*B) (CPU; the counts become Python ints for the collective).
    Global row g lives on rank g // B at local row g % B. Every rank sends each of its rows exactly once, to the
    rank whose slice of ``perm`` holds it, in the order of that slice, so the receiver only has to undo the
    grouping by source rank.
    """
    if perm.shape != (world * batch,):
        raise ValueError(
            f"perm has shape {tuple(perm.shape)}, expected ({world * batch},) for {world} x {batch}"
        )
    perm = perm.to("cpu", torch.int64)
    # sender side: positions of the permuted batch that hold my rows, scanned in order = destination-major
    dest = torch.arange(world * batch) // batch
    mine = (perm // batch) == rank
    send_order = perm[mine] % batch
    send_counts = torch.bincount(dest[mine], minlength=world)
    # receiver side: my slice's sources; rows from one source arrive in slice order (a stable sort keeps it)
    src = perm[rank * batch : (rank + 1) * batch] // batch
    arrival = torch.argsort(src, stable=True)  # arrival[k] = slice position of the k-th received row
    recv_counts = torch.bincount(src, minlength=world)
    return ShuffleRoute(send_order, send_counts.tolist(), recv_counts.tolist(), torch.argsort(arrival))


class _AllToAll(torch.autograd.Function):
    """Uneven all_to_all along dim 0: x [sum(send_counts), ...] -> [sum(recv_counts), ...], the i-th block of
    ``send_counts[i]`` rows going to rank i. Backward is the same exchange with the counts swapped (every row's
    gradient goes back to the rank that sent the row). NCCL takes uneven splits; so does gloo (checked with torch
    2.14, tests/engine/test_batch_shuffle.py), so no backend needs the old all_gather path."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:  # type: ignore[override]
        ctx.send_counts, ctx.recv_counts = send_counts, recv_counts
        out = x.new_empty((sum(recv_counts), *x.shape[1:]))
        dist.all_to_all_single(
            out, x.contiguous(), output_split_sizes=recv_counts, input_split_sizes=send_counts
        )
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        out = grad.new_empty((sum(ctx.send_counts), *grad.shape[1:]))
        dist.all_to_all_single(
            out, grad.contiguous(), output_split_sizes=ctx.send_counts, input_split_sizes=ctx.recv_counts
        )
        return out, None, None


def exchange_rows(x: torch.Tensor, route: ShuffleRoute) -> torch.Tensor:
    """Send x's rows along ``route`` and put the received rows in order. x: [B, ...] -> [B, ...], differentiable.

    On one process (or W = 1) only the local reorder happens."""
    dev = x.device
    sent = x[route.send_order.to(dev)]
    if len(route.send_counts) > 1:
        sent = _AllToAll.apply(sent, route.send_counts, route.recv_counts)
    return sent[route.recv_index.to(dev)]


def _world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def shuffled_slice(x: torch.Tensor, perm: torch.Tensor, rank: int) -> torch.Tensor:
    """This rank's slice of the permuted global batch, ``cat(x of all ranks)[perm[rank*B:(rank+1)*B]]``.

    x: [B, ...], perm: [W*B] -> [B, ...]. One all_to_all of B rows per rank: each rank sends only the rows the
    others need (~(W-1)/W of its batch), instead of gathering the W x B rows of the global batch."""
    return exchange_rows(x, shuffle_route(perm, rank, _world(), x.shape[0]))


def unshuffled_slice(y: torch.Tensor, perm: torch.Tensor, rank: int) -> torch.Tensor:
    """Inverse of :func:`shuffled_slice` on the outputs. y: [B, ...] (rows of the permuted batch) -> [B, ...]:
    ``cat(y of all ranks)[argsort(perm)[rank*B:(rank+1)*B]]``, by the reverse all_to_all."""
    return exchange_rows(y, shuffle_route(perm, rank, _world(), y.shape[0]).reversed())


class BatchShuffle:
    """Batch shuffle across ranks around modules, installed as forward hooks (state_dict keys unchanged).

    For every call of a hooked module in training mode: permute the global batch (the ranks' batches in rank
    order) with a permutation every rank draws identically (seeded by seed, the key set by :meth:`set_step` and
    the call count, so a resumed run repeats it), run the module on this rank's slice of the permuted batch and
    send the outputs back to the ranks their inputs came from. Both are one all_to_all of B rows per rank
    (:func:`shuffle_route`), so the traffic per rank does not grow with the number of ranks. Modules in eval
    mode (the frozen stream) are left alone. A no-op on one rank.

    ``skip_first``: each module's first call in a step (since :meth:`set_step`) runs on this rank's own rows,
    unshuffled, and only its later calls are shuffled: the released ViCC ``model/pretrain.py`` (l. 165-183,
    594-614) forwards view x1 as it is and shuffles view x2 only.
    """

    def __init__(self, modules: list[nn.Module], seed: int, skip_first: bool = False) -> None:
        self.seed = seed
        self.skip_first = skip_first
        self._key: tuple = ()
        self._calls = 0
        self._seen: set[int] = set()  # modules called since set_step (skip_first)
        self._pending: dict[int, list[ShuffleRoute | None]] = {}
        self._handles = []
        for m in modules:
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))

    def set_step(self, *key: object) -> None:
        self._key = key
        self._calls = 0
        self._seen = set()

    def _active(self, module: nn.Module) -> bool:
        return module.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def _pre(self, module: nn.Module, args: tuple) -> tuple | None:
        if not self._active(module):
            return None
        if self.skip_first and id(module) not in self._seen:
            self._seen.add(id(module))
            self._pending.setdefault(id(module), []).append(None)  # _post: nothing to send back
            return None
        x = args[0]
        world, rank = dist.get_world_size(), dist.get_rank()
        g = torch.Generator().manual_seed(derive_seed(self.seed, self._key, self._calls))
        self._calls += 1
        perm = torch.randperm(world * x.shape[0], generator=g)  # stays on the CPU: routing needs host ints
        route = shuffle_route(perm, rank, world, x.shape[0])
        self._pending.setdefault(id(module), []).append(route.reversed())
        return (exchange_rows(x, route), *args[1:])

    def _post(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        if not self._active(module):
            return None
        route = self._pending[id(module)].pop()
        return None if route is None else exchange_rows(out, route)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for single-machine rendezvous (tests, the scaling benchmark)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
