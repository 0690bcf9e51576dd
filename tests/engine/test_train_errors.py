"""A run stopped by an error raised on purpose prints it as one ``error:`` line with the way on, and exits
non-zero: no traceback, also under torchrun, whose failure summary names the same line as its root cause.
The case a new user meets first: one damaged video member in a shard."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from data_prep.patterns import make_set

TINY = ["data.num_frames=4", "data.crop_size=16", "data.threads=1", "data.eval.clips=1", "model.backbone=tiny",
        "model.tiny_width=4", "model.proj_hidden=16", "model.proj_dim=8", "model.num_prototypes=6",
        "method.swav.queue_size=0", "schedule.single_epochs=1", "schedule.phase=rgb1", "train.batch_size=2",
        "train.amp=off", "train.progress=false", "eval.after_phase=false", "train.device=cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """Shards whose sample train000002 has a truncated RGB video (its .json promises 24 frames)."""
    return make_set(tmp_path_factory.mktemp("damaged"), "codes", n_train=4, n_test=2, corrupt=(2,))


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _expected_line(root) -> str:
    return f"error: bad sample 'train000002' in shard {root}/train-000000.tar: rgb.webm "


def test_damaged_sample_is_one_error_line_with_the_way_on(damaged, tmp_path):
    done = _run([sys.executable, "-m", "vicc_fast.train", f"data.root={damaged}", *TINY,
                 f"train.out_dir={tmp_path / 'run'}"])  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(_expected_line(damaged)), errors
    assert "data.on_bad_sample=skip" in errors[0] and f"python -m data_prep.verify {damaged}" in errors[0]


def test_damaged_sample_under_torchrun_is_the_root_cause(damaged, tmp_path):
    done = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                 "-m", "vicc_fast.train", f"data.root={damaged}", *TINY, f"train.out_dir={tmp_path / 'run'}"])  # fmt: skip
    assert done.returncode != 0
    out = done.stderr
    assert "vicc_fast/" not in out, out  # the only traceback is the launcher's own (ChildFailedError)
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(_expected_line(damaged)), out
    assert f"traceback : {errors[0]}" in out, out  # torchrun's summary shows the line, not a docs link
