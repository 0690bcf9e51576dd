"""What only a resume needs beyond the checkpoint file (vicc_fast/checkpoint.py): which file ``train.resume=auto``
continues, each rank's own buffers (queues, BN statistics differ per rank; rank 0's go into the checkpoint), and
the RNG states of Python, NumPy and torch.

Per-rank layout: ``out_dir/checkpoints/ranks/rank<r>-<step>.pt`` (ranks > 0; the two newest steps are kept).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vicc_fast import atomic
from vicc_fast import checkpoint as ckpt


def find_resume(
    out_dir: str | Path, log: Callable[[str], None] = print
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint ``train.resume=auto`` continues: last.pt, or when that is damaged (truncated, corrupt,
    not a checkpoint) or missing, the newest good one of the others (previous.pt, the phase checkpoints),
    by their run step. Each damaged file is reported through ``log`` by name. None when there is none."""
    last = ckpt.latest_path(out_dir)
    if last.is_file():
        try:
            return last, ckpt.load(last)
        except ckpt.UnsafeCheckpointError:
            raise  # not damage: a file of other objects than tensors is refused, never skipped over
        except ckpt.CheckpointError as exc:
            log(f"warning: {exc}; resuming from the newest good checkpoint instead")
    good: list[tuple[int, float, Path, dict[str, Any]]] = []
    for p in sorted(ckpt.ckpt_dir(out_dir).glob("*.pt")):
        if p == last:
            continue
        try:
            st = ckpt.load(p)
        except ckpt.UnsafeCheckpointError:
            raise
        except ckpt.CheckpointError as exc:
            log(f"warning: {exc}; skipped")
            continue
        good.append((int(st.get("global_step", 0)), p.stat().st_mtime, p, st))
    if not good:
        if last.is_file():
            raise ckpt.CheckpointError(
                f"checkpoint {last} is damaged and {ckpt.ckpt_dir(out_dir)} holds no other good one"
            )
        return None
    _, _, p, st = max(good, key=lambda g: (g[0], g[1]))
    log(f"resuming from {p} (run step {int(st.get('global_step', 0))})")
    return p, st


# ------------------------------------------------------------------------------------------------ per rank
def rank_buffers_path(out_dir: str | Path, rank: int, run_step: int) -> Path:
    return ckpt.ckpt_dir(out_dir) / "ranks" / f"rank{rank:03d}-{run_step:010d}.pt"


def method_buffers(method: nn.Module) -> dict[str, Any]:
    """The state_dict entries that are not parameters: buffers (queues, BN statistics) and extra states."""
    params = {n for n, _ in method.named_parameters()}
    return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in method.state_dict().items()
            if k not in params}  # fmt: skip


def save_rank_buffers(out_dir: str | Path, rank: int, run_step: int, method: nn.Module) -> None:
    buf = io.BytesIO()
    torch.save(method_buffers(method), buf)
    p = rank_buffers_path(out_dir, rank, run_step)
    try:
        atomic.write_bytes(p, buf.getvalue())
    except OSError as exc:
        raise ckpt.CheckpointError(ckpt.write_error(p, exc, "rank buffers")) from exc


def load_rank_buffers(out_dir: str | Path, rank: int, run_step: int, method: nn.Module) -> bool:
    """Load this rank's own buffers saved at ``run_step``; False when there are none (e.g. another world size)."""
    p = rank_buffers_path(out_dir, rank, run_step)
    if not p.is_file():
        return False
    own = ckpt.read_state(p, "cpu", what="rank buffers")
    full = dict(method.state_dict())
    full.update(own)
    ckpt.load_method_state(method, full, p)
    return True


def prune_rank_buffers(out_dir: str | Path, rank: int, keep: int) -> None:
    """Keep this rank's buffers of ``keep`` and of the save before it (previous.pt's); remove the others, also
    newer ones left by a trajectory abandoned when a resume fell back to an older checkpoint."""
    folder = ckpt.ckpt_dir(out_dir) / "ranks"
    files = sorted(folder.glob(f"rank{rank:03d}-*.pt"))
    steps = [int(p.stem.split("-")[1]) for p in files]
    kept = sorted((s for s in steps if s <= keep), reverse=True)[:2]
    for p, step in zip(files, steps, strict=True):
        if step not in kept:
            p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ RNG
def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if not state:
        return
    py = state["python"]
    random.setstate((py[1], tuple(py[0]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), *npst[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
