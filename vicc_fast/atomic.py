"""Atomic file writes: temp file in the same folder, fsync, rename. A crash never leaves a half file."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on clean exit fsync it and rename it over ``path``.

    On an exception the temp file is removed and ``path`` is untouched.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        with contextlib.suppress(OSError):  # persist the rename itself
            dfd = os.open(p.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


_NO_SPACE = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit hit",
}


def write_error(path: str | os.PathLike, exc: OSError, what: str = "file") -> str:
    """The message for a failed atomic write: what happened (disk full, quota, size limit, other) and where,
    and that the file's previous version (if any) is untouched, as atomic_write guarantees."""
    why = _NO_SPACE.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    p = Path(path)
    kept = (
        f"the previous {p.name} is unchanged and loadable"
        if p.is_file()
        else f"no earlier {p.name} existed; nothing was left behind"
    )
    return f"could not write {what} {p}: {why} ({exc}); {kept}. Free space in {p.parent} and run again"
