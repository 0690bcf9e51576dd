"""Checkpoints: one ``torch.save``'d dict, written atomically (temp file, fsync, rename).

State keys (CONTRACTS.md): ``config`` (config.to_dict), ``method`` (Method.state_dict(): encoders, heads,
prototypes, queues), ``phase`` (name of the phase the position refers to), ``epoch`` and ``step`` (the next step
to run: epoch within the phase, step within the epoch), ``optimizer``, ``scaler``, ``rng``; the engine adds
``completed`` (finished phases, in order), ``global_step`` (steps run since the schedule started), ``results``
and ``format_version``. Everything is stored as tensors and plain Python values, so files load with
``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import random
import zipfile
from collections.abc import Callable
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


def write_error(path: str | Path, exc: OSError, what: str = "checkpoint") -> str:
    """What happened and where, for a failed checkpoint write (atomic.write_error), and how to go on."""
    return atomic.write_error(path, exc, what).replace("run again", "resume (train.resume=auto)")


def save(path: str | Path, state: dict[str, Any], keep_previous: Path | None = None) -> None:
    """Write ``state`` to ``path`` atomically: a crash or a full disk leaves either the old file or the new one.

    keep_previous: before ``path`` is replaced, its current version is hard-linked there (no copy, no extra
    space until the next save), so a resume has an older good checkpoint when the newest one is damaged later.
    A failed write (disk full, quota, RLIMIT_FSIZE) raises CheckpointError saying so and where.
    """
    p = Path(path)
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buf)
    try:
        if keep_previous is not None and p.is_file():
            _link_over(p, keep_previous)
        atomic.write_bytes(p, buf.getvalue())
    except OSError as exc:
        raise CheckpointError(write_error(p, exc)) from exc


def _link_over(src: Path, dst: Path) -> None:
    """Make dst another name of src's file, atomically (link to a temp name, rename over dst)."""
    tmp = dst.with_name(f".{dst.name}.link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:  # a file system without hard links: copy instead (atomic too)
        atomic.write_bytes(dst, src.read_bytes())
        return
    os.replace(tmp, dst)


def find_resume(
    out_dir: str | Path, log: Callable[[str], None] = print
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint ``train.resume=auto`` continues: last.pt, or when that is damaged (truncated, corrupt,
    not a checkpoint) or missing, the newest good one of the others (previous.pt, the phase checkpoints),
    by their run step. Each damaged file is reported through ``log`` by name. None when there is none."""
    last = latest_path(out_dir)
    if last.is_file():
        try:
            return last, load(last)
        except CheckpointError as exc:
            log(f"warning: {exc}; resuming from the newest good checkpoint instead")
    good: list[tuple[int, float, Path, dict[str, Any]]] = []
    for p in sorted(ckpt_dir(out_dir).glob("*.pt")):
        if p == last:
            continue
        try:
            st = load(p)
        except CheckpointError as exc:
            log(f"warning: {exc}; skipped")
            continue
        good.append((int(st.get("global_step", 0)), p.stat().st_mtime, p, st))
    if not good:
        if last.is_file():
            raise CheckpointError(
                f"checkpoint {last} is damaged and {ckpt_dir(out_dir)} holds no other good one"
            )
        return None
    _, _, p, st = max(good, key=lambda g: (g[0], g[1]))
    log(f"resuming from {p} (run step {int(st.get('global_step', 0))})")
    return p, st


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
    p = rank_buffers_path(out_dir, rank, run_step)
    try:
        atomic.write_bytes(p, buf.getvalue())
    except OSError as exc:
        raise CheckpointError(write_error(p, exc, "rank buffers")) from exc


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
    """Keep this rank's buffers of ``keep`` and of the save before it (previous.pt's); remove the others, also
    newer ones left by a trajectory abandoned when a resume fell back to an older checkpoint."""
    folder = ckpt_dir(out_dir) / "ranks"
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


# ------------------------------------------------------------------------------------------------ layout
def ckpt_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def latest_path(out_dir: str | Path) -> Path:
    """The rolling checkpoint: written every N steps and at every phase end; ``resume=auto`` reads it."""
    return ckpt_dir(out_dir) / "last.pt"


def previous_path(out_dir: str | Path) -> Path:
    """The rolling checkpoint before last.pt (a hard link to its old file): resume falls back to it."""
    return ckpt_dir(out_dir) / "previous.pt"


def phase_path(out_dir: str | Path, phase_name: str) -> Path:
    """The checkpoint kept at the end of a phase (the models evaluation and later phases start from)."""
    return ckpt_dir(out_dir) / f"{phase_name}.pt"
