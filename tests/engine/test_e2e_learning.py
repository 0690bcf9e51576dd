"""ViCC learns: the whole schedule (rgb1, flow1, one cross-stream cycle) through the real parts (synthetic motion
shards from data_prep, the DALI CPU loader, the real Trainer and its per-phase kNN evaluation) on a set small
enough for a 2-core CPU, and retrieval well above chance afterwards (skipped for now: see below).

The set is the demo's (classes defined by motion only; appearance, background and camera pan random per video)
shrunk to 4 classes (chance R@1 25 %) of 16 train / 8 test videos at 48x48, and the demo recipe shrunk with it.
The loss head runs on the torch backend: the Triton kernels under the interpreter cost ~0.8 s a step here and
the real trainer's Triton path is covered by test_e2e.py (and the kernels' parity by tests/kernels).
Cost: ~15 s to build the set and ~110-120 s to train and evaluate on 2 CPU cores shared with other jobs (load
average ~9); a quiet machine should need about half.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vicc_fast import config as C
from vicc_fast.config import FlowMethod, SyntheticConfig
from vicc_fast.engine.trainer import Trainer
from vicc_fast.methods import build_method

DEMO = Path(__file__).resolve().parents[2] / "configs" / "synthetic_demo.yaml"
CHANCE = 25.0  # 4 classes, balanced test set


@pytest.fixture(scope="module")
def motion_set(tmp_path_factory):
    from data_prep.build import build_synthetic

    out = tmp_path_factory.mktemp("motion")
    small = SyntheticConfig(
        num_classes=4, train_per_class=16, test_per_class=8, frames=16, height=48, width=48,
        flow_method=FlowMethod.dis,
    )  # fmt: skip
    build_synthetic(out, small, workers=1, progress=False)
    return out


def train(root: Path, out: Path, seed: int) -> dict[str, dict[str, float]]:
    """The demo recipe shrunk: 4-frame 24 px views, a 16-wide tiny backbone, batch 16 (4 steps an epoch), 64
    steps per single-stream phase and 24 per cross-stream alternation. Returns phase -> {"rgb/R@1", ...}."""
    cfg = C.load(
        DEMO,
        [
            f"data.root={root}",
            "data.num_frames=4",
            "data.crop_size=24",
            "model.tiny_width=16",
            "train.batch_size=16",
            "schedule.single_epochs=16",
            "schedule.cross_cycles=1",
            "schedule.cross_epochs=6",
            "optim.lr=0.003",
            "kernels.backend=torch",
            f"train.seed={seed}",
            f"train.out_dir={out}",
            "train.progress=false",
            "train.ckpt_every_steps=0",
            "eval.after_phase=true",
            "eval.batch_size=32",
            "eval.recall_ks=[1]",
        ],
    )
    torch.manual_seed(seed)
    res = Trainer(cfg, build_method(cfg), tensorboard=False).run()
    return {phase: r["metrics"] for phase, r in res.items()}


# Not yet evidence: at this budget the margin is not stable. Measured R@1 (%) (32 test videos, one video is
# 3.1 points; chance 25), RGB-1 / Flow-1 / RGB-2 / Flow-2:
#   seed 0, 2 torch threads: 15.6 / 46.9 / 15.6 / 53.1
#   seed 1, 2 torch threads:  9.4 / 43.8 / 21.9 / 62.5
#   seed 2, 2 torch threads: 15.6 / 59.4 / 15.6 / 50.0
#   seed 0, 1 torch thread (tests/engine/conftest.py): 6.2 / 37.5 / 12.5 / 28.1
# Flow usually learns (a random model reaches 40 % with p ~ 0.04), but not every run; RGB does not learn in 24
# cross-stream steps (the demo needs ~200 for RGB-2 > RGB-1). The thresholds below need a larger budget
# (more flow1 and cross steps, measured over several seeds) before this test can run in the suite.
@pytest.mark.slow
@pytest.mark.skip(reason="learning margin not stable at this budget (see the measurements above)")
def test_vicc_learns_motion_through_the_cross_stream_stage(motion_set, tmp_path):
    m = train(motion_set, tmp_path / "run", seed=0)
    assert list(m) == ["rgb1", "flow1", "cross_rgb_c1", "cross_flow_c1"]
    assert m["flow1"]["flow/R@1"] >= 40.0, m
    assert m["cross_flow_c1"]["flow/R@1"] >= 45.0, m
    # the cross RGB phase leaves flow frozen
    assert m["cross_rgb_c1"]["flow/R@1"] == m["flow1"]["flow/R@1"], m
    assert m["cross_rgb_c1"]["rgb/R@1"] > m["rgb1"]["rgb/R@1"], m
