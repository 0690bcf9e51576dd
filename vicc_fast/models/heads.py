"""Projection head and prototypes: the parts removed after self-supervised training."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """2-layer MLP F -> hidden -> D with ReLU, output L2-normalised (SimCLR-style, as in ViCC/CoCLR code).

    No BatchNorm: the head then behaves the same on one rank or many and for any batch split.
    The output is computed in fp32 (normalisation of low-precision activations loses the small components
    the scores and Sinkhorn depend on).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, F] -> z: [B, D], float32, unit rows."""
        h = self.fc2(F.relu(self.fc1(x)))
        return F.normalize(h.float(), dim=1)


class Prototypes(nn.Module):
    """K prototype vectors as a bias-free linear layer (``weight``: [K, D]), kept at unit length.

    Call :meth:`normalize_` after every optimiser step (and it is called at construction), so that
    ``z @ weight.T`` is a cosine similarity.
    """

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__()
        self.layer = nn.Linear(dim, num_prototypes, bias=False)
        self.normalize_()

    @property
    def weight(self) -> torch.Tensor:
        """[K, D]."""
        return self.layer.weight

    @torch.no_grad()
    def normalize_(self) -> None:
        w = self.layer.weight
        w.copy_(F.normalize(w.float(), dim=1).to(w.dtype))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: [N, D] -> scores [N, K] (fp32)."""
        return z.float() @ self.layer.weight.float().t()
