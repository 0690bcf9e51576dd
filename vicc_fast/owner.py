"""Worker processes that end with the process that started them.

A worker blocked on its task queue never learns that its owner died by SIGKILL (or OOM): it holds the queue's
write end itself, so its read never sees EOF. A ``DataLoader`` worker started by a forkserver is the server's
child, so torch's own watchdog (it watches the parent PID) waits on the server, while the server waits for every
worker to close its "alive" pipe: both lived on as orphans (PID 1 their parent) holding hundreds of MB each.
Pool initialisers and ``worker_init_fn`` call :func:`exit_with_owner` with the owner's PID instead.
"""

from __future__ import annotations

import os
import select
import threading
import time

POLL_S = 1.0  # where pidfd_open is missing (Linux < 5.3): how often the owner is looked for


def _wait_for_exit(owner: int) -> None:
    try:
        fd = os.pidfd_open(owner)
    except ProcessLookupError:
        return  # already gone
    except (AttributeError, OSError):  # no pidfd here: poll
        while True:
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                pass  # it exists (owned by another user): alive
            time.sleep(POLL_S)
    waiter = select.poll()  # poll, not select: any fd number
    waiter.register(fd, select.POLLIN)
    waiter.poll()  # readable once the owner has exited


def exit_with_owner(owner: int) -> None:
    """In a worker process: exit at once (status 1) when process ``owner`` exits; returns immediately.

    A daemon thread waits on the owner (a pidfd, no polling); a worker the owner shuts down normally exits
    before it fires."""

    def watch() -> None:
        _wait_for_exit(owner)
        os._exit(1)  # no cleanup to run: the owner, the only consumer of this worker's results, is gone

    threading.Thread(target=watch, name=f"exit-with-{owner}", daemon=True).start()
