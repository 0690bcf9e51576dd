"""Checkpoints: one ``torch.save``'d dict, written atomically (temp file, fsync, rename).

State keys (CONTRACTS.md): ``config`` (config.to_dict), ``method`` (Method.state_dict(): encoders, heads,
prototypes, queues), ``phase`` (name of the phase the position refers to), ``epoch`` and ``step`` (the next step
to run: epoch within the phase, step within the epoch), ``optimizer``, ``scaler``, ``rng``; the engine adds
``completed`` (finished phases, in order), ``global_step`` (steps run since the schedule started), ``results``
and ``format_version``. Everything is stored as tensors and plain Python values, so files load with
``weights_only=True``.
"""

from __future__ import annotations

import io
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vicc_fast import atomic
from vicc_fast import config as C

FORMAT_VERSION = 1
REQUIRED_KEYS = ("config", "method", "phase", "epoch", "step", "optimizer", "scaler", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves either the old file or the new one."""
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buf)
    atomic.write_bytes(path, buf.getvalue())


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; a missing, truncated or foreign file raises CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {p} is truncated or corrupt ({str(exc).splitlines()[0][:200]})"
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"checkpoint {p} is not a vicc_fast checkpoint (missing keys {missing})")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {p} has format {state['format_version']}, newer than this code")
    return state


def load_config(path: str | Path) -> C.Config:
    state = load(path)
    try:
        return C.from_dict(state["config"])
    except C.ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: stored config is invalid: {exc}") from None


def load_method_state(method: nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load a method's state strictly; a different backbone or head shape is a clear error naming the file."""
    own = method.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict
        and isinstance(v, torch.Tensor)  # get_extra_state() entries are plain values
        and tuple(getattr(state_dict[k], "shape", ())) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            s
            for s in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unexpected[:3]}" if unexpected else "",
                f"shape {wrong[:3]}" if wrong else "",
            )
            if s
        )
        raise CheckpointError(
            f"checkpoint {path} does not match this model (another backbone or head size?): {detail}"
        )
    method.load_state_dict(state_dict)


def load_encoders(path: str | Path) -> tuple[dict[C.Stream, nn.Module], C.Config]:
    """The backbones stored in a checkpoint (eval mode, CPU) and the config they were trained with."""
    from vicc_fast.methods import build_method

    state = load(path)
    try:
        cfg = C.from_dict(state["config"])
    except C.ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: stored config is invalid: {exc}") from None
    method = build_method(cfg)
    load_method_state(method, state["method"], path)
    encoders = method.encoders()
    for enc in encoders.values():
        enc.eval()
    return encoders, cfg


# ------------------------------------------------------------------------------------------------ per rank
def rank_buffers_path(out_dir: str | Path, rank: int, run_step: int) -> Path:
    return ckpt_dir(out_dir) / "ranks" / f"rank{rank:03d}-{run_step:010d}.pt"


def method_buffers(method: nn.Module) -> dict[str, Any]:
    """The state_dict entries that are not parameters: buffers (queues, BN statistics) and extra states."""
    params = {n for n, _ in method.named_parameters()}
    return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in method.state_dict().items()
            if k not in params}  # fmt: skip


def save_rank_buffers(out_dir: str | Path, rank: int, run_step: int, method: nn.Module) -> None:
    buf = io.BytesIO()
    torch.save(method_buffers(method), buf)
    atomic.write_bytes(rank_buffers_path(out_dir, rank, run_step), buf.getvalue())


def load_rank_buffers(out_dir: str | Path, rank: int, run_step: int, method: nn.Module) -> bool:
    """Load this rank's own buffers saved at ``run_step``; False when there are none (e.g. another world size)."""
    p = rank_buffers_path(out_dir, rank, run_step)
    if not p.is_file():
        return False
    try:
        own = torch.load(p, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(
            f"rank buffers {p} are truncated or corrupt ({str(exc).splitlines()[0][:200]})"
        ) from None
    full = dict(method.state_dict())
    full.update(own)
    load_method_state(method, full, p)
    return True


def prune_rank_buffers(out_dir: str | Path, rank: int, keep: int) -> None:
    folder = ckpt_dir(out_dir) / "ranks"
    for p in folder.glob(f"rank{rank:03d}-*.pt"):
        if p != rank_buffers_path(out_dir, rank, keep):
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


# ------------------------------------------------------------------------------------------------ layout
def ckpt_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def latest_path(out_dir: str | Path) -> Path:
    """The rolling checkpoint: written every N steps and at every phase end; ``resume=auto`` reads it."""
    return ckpt_dir(out_dir) / "last.pt"


def phase_path(out_dir: str | Path, phase_name: str) -> Path:
    """The checkpoint kept at the end of a phase (the models evaluation and later phases start from)."""
    return ckpt_dir(out_dir) / f"{phase_name}.pt"
