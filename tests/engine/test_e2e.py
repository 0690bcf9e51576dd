"""End to end through the real parts: synthetic shards (data_prep), the DALI loader (CPU backend), the ViCC
method with the tiny backbone, the engine and the kNN evaluation hook. Two tiny phases (rgb1, flow1)."""

from __future__ import annotations

import pytest
import torch

from vicc_fast import checkpoint as ckpt
from vicc_fast import config as C
from vicc_fast.engine.trainer import Trainer, results_table
from vicc_fast.eval.inputs import load_checkpoint
from vicc_fast.methods import build_method


@pytest.fixture(scope="module")
def shards(tiny_shards):
    return tiny_shards


# small clips and the tiny model: what both end-to-end tests train
TINY_MODEL = ["data.num_frames=4", "data.crop_size=16", "data.threads=1", "data.eval.clips=1",
              "model.backbone=tiny", "model.tiny_width=4", "model.proj_hidden=16", "model.proj_dim=8",
              "model.num_prototypes=6"]  # fmt: skip


def _cfg(root, out, *over: str) -> C.Config:
    return C.load(
        None,
        [
            f"data.root={root}",
            *TINY_MODEL,
            "method.swav.queue_size=8",
            "schedule.single_epochs=2",
            "schedule.cross_cycles=0",
            "method.vicc.queue_start_rgb=1",
            "method.vicc.queue_start_flow=1",
            "method.vicc.single_freeze_prototypes=1",
            "train.batch_size=4",
            "train.amp=bf16",
            "data.dtype=float32",  # eval.features runs CPU clips without autocast: feed it fp32
            f"train.out_dir={out}",
            "train.progress=false",
            "eval.batch_size=4",
            "eval.retrieval.recall_ks=[1]",
            *over,
        ],
    )


class Crash(Exception):
    pass


def test_two_phases_through_the_real_loader_with_exact_resume(shards, tmp_path):
    cfg = _cfg(shards, tmp_path / "a", "train.ckpt_every_steps=0", "eval.after_phase=true")
    torch.manual_seed(0)
    ref = build_method(cfg)
    res = Trainer(cfg, ref).run()
    table = results_table(res, ref).splitlines()
    assert [ln.split()[0] for ln in table[1:]] == ["RGB-1", "Flow-1"]
    assert 0 <= res["flow1"]["metrics"]["flow/R@1"] <= 100
    saved = load_checkpoint(ckpt.phase_path(cfg.train.out_dir, "rgb1"))  # what evaluation reads
    encoders = saved.encoders
    assert saved.cfg.model == cfg.model and set(encoders) == {C.Stream.rgb, C.Stream.flow}
    assert not encoders[C.Stream.rgb].training
    # rgb1.pt holds the RGB encoder as it was at the end of rgb1 (flow1 never touches it)
    for k, v in encoders[C.Stream.rgb].state_dict().items():
        assert torch.equal(v, ref.encoders()[C.Stream.rgb].state_dict()[k]), k

    cfg = _cfg(shards, tmp_path / "b", "train.ckpt_every_steps=1", "eval.after_phase=false")

    def kill(phase, state):  # after epoch 1 step 0 of flow1 was checkpointed, die in the next step
        if phase.name == "flow1" and (state.epoch, state.step) == (1, 1):
            raise Crash

    torch.manual_seed(0)
    with pytest.raises(Crash):
        Trainer(cfg, build_method(cfg), step_hook=kill).run()
    last = ckpt.load(ckpt.latest_path(cfg.train.out_dir))
    assert (last["phase"], last["epoch"], last["step"]) == ("flow1", 1, 1)  # mid-epoch: one batch to skip
    torch.manual_seed(1)
    resumed = build_method(cfg)  # other initial weights: everything must come from the checkpoint
    Trainer(cfg, resumed).run()
    want, got = ref.state_dict(), resumed.state_dict()
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, got[k]), k
        else:
            assert v == got[k], k


def test_cli_builds_missing_shards_trains_and_prints_the_table(tmp_path, capsys):
    from vicc_fast.train import main

    rc = main(
        [
            f"data.root={tmp_path}/data",
            "data.synthetic.num_classes=2",
            "data.synthetic.train_per_class=4",
            "data.synthetic.test_per_class=2",
            "data.synthetic.frames=12",
            "data.synthetic.height=32",
            "data.synthetic.width=40",
            "data.synthetic.flow_method=dis",
            *TINY_MODEL,
            "method.swav.queue_size=0",
            "schedule.single_epochs=1",
            "schedule.phase=rgb1",
            "train.batch_size=4",
            "train.amp='off'",
            f"train.out_dir={tmp_path}/run",
            "train.progress=false",
            "eval.batch_size=4",
            "eval.retrieval.recall_ks=[1]",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert (tmp_path / "data" / "manifest.json").is_file()
    head, row, took = out.strip().splitlines()[-3:]
    assert took.startswith("wall time ")
    assert head.split() == ["R@1"] and row.split()[0] == "RGB-1"
    assert ckpt.load(ckpt.latest_path(tmp_path / "run"))["completed"] == ["rgb1"]
