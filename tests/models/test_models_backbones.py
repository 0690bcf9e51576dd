"""Backbones and heads: shapes at the papers' 128 px, channels_last_3d, unit-norm outputs."""

import pytest
import torch

from vicc_fast import config
from vicc_fast.config import Backbone, ModelConfig, ResNetSize
from vicc_fast.models import PaperResNet, ProjectionHead, Prototypes, VideoResNet, build_encoder, build_head
from vicc_fast.models.backbones import r21d_mid_channels

torch.set_num_threads(1)

# the papers' clip sizes: S3D 32 frames, R(2+1)D / R3D 16 frames, all 128 x 128
PAPER_CLIPS = [(Backbone.s3d, 32, 1024), (Backbone.r21d, 16, 512), (Backbone.r3d, 16, 512)]


@pytest.mark.parametrize(("backbone", "frames", "dim"), PAPER_CLIPS)
def test_paper_backbones_run_at_128px_channels_last(backbone, frames, dim):
    torch.manual_seed(0)
    enc = build_encoder(ModelConfig(backbone=backbone)).eval()
    assert enc.feature_dim == dim
    x = torch.randn(1, 3, frames, 128, 128).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        y = enc(x)
    assert y.shape == (1, dim)
    assert torch.isfinite(y).all()


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ViCC paper Table 4 (R(2+1)D 14.4M) and the R3D (14.2M): one residual block per stage
@pytest.mark.parametrize(("backbone", "paper_params"), [(Backbone.r21d, 14.4e6), (Backbone.r3d, 14.2e6)])
def test_paper_resnets_have_the_papers_parameter_count(backbone, paper_params):
    enc = build_encoder(ModelConfig(backbone=backbone))  # the schema default is the paper's size
    assert isinstance(enc, PaperResNet)
    assert abs(n_params(enc) - paper_params) / paper_params < 0.01
    tv = build_encoder(ModelConfig(backbone=backbone, resnet=ResNetSize.tv18))  # the switch: torchvision -18
    assert isinstance(tv, VideoResNet) and n_params(tv) > 31e6


@pytest.mark.parametrize("name", ["ucf101_r21d", "ucf101_r3d", "hmdb51_r21d"])
def test_paper_configs_select_the_paper_resnets(name):
    cfg = config.load(config.CONFIG_DIR / f"{name}.yaml")
    assert cfg.model.resnet is ResNetSize.paper
    assert isinstance(build_encoder(cfg.model), PaperResNet)


def test_r21d_mid_channels_match_the_full_convolution():
    """Tran et al. 3.5: the (2+1)D pair has (about) the parameters of the t x d x d convolution."""
    assert r21d_mid_channels(3, 64, (3, 7, 7)) == 83  # the stem
    for cin, cout in [(64, 64), (64, 128), (256, 512)]:
        m = r21d_mid_channels(cin, cout, (3, 3, 3))
        assert abs((9 * cin * m + 3 * m * cout) - 27 * cin * cout) <= 9 * cin + 3 * cout


def test_no_pretrained_weights_loaded():
    # two builds with different seeds differ: weights are random, not a downloaded checkpoint
    torch.manual_seed(0)
    a = build_encoder(ModelConfig(backbone=Backbone.s3d)).state_dict()
    torch.manual_seed(1)
    b = build_encoder(ModelConfig(backbone=Backbone.s3d)).state_dict()
    key = next(k for k in a if k.endswith("weight"))
    assert not torch.equal(a[key], b[key])


@pytest.mark.parametrize("shape", [(2, 3, 8, 32, 32), (1, 3, 16, 128, 128), (2, 3, 1, 8, 8)])
def test_tiny_backbone_shapes_and_memory_formats_agree(shape):
    torch.manual_seed(0)
    enc = build_encoder(ModelConfig(backbone=Backbone.tiny, tiny_width=16)).eval()
    assert enc.feature_dim == 16
    x = torch.randn(*shape)
    with torch.no_grad():
        y = enc(x)
        y_cl = enc(x.contiguous(memory_format=torch.channels_last_3d))
    assert y.shape == (shape[0], 16)
    torch.testing.assert_close(y, y_cl, rtol=1e-4, atol=1e-5)


