"""``python -m kernels.check``: Triton kernels vs the references on one device. Here it runs in the Triton
interpreter (tests/conftest.py sets TRITON_INTERPRET=1) at the small shapes; the compiled run on a GPU is a
subprocess (TRITON_INTERPRET is read when the kernels are defined) and is skipped without CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import check

ROOT = Path(__file__).resolve().parents[2]
KERNEL_NAMES = ("prototype_scores", "sinkhorn", "sinkhorn_prior", "assign", "swapped_loss", "enqueue")


def test_cpu_small_passes_and_names_every_kernel(capsys, tmp_path):
    pytest.importorskip("triton")
    out_json = tmp_path / "check.json"
    assert check.main(["--device", "cpu", "--sizes", "small", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    for name in KERNEL_NAMES:
        assert f" {name}" in out, name
    for variant in ("sinkhorn fused", "sinkhorn unfused", "assign fused", "assign unfused", "lambda2=0"):
        assert variant in out
    for what in ("swapped_loss vicc grad", "swapped_loss swav grad", "enqueue wrap"):
        for dtype in ("float32", "bfloat16", "float16"):
            assert any(what in line and dtype in line for line in out.splitlines()), (what, dtype)
    assert "FAIL" not in out
    (record,) = json.loads(out_json.read_text())
    assert record["failed"] == 0 and record["triton_interpret"] is True
    assert {"device", "torch", "triton"} <= record.keys()
    assert len(record["checks"]) == sum(line.startswith("ok ") for line in out.splitlines())
    assert check.main(["--device", "cpu", "--sizes", "small", "-k", "enqueue", "--json", str(out_json)]) == 0
    assert len(json.loads(out_json.read_text())) == 2  # appended


def test_compare_flags_perturbation_beyond_tolerance():
    want = torch.rand(4, 30, 37, dtype=torch.float64)  # fp64: the perturbation survives exactly
    ok = check.compare("sinkhorn fused", "float32", "V=4", want + 0.5 * check.Q_ATOL, want, check.Q_ATOL)
    assert ok.ok and ok.max_abs_err == pytest.approx(0.5 * check.Q_ATOL, rel=1e-3)
    perturbed = want.clone()
    perturbed[1, 2, 3] += 3 * check.Q_ATOL
    bad = check.compare("sinkhorn fused", "float32", "V=4", perturbed, want, check.Q_ATOL)
    assert not bad.ok and bad.max_abs_err == pytest.approx(3 * check.Q_ATOL, rel=1e-3)
    assert "FAIL" in bad.line() and "sinkhorn fused" in bad.line()
    assert check.exit_code([ok, bad]) == 1 and check.exit_code([ok]) == 0
    assert check.exit_code([]) == 1  # nothing compared is not a pass
    # rtol scales with |want| (assert_close's rule); NaN and a shape mismatch always fail
    big = torch.full((3,), 100.0)
    assert check.compare("x", "float32", "", big * (1 + 5e-5), big, 0.0, rtol=1e-4).ok
    assert not check.compare("x", "float32", "", big * (1 + 5e-4), big, 0.0, rtol=1e-4).ok
    nan = want.clone()
    nan[0, 0, 0] = float("nan")
    assert not check.compare("x", "float32", "", nan, want, 1.0).ok
    assert not check.compare("x", "float32", "", want[:, :5], want, 1.0).ok


def test_grad_tolerance_is_one_16bit_ulp():
    g = torch.tensor([0.5, -2.0, 1.0])
    assert check.grad_atol(torch.float32, g) == check.GRAD_ATOL_FP32
    assert check.grad_atol(torch.bfloat16, g.bfloat16()) == 2.0 * 2**-7


def test_a_raising_check_is_a_failure(monkeypatch):
    def boom(device, sizes):
        raise RuntimeError("compile failed\nlong trace")

    monkeypatch.setitem(check.CHECKS, "enqueue", boom)
    results = list(check.run_checks("cpu", "small", "enqueue"))
    assert len(results) == 1 and not results[0].ok
    assert "RuntimeError: compile failed" in results[0].line()


def test_bad_usage_returns_2(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no GPU" in err
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert check.main(["--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "TRITON_INTERPRET=1" in err
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert check.main(["--device", "cpu", "-k", "no-such-kernel"]) == 2
    assert "matches no check" in capsys.readouterr().err
    assert check.main(["--sizes", "huge"]) == 2  # argparse's error, returned rather than raised


def test_interpreter_on_cuda_is_bad_usage():
    assert "unset TRITON_INTERPRET" in check.usage_error("cuda", True, True, True)
    assert check.usage_error("cuda", False, True, True) is None
    assert check.usage_error("cpu", True, False, True) is None
    assert "triton" in check.usage_error("cpu", True, False, False)


def test_plan_covers_paper_shapes():
    plan = check.plan("paper")
    shapes = {(s.V, s.N, s.K, s.D, s.n_batch) for _, s in plan}
    assert shapes == {(v, 48 + q, 300, 128, 48) for v in (2, 4) for q in (0, 1920)}
    names = {name for name, _ in plan}
    assert {"prototype_scores", "sinkhorn", "assign", "sinkhorn_prior", "swapped_loss", "enqueue"} <= names
    assert all(s.queue_L == 1920 for _, s in plan)
    assert len(check.plan("both")) == len(check.plan("small")) + len(plan)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled kernels need a CUDA GPU")
def test_compiled_kernels_on_gpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.check", "--device", "cuda", "--sizes", "both"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,  # under pytest's 600 s
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
