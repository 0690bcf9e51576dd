"""Self-supervised methods as small classes over one engine (see base.Method).

``build_method(cfg)`` picks the class by ``cfg.method.name``. Imports are lazy so that importing one method
does not pull in the others.
"""

from __future__ import annotations

from collections.abc import Callable

from vicc_fast.config import Config, MethodName
from vicc_fast.methods.base import Method, PhaseSpec, StepState


def _vicc(cfg: Config) -> Method:
    from vicc_fast.methods.vicc import ViCC

    return ViCC(cfg)


def _coclr(cfg: Config) -> Method:
    from vicc_fast.methods.coclr import CoCLR

    return CoCLR(cfg)


def _goca(cfg: Config) -> Method:
    from vicc_fast.methods.goca import GOCA

    return GOCA(cfg)


REGISTRY: dict[MethodName, Callable[[Config], Method]] = {
    MethodName.vicc: _vicc,
    MethodName.coclr: _coclr,
    MethodName.goca: _goca,
}


def build_method(cfg: Config) -> Method:
    """A fresh method (randomly initialised networks) for ``cfg.method.name``."""
    name = MethodName(cfg.method.name)
    return REGISTRY[name](cfg)


__all__ = ["REGISTRY", "Method", "PhaseSpec", "StepState", "build_method"]
