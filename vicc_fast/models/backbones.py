"""Video encoders: clip ``[B, C, T, H, W]`` -> feature ``[B, F]`` (global average pooled).

Every encoder ends in adaptive average pooling, so any clip size the stem can take works (the papers train at
128 px; torchvision's stock S3D pools with a fixed 2x7x7 window and fails below 224 px). No pretrained weights
are ever loaded: the point is self-supervised training from scratch.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import video as tv_video


class _Pooled(nn.Module):
    """``features`` (a conv trunk) followed by global average pooling and flattening.

    feature_dim: F, the channel count of the trunk's last layer.
    """

    def __init__(self, features: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T, H, W] -> [B, F]."""
        return self.pool(self.features(x)).flatten(1)


class S3D(_Pooled):
    """S3D (Xie et al. 2018) trunk from torchvision with adaptive pooling; F = 1024.

    A 32x128x128 clip leaves the trunk as 4x4x4 before pooling.
    """

    def __init__(self) -> None:
        super().__init__(tv_video.s3d(weights=None).features, 1024)


class VideoResNet(nn.Module):
    """torchvision's R(2+1)D-18 / R3D-18 without the classifier; F = 512 (already adaptively pooled)."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        builders = {"r21d": tv_video.r2plus1d_18, "r3d": tv_video.r3d_18}
        net = builders[arch](weights=None)
        net.fc = nn.Identity()
        self.net = net
        self.feature_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T, H, W] -> [B, 512]."""
        return self.net(x)


def _conv_bn_relu(cin: int, cout: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


class TinyCNN(_Pooled):
    """A 4-layer 3D CNN for CPU demos: widths w/2, w, w, w; F = w.

    Sized after the issue author's prototype (16-32 channels, 8x32x32 views): the first layer keeps time and
    halves space, the next two halve both (time only where it is at least 2 frames), the last keeps the size.
    An 8x32x32 clip costs about 8 M multiply-adds at w=32 (counted from the layer shapes).
    """

    def __init__(self, width: int = 32) -> None:
        if width < 2:
            raise ValueError(f"model.tiny_width must be >= 2, got {width}")
        half = max(width // 2, 1)
        features = nn.Sequential(
            _conv_bn_relu(3, half, (1, 2, 2)),
            _conv_bn_relu(half, width, (2, 2, 2)),
            _conv_bn_relu(width, width, (2, 2, 2)),
            _conv_bn_relu(width, width, (1, 1, 1)),
        )
        super().__init__(features, width)
