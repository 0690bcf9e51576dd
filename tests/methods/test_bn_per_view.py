"""Each view of the trained encoder is its own BatchNorm batch (released code: x1, x2 forwarded apart)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.methods.methods_helpers import make_batch, small_config, state_at
from vicc_fast.config import MethodName, Stream
from vicc_fast.methods import build_method


class RecordingBN(nn.BatchNorm3d):
    """BatchNorm3d that records the batch of every training-mode call, by the samples' identities: the
    test's clips carry their (view, sample) tag in the first input channel, which the tag-through trunk below
    keeps in channel 0."""

    calls: list[set[tuple[int, int]]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls.append({tuple(int(v) for v in divmod(int(t), 100)) for t in x[:, 0, 0, 0, 0].round()})
        return super().forward(x)


class TagTrunk(nn.Module):
    """A trunk whose BN sees the raw clip: channel 0 carries each clip's tag into the BN."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = RecordingBN(3)
        self.bn.calls = []
        self.feature_dim = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x).mean(dim=(2, 3, 4))


def tagged_batch(B: int, streams) -> object:
    batch = make_batch(B=B, streams=streams)
    for vs in batch.views.values():
        for v, x in enumerate(vs):
            x[:, 0] = (100 * v + torch.arange(B, dtype=x.dtype)).view(B, 1, 1, 1)
            x.requires_grad_(True)
    return batch


@pytest.mark.parametrize("name", [MethodName.vicc, MethodName.goca])
@pytest.mark.parametrize("per_view", [True, False])
def test_views_never_share_a_bn_batch_and_both_get_gradients(name, per_view):
    torch.manual_seed(0)
    cfg = small_config(name=name)
    cfg.train.bn_per_view = per_view
    cfg.method.goca.proto_reg_init_steps = 2
    m = build_method(cfg)
    nets = getattr(m, "nets", None) or m.backbones
    trunks = {s.value: TagTrunk() for s in Stream}
    for s, trunk in trunks.items():
        net = nets[s]
        if hasattr(net, "backbone"):
            net.backbone = trunk
            net.head = cfg_head(cfg)
        else:
            nets[s] = trunk
    if name is MethodName.goca:
        m.heads["shared"] = cfg_head(cfg)
    phase = next(p for p in m.phases() if p.frozen_stream is None)
    m.setup_phase(phase)
    m.train()
    batch = tagged_batch(4, phase.streams)
    m.loss(batch, state_at(phase, 0))["loss"].backward()
    for s in phase.trained_streams:
        calls = trunks[s.value].bn.calls
        views_per_call = [{v for v, _ in c} for c in calls]
        if per_view:
            assert len(calls) == 2 and all(len(v) == 1 for v in views_per_call)
            assert all(len(c) == 4 for c in calls)
        else:
            assert views_per_call == [{0, 1}]  # today's switch: one BN batch of both views
        for x in batch.views[s]:  # gradients through both views
            assert x.grad is not None and x.grad.abs().sum() > 0


def cfg_head(cfg) -> nn.Module:
    from vicc_fast.models import build_head

    return build_head(cfg.model, 3)
