"""Encoders (backbones) and the self-supervised heads; ``build_encoder(cfg.model)`` is the entry point."""

from __future__ import annotations

from torch import nn

from vicc_fast.config import Backbone, ModelConfig, ResNetSize, S3dInit
from vicc_fast.models.backbones import S3D, PaperResNet, TinyCNN, VideoResNet
from vicc_fast.models.heads import ProjectionHead, Prototypes


def build_encoder(model_cfg: ModelConfig) -> nn.Module:
    """A fresh, randomly initialised backbone ``[B, C, T, H, W] -> [B, F]`` with ``.feature_dim`` = F."""
    backbone = Backbone(model_cfg.backbone)
    if backbone is Backbone.s3d:
        return S3D(S3dInit(model_cfg.s3d_init).value)
    if backbone in (Backbone.r21d, Backbone.r3d):
        if ResNetSize(model_cfg.resnet) is ResNetSize.paper:
            return PaperResNet(backbone.value)
        return VideoResNet(backbone.value)
    if backbone is Backbone.tiny:
        return TinyCNN(model_cfg.tiny_width)
    raise ValueError(f"config key 'model.backbone': unknown backbone {model_cfg.backbone!r}")


def build_head(model_cfg: ModelConfig, feature_dim: int) -> ProjectionHead:
    """The projection head F -> proj_hidden -> proj_dim (L2-normalised output)."""
    return ProjectionHead(feature_dim, model_cfg.proj_hidden, model_cfg.proj_dim)


__all__ = [
    "build_encoder",
    "build_head",
    "PaperResNet",
    "ProjectionHead",
    "Prototypes",
    "S3D",
    "TinyCNN",
    "VideoResNet",
]
