"""docs/architecture.md "Add a method" holds: a method written as that section says (one class over
``methods.base.Method``, modelled on vicc.py, its phases read from the config) is built through the registry and
trained by the real engine, loader and checkpoints on a small synthetic build, with no change to the engine.

A new name needs its ``MethodName`` value (config.py), which a test cannot add: the registry entry of ``vicc``
stands in for it here."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vicc_fast import checkpoint as ckpt
from vicc_fast import config as C
from vicc_fast.config import Config, MethodName, Stream
from vicc_fast.data.batch import Batch
from vicc_fast.engine.trainer import Trainer, results_table
from vicc_fast.methods import REGISTRY, build_method
from vicc_fast.methods.base import STREAM_LABEL, Method, PhaseSpec, StepState
from vicc_fast.methods.common import StreamNet, fp32, run_views, set_trainable

TEMPERATURE = 0.2  # a real method reads its settings from its config section (method.<name>)


def tiny_phases(cfg: Config) -> list[PhaseSpec]:
    """One InfoNCE phase per stream, each ``schedule.single_epochs`` long (as vicc_phases reads the schedule)."""
    return [
        PhaseSpec(f"{s.value}1", s, None, (s,), 2, cfg.schedule.single_epochs, f"{STREAM_LABEL[s]}-1")
        for s in (Stream.rgb, Stream.flow)
    ]


class TinyInfoNCE(Method):
    """SimCLR-style InfoNCE between the two views of each stream: the smallest method over the engine."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.nets = torch.nn.ModuleDict({s.value: StreamNet(cfg.model) for s in Stream})

    def phases(self) -> list[PhaseSpec]:
        return tiny_phases(self.cfg)

    def setup_phase(self, phase: PhaseSpec) -> None:
        for s in Stream:
            set_trainable(self.nets[s.value], s == phase.train_stream)

    def trainable_parameters(self, phase: PhaseSpec) -> list[torch.nn.Parameter]:
        return list(self.nets[phase.train_stream.value].parameters())

    def encoders(self) -> dict[Stream, torch.nn.Module]:
        return {s: self.nets[s.value].backbone for s in Stream}

    def loss(self, batch: Batch, state: StepState) -> dict[str, torch.Tensor]:
        s = state.phase.train_stream
        net = self.nets[s.value]
        views = batch.views[s][: state.phase.num_views]
        z = net.head(run_views(net.backbone, views, self.cfg.train.bn_per_view))  # [2B, D] unit rows
        B = views[0].shape[0]
        with fp32(z.device):
            sim = z.float() @ z.float().t() / TEMPERATURE
            sim = sim.masked_fill(torch.eye(2 * B, dtype=torch.bool, device=z.device), float("-inf"))
            target = torch.cat([torch.arange(B, 2 * B), torch.arange(B)]).to(z.device)  # the other view
            loss = F.cross_entropy(sim, target)
        return {"loss": loss, "positive_cos": (z[:B] * z[B:]).sum(1).mean().detach()}

    def log_values(self, state: StepState) -> dict[str, float]:
        return {"tiny_epoch": float(state.epoch)}


@pytest.fixture(scope="module")
def shards(tiny_shards):
    return tiny_shards


def test_a_method_from_the_template_trains_through_the_real_engine(shards, tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, MethodName.vicc, TinyInfoNCE)
    cfg = C.load(
        None,
        [
            f"data.root={shards}",
            "data.num_frames=4",
            "data.crop_size=16",
            "data.threads=1",
            "model.backbone=tiny",
            "model.tiny_width=4",
            "model.proj_hidden=16",
            "model.proj_dim=8",
            "schedule.single_epochs=2",
            "train.batch_size=4",
            "train.amp='off'",
            "train.progress=false",
            "train.log_every_steps=1",
            "eval.after_phase=false",
            f"train.out_dir={tmp_path / 'run'}",
        ],
    )
    torch.manual_seed(0)
    m = build_method(cfg)
    assert isinstance(m, TinyInfoNCE)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    Trainer(cfg, m, tensorboard=False).run()
    # every phase trained its own stream only, and left a checkpoint the evaluation can read
    for phase in m.phases():
        state = ckpt.load(ckpt.phase_path(cfg.train.out_dir, phase.name))
        assert state["phase"] == phase.name
    after = m.state_dict()
    for s in ("rgb", "flow"):
        key = next(k for k in after if k.startswith(f"nets.{s}.backbone") and k.endswith("weight"))
        assert not torch.equal(before[key], after[key]), key
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} == {"rgb1", "flow1"}
    assert all(torch.isfinite(torch.tensor(r["loss"])) and "positive_cos" in r for r in rows)
    assert [r["tiny_epoch"] for r in rows if r["phase"] == "rgb1"][-1] == 1.0  # the method's own log values
    # the result table's rows are the method's (base default: each reported phase's label)
    fake = {p.name: {"metrics": {f"{p.train_stream.value}/R@1": 50.0}} for p in m.phases()}
    assert [ln.split()[0] for ln in results_table(fake, m).splitlines()[1:]] == ["RGB-1", "Flow-1"]
