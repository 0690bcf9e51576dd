"""The launcher killed hard, and the run-folder lock (issue 16). Real processes: torchrun, SIGKILL, flock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vicc_fast import checkpoint as ckpt
from vicc_fast.engine.runlock import LOCK_NAME, RunLock, RunLockError

from .test_e2e import TINY_MODEL


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory) -> Path:
    from data_prep.build import build_synthetic
    from vicc_fast.config import FlowMethod, SyntheticConfig

    out = tmp_path_factory.mktemp("syn")
    small = SyntheticConfig(num_classes=2, train_per_class=4, test_per_class=2, frames=12, height=32, width=40,
                            flow_method=FlowMethod.dis)  # fmt: skip
    build_synthetic(out, small, workers=1, progress=False)
    return out


_HOLD = textwrap.dedent(
    """
    import sys, time
    from vicc_fast.engine.runlock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def _holder(out: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def test_second_run_refused_naming_the_owner_then_stale_lock_taken_over(tmp_path):
    out = tmp_path / "run"
    owner = _holder(out)
    try:
        with pytest.raises(
            RunLockError, match=rf"in use by another run: PID {owner.pid} on host \S+ \(since"
        ):
            RunLock(out).acquire()
    finally:
        owner.kill()  # SIGKILL: no release, the lock file stays behind naming the dead owner
        owner.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == owner.pid
    lines: list[str] = []
    lock = RunLock(out)
    lock.acquire(lines.append)
    assert any("taking over the stale lock" in ln and f"PID {owner.pid}" in ln for ln in lines), lines
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (out / LOCK_NAME).exists()


def test_train_cli_refuses_a_locked_run_folder(tmp_path, capsys):
    from vicc_fast.train import main

    out = tmp_path / "run"
    owner = _holder(out)
    try:
        rc = main([f"train.out_dir={out}", f"data.root={tmp_path}/nodata", "data.build_if_missing=false"])
    finally:
        owner.kill()
        owner.wait()
    assert rc == 4
    assert f"in use by another run: PID {owner.pid}" in capsys.readouterr().err


def test_worker_stops_cleanly_when_torchrun_is_killed(tiny_shards, tmp_path):
    """torchrun SIGKILLed: its worker (own session, so it gets no signal) sees the launcher gone, writes a
    checkpoint, stops and releases the run folder (a resubmitted run may take it and resume)."""
    out = tmp_path / "run"
    args = [f"data.root={tiny_shards}", *TINY_MODEL, "data.backend=torch", "method.swav.queue_size=0",
            "schedule.single_epochs=200", "schedule.phase=rgb1", "train.batch_size=4", "train.amp='off'",
            f"train.out_dir={out}", "train.progress=false", "train.ckpt_every_steps=0", "train.log_every_steps=1",
            "train.launcher_check_s=0.2", "eval.after_phase=false", "train.device=cpu"]  # fmt: skip
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115  (the orphan keeps writing after torchrun is gone)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
         "-m", "vicc_fast.train", *args],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    lock = out / LOCK_NAME
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "metrics.jsonl").is_file() and launcher.poll() is None:
        time.sleep(0.2)  # training has started once the first step is logged
    assert launcher.poll() is None, (tmp_path / "worker.log").read_text()
    worker = json.loads(lock.read_text())["pid"]
    assert worker != launcher.pid
    launcher.kill()  # SIGKILL the launcher only
    launcher.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and Path(f"/proc/{worker}").exists():
        if Path(f"/proc/{worker}/stat").read_text().split()[2] == "Z":
            break  # exited; a zombie until its new parent reaps it
        time.sleep(0.2)
    text = (tmp_path / "worker.log").read_text()
    assert "the launcher (parent PID" in text and "is gone" in text, text
    assert "stopped on request" in text, text
    state = ckpt.load(ckpt.latest_path(out))  # intact and loadable
    assert state["phase"] == "rgb1" and state["global_step"] > 0
    assert not lock.exists()  # released: a resubmitted run may take the folder


@pytest.mark.slow
def test_lost_gloo_rank_is_named(tiny_shards, tmp_path):
    """Two gloo ranks without torchrun, rank 1 SIGKILLed: rank 0's next collective fails; it names the lost
    rank (heartbeats in the store), keeps its checkpoint and exits with code 5 instead of hanging."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    args = [f"data.root={tiny_shards}", *TINY_MODEL, "data.backend=torch", "method.swav.queue_size=0",
            "schedule.single_epochs=100000", "schedule.phase=rgb1", "train.batch_size=2", "train.amp='off'",
            f"train.out_dir={out}", "train.progress=false", "train.ckpt_every_steps=5", "train.log_every_steps=1",
            "eval.after_phase=false", "train.device=cpu"]  # fmt: skip
    procs = []
    for r in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-m", "vicc_fast.train", *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not ckpt.latest_path(out).is_file():
            assert procs[0].poll() is None, procs[0].communicate()[0]
            time.sleep(0.2)
        procs[1].kill()
        procs[1].wait()
        text = procs[0].communicate(timeout=300)[0]  # a hang would end here, not in silence
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[0].returncode == 5, text
    assert f"error: rank 0: lost rank 1 (host {socket.gethostname()}, PID {procs[1].pid})" in text, text
    assert ckpt.load(ckpt.latest_path(out))["phase"] == "rgb1"


_HOLD_WITH_CHILD = textwrap.dedent(
    """
    import multiprocessing as mp, sys, time
    from vicc_fast.engine.runlock import RunLock
    def work(started):
        started.set()  # after the fork hooks ran
        time.sleep(120)

    RunLock(sys.argv[1]).acquire()
    ctx = mp.get_context("fork")
    started = ctx.Event()
    child = ctx.Process(target=work, args=(started,), daemon=False)
    child.start()  # like a DataLoader worker: forked while the lock is held
    started.wait(60)
    print(child.pid, flush=True)
    time.sleep(120)
    """
)


def test_forked_children_do_not_keep_a_dead_runs_lock(tmp_path):
    out = tmp_path / "run"
    owner = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WITH_CHILD, str(out)], stdout=subprocess.PIPE, text=True
    )
    child = int(owner.stdout.readline())
    try:
        owner.kill()
        owner.wait()
        assert Path(f"/proc/{child}").exists()  # the forked child lives on
        lines: list[str] = []
        lock = RunLock(out)
        lock.acquire(lines.append)  # not refused: the child closed its copy of the lock at fork
        assert any("taking over the stale lock" in ln for ln in lines)
        lock.release()
    finally:
        os.kill(child, 9)
