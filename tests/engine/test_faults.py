"""Training and storage faults (issue 16): a damaged latest checkpoint, a full disk while checkpointing.

The disk-full cases run in a child process with RLIMIT_FSIZE lowered (no root needed; writes past the limit
fail with EFBIG once SIGXFSZ is ignored), the way a full or quota-limited file system fails a write.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from vicc_fast import checkpoint as ckpt
from vicc_fast.engine.resume import find_resume
from vicc_fast.engine.trainer import Trainer

from .test_trainer import make_cfg
from .tiny import TinyMethod, loader_factory


def fresh() -> TinyMethod:
    torch.manual_seed(0)
    return TinyMethod(epochs=2, freeze=1, queue_start=1)


def run(cfg, method=None, hook=None, log=None) -> TinyMethod:
    method = method or fresh()
    t = Trainer(cfg, method, loader_factory=loader_factory(4), step_hook=hook, tensorboard=False)
    if log is not None:
        t.logger.write = log.append
    t.run()
    return method


class Crash(Exception):
    pass


def test_damaged_last_checkpoint_resumes_from_the_newest_good_one(tmp_path):
    over = ("train.ckpt_every_steps=4",)
    ref = run(make_cfg(tmp_path / "a", *over))

    cfg = make_cfg(tmp_path / "b", *over)

    def killer(phase, state):
        if phase.name == "flow1" and state.global_step == 10:
            raise Crash

    with pytest.raises(Crash):
        run(cfg, hook=killer)
    last, prev = ckpt.latest_path(cfg.train.out_dir), ckpt.previous_path(cfg.train.out_dir)
    assert ckpt.load(prev)["global_step"] < ckpt.load(last)["global_step"]
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated, e.g. a copy or a node that died mid-sync
    lines: list[str] = []
    resumed = run(cfg, log=lines)
    assert any(f"checkpoint {last} is truncated or corrupt" in ln for ln in lines), lines
    assert any(f"resuming from {prev}" in ln for ln in lines), lines
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k  # the steps after previous.pt are redone exactly


def test_all_checkpoints_damaged_is_an_error_naming_them(tmp_path):
    cfg = make_cfg(tmp_path, "train.ckpt_every_steps=4")
    run(cfg)
    folder = ckpt.ckpt_dir(cfg.train.out_dir)
    for p in folder.glob("*.pt"):
        p.write_bytes(b"garbage")
    lines: list[str] = []
    with pytest.raises(ckpt.CheckpointError, match=r"last\.pt is damaged and .* holds no other good one"):
        find_resume(cfg.train.out_dir, lines.append)
    assert any("previous.pt" in ln and "skipped" in ln for ln in lines)


_DISK_FULL = textwrap.dedent(
    """
    import resource, signal, sys, torch
    from vicc_fast import checkpoint as ckpt
    path = sys.argv[1]
    ckpt.save(path, {"config": {}, "method": {"w": torch.zeros(10)}, "phase": "a", "epoch": 0, "step": 1,
                     "optimizer": None, "scaler": None, "rng": {}})
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    try:
        ckpt.save(path, {"config": {}, "method": {"w": torch.ones(1_000_000)}, "phase": "a", "epoch": 0,
                         "step": 2, "optimizer": None, "scaler": None, "rng": {}},
                  keep_previous=ckpt.previous_path(sys.argv[2]))
    except ckpt.CheckpointError as exc:
        print(exc)
        sys.exit(7)
    """
)


def test_disk_full_while_checkpointing_keeps_the_previous_one(tmp_path):
    out = tmp_path / "run"
    path = ckpt.latest_path(out)
    r = subprocess.run(
        [sys.executable, "-c", _DISK_FULL, str(path), str(out)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 7, r.stderr
    assert f"could not write checkpoint {path}: file size limit hit" in r.stdout
    assert "the previous last.pt is unchanged and loadable" in r.stdout
    st = ckpt.load(path)
    assert st["step"] == 1 and torch.equal(st["method"]["w"], torch.zeros(10))
    assert [p.name for p in path.parent.iterdir()] in (
        ["last.pt"],
        ["last.pt", "previous.pt"],
        ["previous.pt", "last.pt"],
    )
    assert not list(path.parent.glob(".*.tmp"))  # no temp file left behind
