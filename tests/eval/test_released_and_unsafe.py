"""Released-format checkpoints through ``python -m vicc_fast.eval``, and untrusted pickles refused as unsafe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tests.models.test_released import random_state
from vicc_fast import checkpoint as ckpt
from vicc_fast import released
from vicc_fast.eval.__main__ import main

# small clips: the paper config's 16x128x128 R(2+1)D would take minutes on two cores; tiny test shards, not the
# released 240x320 recipe the paper configs require
SMALL = ["data.num_frames=4", "data.stride=1", "data.crop_size=32", "data.eval.crop=center", "data.eval.clips=2",
         "eval.batch_size=4", "data.eval.color_jitter_prob=0", "train.amp='off'",
         "data.require_recipe=none"]  # fmt: skip


class Payload:
    """An arbitrary object: unpickling it would call os.getcwd (stands in for any code)."""

    def __reduce__(self):
        return (os.getcwd, ())


def write_released(path: Path, name: str = "vicc_r21d_cross") -> Path:
    """A file as the released main_cross.py saves it: {'epoch', 'state_dict', 'best_loss', 'optimizer', ...}."""
    torch.save({"epoch": 299, "state_dict": random_state(name), "best_loss": 1.5, "iteration": 10,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.6, "params": [0, 1]}]}}, path)  # fmt: skip
    return path


def _err(capsys, argv, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_released_checkpoint_evaluates_with_retrieval(tmp_path, tiny_shards, capsys):
    """`eval retrieval --ckpt ViCC-RGB-R21d.pth.tar --stream rgb` runs our protocol on the released encoder."""
    f = write_released(tmp_path / "ViCC-RGB-R21d.pth.tar")
    rc = main(["retrieval", "--ckpt", str(f), "--stream", "rgb", "--no-progress", "--no-tensorboard",
               f"data.root={tiny_shards}", *SMALL])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    entry = json.loads((tmp_path / "eval" / "results.json").read_text())["checkpoints"]["ViCC-RGB-R21d.pth"]
    assert entry["labels"] == {"rgb": "RGB-2"} and entry["phase"] == "released"
    assert 0 <= entry["retrieval"]["rgb/R@1"] <= 100 and entry["videos"]["test"]["evaluated"] == 4


def test_released_checkpoint_needs_its_stream(tmp_path, capsys):
    f = write_released(tmp_path / "ViCC-RGB-R21d.pth.tar")
    err = _err(capsys, ["retrieval", "--ckpt", str(f)])
    assert "released ViCC/CoCLR checkpoint" in err and "--stream" in err


def test_unsafe_pickle_refused_as_unsafe_by_eval(tmp_path, capsys):
    """A pickle holding an arbitrary object is refused with what it is, not called truncated or corrupt."""
    f = tmp_path / "ViCC-RGB-S3D.pth.tar"
    torch.save({"epoch": 1, "state_dict": {"encoder_q.0.conv1.bn.weight": torch.zeros(2)}, "x": Payload()}, f)
    err = _err(capsys, ["retrieval", "--ckpt", str(f), "--stream", "rgb"])
    assert "refused as unsafe" in err and "objects other than tensors" in err and "posix.getcwd" in err
    assert "weights_only=False" in err and "corrupt" not in err and "truncated" not in err


def test_unsafe_last_pt_stops_resume_auto(tmp_path, capsys, tiny_overrides):
    """resume=auto meets an unsafe last.pt: training stops saying so (no silent fall back, no 'damaged')."""
    from vicc_fast import train

    out = tmp_path / "run"
    ckpt.ckpt_dir(out).mkdir(parents=True)
    torch.save({"config": {}, "method": Payload()}, ckpt.latest_path(out))
    rc = train.main([*tiny_overrides, f"train.out_dir={out}", "train.device=cpu", "train.resume=auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    line = next(x for x in err if x.startswith("error: "))
    assert "last.pt" in line and "refused as unsafe" in line and "damaged" not in line


def test_released_pair_starts_the_cross_stream_stage(tmp_path):
    """Released single-stream RGB and flow files -> a run folder whose stage 1 is done: the method loaded from
    it holds the released encoders, and the next phase the trainer runs is the cross-stream one."""
    from vicc_fast.eval.inputs import load_checkpoint
    from vicc_fast.methods import build_method

    rgb = write_released(tmp_path / "rgb.pth.tar", "vicc_r21d_single")
    flow_sd = random_state("vicc_r21d_single", seed=5)
    torch.save({"epoch": 299, "state_dict": flow_sd}, tmp_path / "flow.pth.tar")
    assert released.main(["--rgb", str(rgb), "--flow", str(tmp_path / "flow.pth.tar"),
                          "--out-dir", str(tmp_path / "run")]) == 0  # fmt: skip
    ck = load_checkpoint(ckpt.latest_path(tmp_path / "run"))
    assert ck.labels == {"rgb": "RGB-1", "flow": "Flow-1", "rf": "R+F-1"}
    want = released.from_state_dict(flow_sd).main.encoder
    got = ck.encoders[released.Stream.flow].state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())
    phases = build_method(ck.cfg).phases()
    todo = [p for p in phases if p.name not in ck.trained_phases]
    assert todo and todo[0].frozen_stream is not None  # the cross-stream stage is next


def test_released_cli_help_and_error_line(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        released.main(["--help"])
    out = capsys.readouterr().out
    assert all(f in out for f in ("--rgb", "--flow", "--out-dir", "key=value"))
    assert (
        released.main(["--rgb", str(tmp_path / "no"), "--flow", str(tmp_path / "no"), "--out-dir", "x"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "not found" in err
