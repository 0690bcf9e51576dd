"""scripts/faults: a short version of the kill/resume run (one SIGKILL of training, one of the build)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts/faults" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_kill_resume_short(tmp_path, capsys):
    """SIGKILLed at a phase change of training and once during the build: resumed, bit-equal weights and loss
    curve, the same shard hashes (exit code 0 means every *_equal holds)."""
    kr = _module("kill_resume")
    assert kr.main(["--kills", "1", "--epochs", "1", "--work", str(tmp_path)]) == 0, capsys.readouterr().out
