"""vicc_fast: self-supervised video representation learning (ViCC, CoCLR, GOCA) on a fast data path.

``vicc_fast.load_encoder(path)``: an encoder exported by ``python -m vicc_fast.export`` (safetensors + JSON
sidecar), without the training code's state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_encoder(path: str | Path, device: Any = "cpu") -> Any:
    """The exported encoder at ``path`` (see :func:`vicc_fast.export.load_encoder`), in eval mode."""
    from vicc_fast.export import load_encoder as _load

    return _load(path, device)


__all__ = ["load_encoder"]
