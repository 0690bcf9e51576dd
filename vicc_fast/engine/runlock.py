"""One run per run folder, and no run outliving its launcher.

RunLock: ``<out_dir>/run.lock`` holds an exclusive ``flock`` for as long as the run lives, and names its
owner (host, PID, start time, command). A second run on the same folder refuses with a message naming the
owner; a lock whose owner died (the kernel drops a dead process's flock, SIGKILL included) is taken over with
a warning naming the dead owner. flock works on local file systems and on NFS (Linux emulates it with NFS byte
range locks); on a file system without locking the lock is refused with the error, not silently skipped.

LauncherWatch: torchrun starts each worker in a new session, so when torchrun is SIGKILLed (OOM killer, a
scheduler's hard kill) the worker is re-parented and trains on as an orphan beside any resubmitted run. The
watch thread polls the parent PID and, once the launcher is gone, asks the trainer to checkpoint and stop.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCK_NAME = "run.lock"

_HELD: set[int] = set()
"""File descriptors of the locks this process holds."""


def _drop_in_child() -> None:
    # A forked child (DataLoader workers) shares the lock's open file, and flock is only released when every
    # copy is closed: a SIGKILLed run's workers would keep its folder locked until they exit. The child closes
    # its copies (the parent's lock is unaffected). exec'd children never get it (os.open makes it CLOEXEC).
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_in_child)


class RunLockError(RuntimeError):
    """The run folder is owned by another live run; the message names it (host, PID, since, command)."""


def describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "an unknown process (the lock file names none)"
    return (
        f"PID {owner.get('pid')} on host {owner.get('host')} (since {owner.get('started')}; "
        f"{owner.get('command', '?')})"
    )


class RunLock:
    """The lock of one run folder; ``acquire`` it before writing there, ``release`` at exit (or just exit)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self._fd: int | None = None

    def _read_owner(self, fd: int) -> dict[str, Any]:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return json.loads(os.read(fd, 1 << 16).decode() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self, log: Callable[[str], None] = print) -> None:
        """Take the lock, or raise RunLockError naming the live owner. A dead owner's lock is taken over."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # retried only when a releasing owner removed the file between open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._read_owner(fd)
                os.close(fd)
                raise RunLockError(
                    f"run folder {self.out_dir} is in use by another run: {describe(owner)}; lock {self.path}. "
                    "Stop that run first, or use another train.out_dir"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise RunLockError(f"cannot lock run folder {self.out_dir} ({self.path}): {exc}") from exc
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            stale = self._read_owner(fd)
            if stale:
                log(
                    f"warning: taking over the stale lock {self.path} of {describe(stale)}: that run is gone "
                    "(it ended without releasing it, e.g. killed)"
                )
            me = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:300],
            }
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(me).encode())
            os.fsync(fd)
            self._fd = fd
            _HELD.add(fd)
            return
        raise RunLockError(f"cannot lock run folder {self.out_dir}: {self.path} keeps changing")

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no other run can hold the removed file) and unlock."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        _HELD.discard(self._fd)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def launched_by_torchrun() -> bool:
    """torchrun's elastic agent sets TORCHELASTIC_RUN_ID in every worker's environment."""
    return "TORCHELASTIC_RUN_ID" in os.environ


class LauncherWatch:
    """A daemon thread that calls ``on_gone(message)`` once when this process's parent (the launcher) is gone.

    A parent that dies re-parents the process (to init or a sub-reaper), which changes ``os.getppid()``.
    """

    def __init__(self, on_gone: Callable[[str], None], interval_s: float) -> None:
        self.parent = os.getppid()
        self.on_gone = on_gone
        self.interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="launcher-watch", daemon=True)

    def start(self) -> LauncherWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(self.interval_s):
            if os.getppid() != self.parent:
                self.on_gone(
                    f"the launcher (parent PID {self.parent}) is gone (killed?): checkpointing after this step "
                    "and stopping, so that no orphaned run trains on"
                )
                return
