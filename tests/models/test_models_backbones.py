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
