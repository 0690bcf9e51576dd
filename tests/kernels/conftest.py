"""Shared inputs for the kernel tests: tiny shapes (the Triton interpreter is slow) unless a test says so."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def unit(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random L2-normalised rows (last dim), like the projection head's output and the prototypes."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1).to(dtype)


@pytest.fixture
def views_mask():
    """mask[t, p]: view p predicts view t's target; ViCC cross-stream = every other view."""

    def make(v: int) -> torch.Tensor:
        return ~torch.eye(v, dtype=torch.bool)

    return make
