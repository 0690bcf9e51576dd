"""The checkpoint file: one ``torch.save``'d dict, written atomically (temp file, fsync, rename), and where a run
keeps its checkpoints. Training writes it (engine/trainer.py), evaluation reads it (eval/inputs.py): the format
lives here, below both, so neither reaches into the other; what only a resume needs (which file to continue,
per-rank buffers, RNG states) is engine/resume.py.

State keys: ``config`` (config.to_dict), ``method`` (Method.state_dict(): encoders, heads, prototypes, queues),
``phase`` (name of the phase the position refers to), ``epoch`` and ``step`` (the next step to run: epoch within
the phase, step within the epoch), ``optimizer``, ``scaler``, ``rng``; the engine adds ``completed`` (finished
phases, in order), ``global_step`` (steps run since the schedule started), ``results`` and ``format_version``.
Everything is stored as tensors and plain Python values, so files load with ``weights_only=True``.

Run folder layout::

    out_dir/checkpoints/last.pt       every train.ckpt_every_steps steps and at every phase end (resume=auto)
    out_dir/checkpoints/previous.pt   the last.pt before it (a hard link): resume falls back to it
    out_dir/checkpoints/<phase>.pt    kept at each phase end (evaluation, later phases)
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vicc_fast import atomic
from vicc_fast import config as C

# what torch.load raises on a truncated, corrupt or foreign file (the per-rank buffers use it too)
LOAD_ERRORS = (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError)

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


class UnsafeCheckpointError(CheckpointError):
    """A pickle holding objects other than tensors and plain values: refused, since loading it runs code."""


def unsafe_message(path: str | Path, exc: BaseException) -> str | None:
    """The message for a file ``torch.load(weights_only=True)`` refused because it holds other objects than
    tensors and plain values (None when ``exc`` is another failure: truncated, corrupt, foreign)."""
    text = str(exc)
    if not text.startswith("Weights only load failed"):
        return None
    # torch names the refused object ("Unsupported global: GLOBAL x.y", "unsupported GLOBAL x.y whose module
    # ... is blocked"); a plain pickle (not torch.save's zip) stops earlier, on an opcode: read its globals
    # without running anything. Other failures (garbage bytes) are damage, not objects.
    found = re.search(r"GLOBAL ([\w.]+)", text)
    names = [found.group(1)] if found else _foreign_globals(Path(path))
    if not names:
        return None
    what = f" (it names {', '.join(names[:3])})"
    return (
        f"{path} was refused as unsafe: it holds objects other than tensors and plain values{what}, and "
        "unpickling them could run code. Files from the internet are untrusted input, so vicc_fast loads "
        "every file with torch.load(weights_only=True). Only if you trust where it came from: convert it once "
        "with torch.save({'state_dict': torch.load(path, weights_only=False)['state_dict']}, new_path) "
        "(or save it with safetensors) and pass the new file"
    )


def _foreign_globals(path: Path, limit: int = 1 << 26) -> list[str]:
    """Globals other than torch's / collections' that the plain pickle at ``path`` would import (read with
    pickletools, which executes nothing); [] for a file that is not a readable pickle."""
    import pickletools

    try:
        data = path.read_bytes()[:limit]
        strings: list[str] = []
        found: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except (ValueError, OSError, pickle.UnpicklingError, EOFError):  # not a pickle (or damaged): no names
        return []
    return [g for g in dict.fromkeys(found) if not g.startswith(("torch.", "collections.", "_codecs."))]


def read_state(path: str | Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` of a user-named file: missing, truncated or corrupt raises
    CheckpointError saying so; a pickle of other objects than tensors and plain values raises
    UnsafeCheckpointError saying that (not "corrupt": the file is whole, it is refused)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{what} not found: {p}")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except LOAD_ERRORS as exc:
        unsafe = unsafe_message(p, exc)
        if unsafe is not None:
            raise UnsafeCheckpointError(f"{what} {unsafe}") from None
        raise CheckpointError(
            f"{what} {p} is truncated or corrupt ({str(exc).splitlines()[0][:200]})"
        ) from None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; a missing, truncated or foreign file raises CheckpointError,
    an unsafe pickle UnsafeCheckpointError."""
    p = Path(path)
    return check(read_state(p, map_location), p)


def check(state: Any, path: str | Path) -> dict[str, Any]:
    """``state`` (loaded from ``path``) if it is a vicc_fast checkpoint of a format this code reads."""
    p = Path(path)
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"checkpoint {p} is not a vicc_fast checkpoint (missing keys {missing})")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {p} has format {state['format_version']}, newer than this code")
    return state


def stored_config(state: dict[str, Any], path: str | Path) -> C.Config:
    """The config a loaded checkpoint ``state`` (from ``path``) was trained with; an invalid one is a
    CheckpointError naming the file and the key."""
    try:
        cfg = C.from_dict(state["config"])
    except C.ConfigError as exc:
        raise CheckpointError(f"checkpoint {path}: stored config is invalid: {exc}") from None
    absent = C.absent_keys(state["config"])
    if absent:
        # Not an error (old runs stay usable), but never silent: a key added later may change a protocol.
        warnings.warn(
            f"checkpoint {path} was saved before the config keys {', '.join(absent)}: they take today's "
            "defaults (pass key=value to keep an earlier behaviour)",
            stacklevel=2,
        )
    return cfg


def load_config(path: str | Path) -> C.Config:
    """The config the checkpoint at ``path`` was trained with."""
    return stored_config(load(path), path)


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
