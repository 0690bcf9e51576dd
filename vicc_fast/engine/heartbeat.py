"""Which rank was lost: heartbeats in the process group's key-value store.

When a rank dies, the survivors' next collective fails with the backend's words (gloo: ``Connection reset by
peer [127.0.0.1]:2460``), which name a socket, not a rank. Every rank therefore bumps a counter
``vicc_fast/hb/<rank>`` (with its host and PID) in the store from a daemon thread; after a failed collective a
survivor reads the counters twice, a few beats apart, and names the ranks whose counter stood still.
The store lives in torchrun's agent (or in rank 0 without torchrun), so it outlives any other rank.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
from typing import Any

import torch.distributed as dist

INTERVAL_S = 1.0
PREFIX = "vicc_fast/hb/"


def _store() -> Any:
    try:
        return dist.distributed_c10d._get_default_store()  # the store the process group was set up with
    except (RuntimeError, ValueError, AttributeError):
        return None


class Heartbeat:
    """Start on every rank after init_process_group; ``lost()`` after a failed collective."""

    def __init__(self, rank: int, world_size: int, interval_s: float = INTERVAL_S) -> None:
        self.rank, self.world, self.interval_s = rank, world_size, interval_s
        self.store = _store()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}

    def start(self) -> Heartbeat:
        if self.store is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()

    def _beat(self) -> None:
        n = 0
        while not self._done.is_set():
            n += 1
            try:
                self.store.set(f"{PREFIX}{self.rank}", json.dumps({**self.me, "n": n}))
            except Exception:  # noqa: BLE001  (the store is gone with its host: nothing left to report to)
                return
            self._done.wait(self.interval_s)

    def _read(self) -> dict[int, dict[str, Any]]:
        out = {}
        for r in range(self.world):
            key = f"{PREFIX}{r}"
            if self.store.check([key]):
                out[r] = json.loads(self.store.get(key))
        return out

    def lost(self) -> str | None:
        """'rank 1 (host h, PID p)' for every rank whose heartbeat stopped, None when none did or the store is
        unreachable. Takes about three beats."""
        if self.store is None:
            return None
        self.stop()  # this rank is failing too; its own counter must not count as alive
        try:
            self.store.set_timeout(datetime.timedelta(seconds=10))
            before = self._read()
            time.sleep(3 * self.interval_s)
            after = self._read()
        except Exception:  # noqa: BLE001  (any store failure: the host holding it is gone as well)
            return None
        gone = [
            r
            for r in range(self.world)
            if r != self.rank and (r not in after or after[r].get("n") == before.get(r, {}).get("n"))
        ]
        if not gone:
            return None
        return ", ".join(
            f"rank {r} (host {after.get(r, {}).get('host', '?')}, PID {after.get(r, {}).get('pid', '?')})"
            for r in gone
        )
