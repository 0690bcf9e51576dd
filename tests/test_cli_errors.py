"""Every command line tool, given a bad input, prints one ``error:`` line naming it and exits non-zero, with no
traceback (training's damaged-shard case, one rank and torchrun: tests/engine/test_train_errors.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _fails_with_one_line(cmd: list[str], names: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and names in errors[0], done.stderr
    return errors[0]


def test_eval_missing_checkpoint(tmp_path):
    ckpt = tmp_path / "nope.pt"
    _fails_with_one_line(
        [sys.executable, "-m", "vicc_fast.eval", "retrieval", "--ckpt", str(ckpt)], str(ckpt)
    )


def test_bench_unreadable_record(tmp_path):
    (tmp_path / "vicc_seed0.json").write_text("{not json")
    line = _fails_with_one_line(
        [sys.executable, "-m", "vicc_fast.bench", "report", "--records", str(tmp_path),
         "--compare-records", str(tmp_path)],
        str(tmp_path / "vicc_seed0.json"),
    )  # fmt: skip
    assert "not a JSON record" in line


def test_bench_own_argument_check(tmp_path):
    """A benchmark's own check (a SystemExit message) reads as the same kind of line."""
    line = _fails_with_one_line(
        [sys.executable, "-m", "vicc_fast.bench", "loader", "--root", str(tmp_path), "--backends", "nope"],
        "nope",
    )
    assert "choose from dali, torch, jpeg_lmdb" in line


@pytest.mark.parametrize("entry", [["-m", "data_prep.build"], ["-m", "data_prep", "build"]])
def test_data_prep_build_missing_source_folder(tmp_path, entry):
    root = tmp_path / "no_ucf"
    cmd = [sys.executable, *entry, "--source", "ucf101", "--root", str(root), "--out", str(tmp_path / "o")]
    _fails_with_one_line(cmd, str(root))


def test_data_prep_verify_not_a_shard_folder(tmp_path):
    _fails_with_one_line([sys.executable, "-m", "data_prep.verify", str(tmp_path)], str(tmp_path))


def test_data_prep_verify_damaged_sample_lists_it_then_one_error_line(tmp_path):
    from data_prep.patterns import make_set

    root = make_set(tmp_path / "bad", "codes", n_train=4, n_test=1, corrupt=(2,))
    done = subprocess.run(
        [sys.executable, "-m", "data_prep.verify", str(root), "--no-progress"], capture_output=True, text=True
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "train-000000.tar train000002: RGB has" in done.stdout, done.stdout
    assert done.stderr.strip() == f"error: 2 problem(s) in {root} (one line each above)"


def test_gpu_validate_report_without_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("no markers here\n")
    _fails_with_one_line([sys.executable, "scripts/gpu/validate.py", "report", "--write", str(doc)], str(doc))
