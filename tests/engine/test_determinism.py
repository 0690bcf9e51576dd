"""Two runs of the same training command on one machine give bit-identical weights (issue 15).

Two separate processes (as a user would run them), the real parts (synthetic shards, DALI's CPU loader with two
threads and prefetching, the ViCC method, the engine with its per-phase kNN), every phase kind (rgb1, flow1, a
cross-stream cycle), weights compared per phase by hash. Bit-exactness holds on one machine, not across CPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vicc_fast.bench.demo import weights_digest
from vicc_fast.config import FlowMethod, SyntheticConfig

REPO = Path(__file__).resolve().parents[2]
PHASES = ["rgb1", "flow1", "cross_rgb_c1", "cross_flow_c1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_prep.build import build_synthetic

    out = tmp_path_factory.mktemp("syn_det")
    small = SyntheticConfig(num_classes=2, train_per_class=6, test_per_class=2, frames=12, height=32, width=40,
                            flow_method=FlowMethod.dis)  # fmt: skip
    build_synthetic(out, small, workers=1, progress=False)
    return out


def _train(root: Path, out: Path) -> None:
    cmd = [sys.executable, "-m", "vicc_fast.train", f"data.root={root}", f"train.out_dir={out}",
           "data.num_frames=4", "data.crop_size=16", "data.threads=2", "data.eval.clips=1",
           "model.backbone=tiny", "model.tiny_width=4", "model.proj_hidden=16", "model.proj_dim=8",
           "model.num_prototypes=6", "method.swav.queue_size=0", "schedule.single_epochs=2",
           "schedule.cross_cycles=1", "schedule.cross_epochs=1", "train.batch_size=4", "train.amp='off'",
           "train.progress=false", "train.ckpt_every_steps=0", "eval.batch_size=4", "eval.retrieval.recall_ks=[1]"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)


def test_two_runs_of_one_command_give_bit_identical_weights(shards, tmp_path):
    _train(shards, tmp_path / "a")
    _train(shards, tmp_path / "b")
    digests = {
        r: {p: weights_digest(tmp_path / r / "checkpoints" / f"{p}.pt") for p in PHASES} for r in ("a", "b")
    }
    assert digests["a"] == digests["b"]
    assert len(set(digests["a"].values())) == len(PHASES)  # every phase trained something
    results = [json.loads((tmp_path / r / "results.json").read_text())["phases"] for r in ("a", "b")]
    assert [{p: v["metrics"] for p, v in res.items()} for res in results] == [
        {p: v["metrics"] for p, v in results[0].items()}
    ] * 2
