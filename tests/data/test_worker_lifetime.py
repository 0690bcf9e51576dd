"""Worker processes end with their owner, also when the owner is SIGKILLed (vicc_fast/owner.py): after a test
run, a forkserver preloading vicc_fast.data.torch_loader and its DataLoader workers had lived on as orphans,
each keeping the other alive; a killed data_prep pool's spawned workers waited on their task queue for ever.

Real processes: the owner runs in a subprocess tagged by an environment variable (its children inherit it), kills
itself with SIGKILL while its workers run, and the test counts the tagged ``multiprocessing`` processes
(forkserver, spawned workers, resource tracker) that /proc still lists."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

TAG = "VICC_TEST_OWNER_TAG"

_TORCH_LOADER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from vicc_fast import config as C
    from vicc_fast.config import Stream
    from vicc_fast.data.loader import build_loader

    if __name__ == "__main__":  # the forkserver imports this file as __main__'s path
        cfg = C.load(None, [f"data.root={sys.argv[1]}", "data.build_if_missing=false", "data.num_frames=8",
                            "data.crop_size=32", "data.backend=torch", "data.threads=2", "data.prefetch=1",
                            "data.dtype=float32", "train.batch_size=2"])
        it = iter(build_loader(cfg, "train", "train", (Stream.rgb,), 2, 0, 1, torch.device("cpu")))
        next(it)  # the workers are serving the epoch
        print("ready", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
)

_SYNTHETIC_POOL = textwrap.dedent(
    """
    import sys
    from data_prep.synthetic import generate
    from vicc_fast.config import SyntheticConfig

    if __name__ == "__main__":
        generate(sys.argv[1], SyntheticConfig(num_classes=2, train_per_class=200, test_per_class=1, frames=24,
                                              height=64, width=80), workers=2, progress=False)
    """
)


def _tagged(tag: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of the live multiprocessing processes whose environment carries the tag."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "multiprocessing" not in cmd or f"{TAG}={tag}".encode() not in (proc / "environ").read_bytes():
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited, waiting to be reaped
        except OSError:  # gone meanwhile, or another user's
            continue
        found.append((int(proc.name), cmd[:160]))
    return found


def _left_behind(tag: str, within_s: float = 60.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + within_s
    while (left := _tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid, _ in left:  # do not leave them to the next test run either
        os.kill(pid, signal.SIGKILL)
    return left


def _env(tag: str) -> dict[str, str]:
    return {**os.environ, TAG: tag, "OMP_NUM_THREADS": "1"}


def test_torch_loader_workers_and_forkserver_end_with_a_killed_owner(codes_root, tmp_path):
    script, tag = tmp_path / "owner.py", uuid.uuid4().hex
    script.write_text(_TORCH_LOADER)
    owner = subprocess.Popen(
        [sys.executable, str(script), str(codes_root)], env=_env(tag), stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        running = _tagged(tag)
        assert any("forkserver" in cmd for _, cmd in running), running  # the server and its workers ran
        assert len(running) >= 3, running
        assert owner.wait(60) == -signal.SIGKILL
    finally:
        owner.kill()
    assert _left_behind(tag) == []


def test_data_prep_pool_workers_end_with_a_killed_owner(tmp_path):
    script, tag, out = tmp_path / "owner.py", uuid.uuid4().hex, tmp_path / "syn"
    script.write_text(_SYNTHETIC_POOL)
    owner = subprocess.Popen([sys.executable, str(script), str(out)], env=_env(tag))
    try:
        deadline = time.monotonic() + 120
        while not any((out / "videos").glob("*/*.avi")) and time.monotonic() < deadline:
            assert owner.poll() is None
            time.sleep(0.2)  # the pool's workers are writing videos
        assert sum("spawn_main" in cmd for _, cmd in _tagged(tag)) == 2
        owner.kill()
        owner.wait(60)
    finally:
        owner.kill()
    assert _left_behind(tag) == []
