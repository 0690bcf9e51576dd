"""What a resume needs beyond the checkpoint file (engine/resume.py): RNG states."""

import random

import numpy as np
import torch

from vicc_fast import checkpoint as ckpt
from vicc_fast import config as C
from vicc_fast.engine import resume

from .tiny import TinyMethod


def test_rng_states_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    p = tmp_path / "r.pt"
    state = {"config": C.to_dict(C.load(None)), "method": TinyMethod().state_dict(), "phase": "rgb1", "epoch": 0,
             "step": 0, "optimizer": {}, "scaler": {}, "rng": resume.capture_rng()}  # fmt: skip
    ckpt.save(p, state)
    want = (random.random(), np.random.rand(), torch.rand(3))
    resume.restore_rng(ckpt.load(p)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert want[0] == got[0] and want[1] == got[1] and torch.equal(want[2], got[2])