def test_tiny_backbone_trains():
    torch.manual_seed(0)
    enc = build_encoder(ModelConfig(backbone=Backbone.tiny, tiny_width=8))
    x = torch.randn(4, 3, 8, 32, 32).contiguous(memory_format=torch.channels_last_3d)
    enc(x).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_bad_tiny_width_is_a_clear_error():
    with pytest.raises(ValueError, match="tiny_width"):
        build_encoder(ModelConfig(backbone=Backbone.tiny, tiny_width=1))


def test_projection_head_outputs_unit_fp32_rows():
    cfg = ModelConfig(proj_hidden=16, proj_dim=8)
    head = build_head(cfg, 12)
    assert isinstance(head, ProjectionHead)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = head(torch.randn(5, 12))
    assert z.shape == (5, 8) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))


def test_prototypes_unit_rows_at_init_and_after_normalize():
    torch.manual_seed(0)
    protos = Prototypes(8, 6)
    assert protos.weight.shape == (6, 8)
    assert protos.layer.bias is None
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(6))
    with torch.no_grad():
        protos.weight.mul_(3.0).add_(0.1)
    protos.normalize_()
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(6))
    z = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    torch.testing.assert_close(protos(z), z @ protos.weight.t())


# -------------------------------------------------------------------- S3D BatchNorm and init (issue 25 item 1)
def _first_bn_step(enc: torch.nn.Module) -> tuple[torch.nn.BatchNorm3d, torch.Tensor, torch.Tensor]:
    """One train-mode forward of a small clip: the first BN, the batch mean of its input, its running mean."""
    bns = [m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    seen = {}
    h = bns[0].register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach().clone()))
    before = bns[0].running_mean.clone()
    enc.train()(torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0)))
    h.remove()
    return bns[0], seen["x"].mean(dim=(0, 2, 3, 4)), bns[0].running_mean - before


def test_s3d_batchnorm_and_init_as_released():
    """Released s3dg.py (l. 15-22, 44-56): nn.BatchNorm3d(out) with PyTorch's defaults (eps 1e-5, momentum 0.1),
    every conv N(0, 0.01), BN weight 1 / bias 0: the paper configs' S3D, a train-mode forward moves the running
    mean by 0.1 of the batch mean and normalises with eps 1e-5; model.s3d_init=torchvision keeps torchvision's
    TF values (0.001 of the batch mean) and PyTorch's default conv init."""
    torch.manual_seed(0)
    cfg = config.load(config.CONFIG_DIR / "ucf101_s3d.yaml")
    enc = build_encoder(cfg.model)
    bns = [m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(m.bias is None for m in convs)
    w = torch.cat([m.weight.detach().flatten() for m in convs])
    assert abs(float(w.std()) - 0.01) < 1e-4 and abs(float(w.mean())) < 1e-4  # 7.9M draws of N(0, 0.01)
    for m in convs:  # every conv, not only the pooled statistics: the stem's 147-input conv included
        assert abs(float(m.weight.detach().std()) - 0.01) < 0.002
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in bns)
    bn, batch_mean, moved = _first_bn_step(enc)
    torch.testing.assert_close(moved, 0.1 * batch_mean, rtol=1e-4, atol=1e-7)
    # eps of the normalisation, seen in the output of an eval-mode BN on a constant-variance input
    x = torch.randn(4, bn.num_features, 2, 2, 2)
    bn.eval().running_var.fill_(1e-4)
    bn.running_mean.zero_()
    torch.testing.assert_close(bn(x), x / (1e-4 + 1e-5) ** 0.5, rtol=1e-5, atol=1e-5)

    torch.manual_seed(0)
    tv = build_encoder(ModelConfig(backbone=Backbone.s3d, s3d_init=config.S3dInit.torchvision))
    stem = next(m for m in tv.modules() if isinstance(m, torch.nn.Conv3d))
    assert float(stem.weight.detach().std()) > 0.03  # kaiming-uniform over 147 inputs: std 0.048
    bn, batch_mean, moved = _first_bn_step(tv)
    torch.testing.assert_close(moved, 0.001 * batch_mean, rtol=1e-4, atol=1e-9)
    x = torch.randn(4, bn.num_features, 2, 2, 2)
    bn.eval().running_var.fill_(1e-4)
    bn.running_mean.zero_()
    torch.testing.assert_close(bn(x), x / (1e-4 + 1e-3) ** 0.5, rtol=1e-5, atol=1e-5)
