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

    A 32x128x128 clip leaves the trunk as 4x4x4 before pooling. ``init="released"`` (the default): BatchNorm and
    initialisation as the released ViCC ``src/backbone/s3dg.py`` (lines 15-22, 44-56): PyTorch's BatchNorm3d
    defaults (eps 1e-5, momentum 0.1; it comments out the TensorFlow values eps 1e-3, momentum 0.001 that
    torchvision's S3D uses), every conv weight N(0, 0.01) (no conv has a bias), BN weight 1 and bias 0.
    ``init="torchvision"``: torchvision's module as built (TF BatchNorm values, PyTorch's default conv init).
    """

    def __init__(self, init: str = "released") -> None:
        if init not in ("released", "torchvision"):
            raise ValueError(f"S3D: init must be released or torchvision, not {init!r}")
        super().__init__(tv_video.s3d(weights=None).features, 1024)
        if init == "released":
            for m in self.modules():
                if isinstance(m, nn.BatchNorm3d):
                    # momentum 0.001 would let the running statistics lag ~1000 steps behind the weights
                    m.eps, m.momentum = 1e-5, 0.1
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Conv3d):
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)


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


def r21d_mid_channels(cin: int, cout: int, kernel: tuple[int, int, int]) -> int:
    """Channels between the spatial and the temporal convolution of a (2+1)D factorisation, chosen so that it
    has as many parameters as the full t x d x d convolution (Tran et al. 2018, sec. 3.5):
    ``floor(t d^2 Nin Nout / (d^2 Nin + t Nout))``. kernel: (t, d, d)."""
    t, kh, kw = kernel
    return (t * kh * kw * cin * cout) // (kh * kw * cin + t * cout)


def _triple_pad(kernel: tuple[int, int, int]) -> tuple[int, int, int]:
    return (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)


class Conv2Plus1D(nn.Sequential):
    """A t x d x d convolution factorised as 1 x d x d (spatial) -> BN -> ReLU -> t x 1 x 1 (temporal), no
    biases, 'same' padding: the R(2+1)D block of the paper's backbone (VCOP / the released ViCC code)."""

    def __init__(
        self, cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int] = (1, 1, 1)
    ) -> None:
        mid = r21d_mid_channels(cin, cout, kernel)
        pad = _triple_pad(kernel)
        super().__init__(
            nn.Conv3d(
                cin,
                mid,
                (1, kernel[1], kernel[2]),
                (1, stride[1], stride[2]),
                (0, pad[1], pad[2]),
                bias=False,
            ),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, cout, (kernel[0], 1, 1), (stride[0], 1, 1), (pad[0], 0, 0), bias=False),
        )


def _conv(factorised: bool, cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
    if factorised:
        return Conv2Plus1D(cin, cout, kernel, stride)
    return nn.Conv3d(cin, cout, kernel, stride, _triple_pad(kernel), bias=False)


class ZeroPadShortcut(nn.Module):
    """Hara et al.'s parameter-free shortcut (type A): subsample by ``stride`` and append zero channels.
    x: [B, Cin, T, H, W] -> [B, Cout, T/s, H/s, W/s]."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = cout - cin, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        x = x[:, :, ::s, ::s, ::s]
        return torch.cat([x, x.new_zeros(x.shape[0], self.extra, *x.shape[2:])], dim=1)


class _PaperBlock(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN, plus the input, then ReLU. A block that halves T, H, W passes its
    input through a strided 1x1x1 conv + BN (``project``) or :class:`ZeroPadShortcut`."""

    def __init__(self, factorised: bool, cin: int, cout: int, downsample: bool, project: bool = True) -> None:
        super().__init__()
        s = (2, 2, 2) if downsample else (1, 1, 1)
        k = (3, 3, 3)
        self.conv1 = _conv(factorised, cin, cout, k, s)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = _conv(factorised, cout, cout, k, (1, 1, 1))
        self.bn2 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if downsample and project:
            self.shortcut = nn.Sequential(_conv(factorised, cin, cout, (1, 1, 1), s), nn.BatchNorm3d(cout))
        elif downsample:
            self.shortcut = ZeroPadShortcut(cin, cout, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, Cin, T, H, W] -> [B, Cout, T', H', W']."""
        res = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(self.shortcut(x) + res)


class PaperResNet(_Pooled):
    """The paper's R(2+1)D / R3D: a 3x7x7 stem (stride 1x2x2, no max-pool) and four stages of ONE basic block
    each (64, 128, 256, 512 channels; stages 2-4 halve T, H, W); F = 512.

    ``arch="r21d"``: the released ViCC code's ``R2Plus1DNet((1, 1, 1, 1))`` (VCOP's): every convolution
    factorised (:class:`Conv2Plus1D`), 1x1x1 projection shortcuts; 14.4M parameters (paper Table 4).
    ``arch="r3d"``: the released code has none; full 3D convolutions in the same layout with the parameter-free
    shortcut of R3D-18's authors (Hara et al., type A: :class:`ZeroPadShortcut`): 14.2M (the paper's size; with
    projection shortcuts it would be 14.4M).
    """

    def __init__(self, arch: str) -> None:
        if arch not in ("r21d", "r3d"):
            raise ValueError(f"PaperResNet: arch must be r21d or r3d, not {arch!r}")
        f = arch == "r21d"
        widths = (64, 64, 128, 256, 512)
        layers: list[nn.Module] = [
            _conv(f, 3, 64, (3, 7, 7), (1, 2, 2)),
            nn.BatchNorm3d(64),
            nn.ReLU(inplace=True),
        ]
        layers += [_PaperBlock(f, widths[i], widths[i + 1], i > 0, project=f) for i in range(4)]
        super().__init__(nn.Sequential(*layers), 512)


def _conv_bn_relu(cin: int, cout: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


class TinyCNN(_Pooled):
    """A 4-layer 3D CNN for CPU demos: widths w/2, w, w, w; F = w.

    Sized for a demo that trains in minutes on CPU cores (16-32 channels, 8x32x32 views): the first layer keeps
    time and halves space, the next two halve both (time only where it is at least 2 frames), the last keeps the
    size.
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
