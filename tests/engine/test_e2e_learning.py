"""ViCC end to end through the real parts (synthetic motion shards from data_prep, the DALI CPU loader, the real
Trainer, its per-phase kNN retrieval and phase checkpoints): rgb1, flow1 and one cross-stream cycle on a set small
enough for a 2-core CPU.

The set is the demo's (classes defined by motion only; appearance, background and camera pan random per video)
shrunk to its first 2 classes (SlideHorizontal, SlideVertical: chance R@1 50 %) of 32 train / 32 test videos each
at 48x48, so that one test video is 1.6 points. Asserted (margins against the spread in MEASURED below):

- Flow-1 and Flow-2 R@1 >= 66 % (42 of 64 test videos; a chance-level retrieval reaches that with p = 0.008,
  binomial(64, 0.5)): the motion reaches retrieval through shards, DALI's flow views, encoder and kNN. This is
  NOT evidence that self-supervision taught it: an untrained flow encoder (one step) already scores 78-83 % here
  (flow shows horizontal vs vertical motion directly), and at this budget trained flow is not reliably above it.
- Stage 1 learns its pretext task: the single-stream swapped-prediction loss falls by > 0.1 (measured 0.23-0.59).
- The cross-stream RGB phase trains RGB from flow's frozen assignments: flow's encoder, BN statistics and
  prototypes bit-equal to flow1's checkpoint and its R@1 unchanged, every RGB weight changed, the
  loss finite and not rising; the cross-stream flow phase likewise leaves RGB bit-equal.

Not asserted, because it does not hold at any budget this test can afford: that RGB learns the motion classes
through flow's targets (ViCC's claim; appearance being random, RGB can only learn them that way) and that the
cross-stream loss falls clearly. RGB-2 stayed at chance after 120-240 cross-stream steps (4 classes at lr 3e-3
and 1e-2, K=8 prototypes, 2 classes with 32 videos each), and in 120 steps the cross-stream RGB loss falls by only
0.04-0.13 (first vs last 5 logged steps) against a step-to-step noise of ~0.05; it falls clearly only later
(0.24 after 240 steps). That claim is evidenced by the demo's records instead (configs/synthetic_demo.yaml:
8-frame 32 px views, 256 videos, 2 cycles of 280 steps per alternation; benchmarks/results/demo), at many minutes
of CPU.

The loss head runs on the torch backend: the Triton kernels under the interpreter cost ~0.8 s a step here, and
the real trainer's Triton path is covered by test_e2e.py (the kernels' parity by tests/kernels).
Cost: 57 s of CPU (user + sys) for building the 128 videos, 368 training steps and 4 evaluations, so about a
minute on a quiet 2-core machine; 4.4 min wall measured on 2 cores shared with other jobs (load 12-14).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from vicc_fast import config as C
from vicc_fast.config import FlowMethod, SyntheticConfig
from vicc_fast.engine.trainer import Trainer
from vicc_fast.methods import build_method

DEMO = Path(__file__).resolve().parents[2] / "configs" / "synthetic_demo.yaml"
FLOW_MIN = 66.0  # R@1 %: 42 / 64 videos; P(binomial(64, 0.5) >= 42) = 0.008

LOSS_DROP_MIN = 0.1  # single-stream phases: first-5 minus last-5 logged losses
CROSS_RISE_MAX = 0.05  # cross-stream RGB phase: the loss must not rise by more (measured: it falls 0.04-0.13)

# MEASURED at these settings (R@1 %, 64 test videos; drop = mean of the first 5 minus the last 5 logged losses):
#   seed threads  RGB-1 Flow-1 RGB-2 Flow-2 | drop rgb1 flow1 cross_rgb cross_flow
#   0    1 (suite)  57.8  81.2  50.0  82.8 | 0.37 0.53 0.05 0.03
#   1    1 (suite)  39.1  84.4  42.2  89.1 | 0.59 0.32 0.13 0.07
#   2    1 (suite)  48.4  93.8  43.8  79.7 | 0.23 0.30 0.09 0.05
#   0    2          57.8  84.4  59.4  87.5 | 0.37 0.53 0.04 0.03
#   1    2          39.1  84.4  40.6  90.6 | 0.59 0.32 0.12 0.07
#   2    2          48.4  93.8  53.1  79.7 | 0.23 0.30 0.07 0.04
# Untrained baseline (one training step per phase), 1 thread: seed 0 RGB 51.6 / Flow 78.1, seed 1
# 46.9 / 82.8, seed 2 50.0 / 82.8. The test runs seed 0; each run is deterministic at one thread.


@pytest.fixture(scope="module")
def motion_set(tmp_path_factory):
    from data_prep.build import build_synthetic

    out = tmp_path_factory.mktemp("motion")
    small = SyntheticConfig(
        num_classes=2, train_per_class=32, test_per_class=32, frames=16, height=48, width=48,
        flow_method=FlowMethod.dis,
    )  # fmt: skip
    build_synthetic(out, small, workers=1, progress=False)
    return out


def train(root: Path, out: Path, seed: int) -> dict:
    """The demo recipe shrunk: 4-frame 24 px views, a 16-wide tiny backbone, batch 16 (4 steps an epoch), 64 steps
    per single-stream phase and 120 per cross-stream alternation. Returns {"metrics": phase -> {"rgb/R@1", ..},
    "loss": phase -> its logged losses (every 5 steps), "ckpt": phase -> the method's tensors at its end}."""
    cfg = C.load(
        DEMO,
        [
            f"data.root={root}",
            "data.num_frames=4",
            "data.crop_size=24",
            "model.tiny_width=16",
            "train.batch_size=16",
            # the demo's data recipe before issue 15's study, which MEASURED above was taken with (the demo now
            # shares crops, jitters RGB and evaluates at the training scale; not re-measured at this size yet)
            "data.augment.align_streams=false",
            "data.eval.crop_fraction=1.0",
            "data.augment.color_jitter_prob=0.0",
            "data.augment.grayscale_prob=0.0",
            "data.augment.aug_controller=true",
            "data.augment.flow_photometric=true",
            "schedule.single_epochs=16",
            "schedule.cross_cycles=1",
            "schedule.cross_epochs=30",
            "optim.lr=0.003",
            "kernels.backend=torch",
            f"train.seed={seed}",
            f"train.out_dir={out}",
            "train.progress=false",
            "train.ckpt_every_steps=0",
            "eval.after_phase=true",
            "eval.batch_size=32",
            "eval.retrieval.recall_ks=[1]",
        ],
    )
    torch.manual_seed(seed)
    res = Trainer(cfg, build_method(cfg), tensorboard=False).run()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ckpt = {
        p: torch.load(out / "checkpoints" / f"{p}.pt", map_location="cpu", weights_only=False)["method"]
        for p in ("flow1", "cross_rgb_c1", "cross_flow_c1")
    }
    return {
        "metrics": {phase: r["metrics"] for phase, r in res.items()},
        "loss": {p: [r["loss"] for r in rows if r.get("phase") == p and "loss" in r] for p in res},
        "ckpt": ckpt,
    }


def loss_drop(losses: list[float], n: int = 5) -> float:
    return sum(losses[:n]) / n - sum(losses[-n:]) / n


def _equal(a: dict, b: dict, prefixes: tuple[str, ...]) -> list[bool]:
    return [torch.equal(a[k], b[k]) for k in a if k.startswith(prefixes)]


@pytest.mark.slow
def test_vicc_learns_motion_through_the_cross_stream_stage(motion_set, tmp_path):
    r = train(motion_set, tmp_path / "run", seed=0)
    m, loss, ck = r["metrics"], r["loss"], r["ckpt"]
    assert list(m) == ["rgb1", "flow1", "cross_rgb_c1", "cross_flow_c1"]
    assert all(math.isfinite(x) for v in loss.values() for x in v), loss
    # stage 1 learns its pretext task
    assert loss_drop(loss["rgb1"]) > LOSS_DROP_MIN, loss["rgb1"]
    assert loss_drop(loss["flow1"]) > LOSS_DROP_MIN, loss["flow1"]
    # the motion classes reach flow retrieval far beyond chance, before and after its cross-stream phase
    assert m["flow1"]["flow/R@1"] >= FLOW_MIN, m
    assert m["cross_flow_c1"]["flow/R@1"] >= FLOW_MIN, m
    # cross-stream RGB phase: flow frozen (bit-equal tensors, same retrieval), RGB trained on flow's assignments
    flow, rgb = ("nets.flow.", "protos.flow."), ("nets.rgb.", "protos.rgb.")
    same = _equal(ck["flow1"], ck["cross_rgb_c1"], flow)
    assert same and all(same)
    assert m["cross_rgb_c1"]["flow/R@1"] == m["flow1"]["flow/R@1"], m
    weights = {k: v for k, v in ck["flow1"].items() if k.startswith("nets.rgb.") and k.endswith(".weight")}
    assert weights and not any(_equal(weights, ck["cross_rgb_c1"], ("nets.rgb.",))), (
        "an RGB weight did not move"
    )
    assert loss_drop(loss["cross_rgb_c1"]) > -CROSS_RISE_MAX, loss["cross_rgb_c1"]
    # cross-stream flow phase: RGB frozen in turn
    same = _equal(ck["cross_rgb_c1"], ck["cross_flow_c1"], rgb)
    assert same and all(same)
    assert m["cross_flow_c1"]["rgb/R@1"] == m["cross_rgb_c1"]["rgb/R@1"], m
