"""The container and the local Slurm cluster for real (docs/cluster.md): short versions of
scripts/container/build_local.sh + check_image.sh and scripts/slurm/local_cluster.sh, so that they cannot rot.

Not part of the default run: they need root, podman / Slurm + munge installed, and minutes (the first image build
downloads several GB). Run them with

    VICC_CLUSTER_TESTS=1 python -m pytest -m cluster tests/scripts/test_cluster.py

Each test is skipped (with the reason) when its tools are missing. No stand-ins: real podman, real slurmctld and
slurmd, real torch.distributed (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.environ.get("VICC_CLUSTER_TESTS") != "1", reason="set VICC_CLUSTER_TESTS=1 to run"),
    pytest.mark.skipif(os.geteuid() != 0, reason="podman (runc) and the Slurm daemons run as root here"),
]


def _missing(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]


def _env() -> dict[str, str]:
    # The jobs inherit this environment: the interpreter running pytest (the project venv) comes first on PATH.
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


@pytest.mark.timeout(900)
def test_local_slurm_cluster_two_nodes_equal_torchrun(tmp_path) -> None:
    missing = _missing("munged", "slurmctld", "slurmd", "sbatch")
    if missing:
        pytest.skip(f"not installed: {missing} (Debian: apt-get install slurm-wlm munge)")
    record = tmp_path / "slurm.json"
    env = _env() | {"STATE": "/var/tmp/vicc_slurm_pytest"}  # under /var/tmp: munged must reach its socket dir
    proc = subprocess.run(
        ["bash", "scripts/slurm/local_cluster.sh", "demo", "--quick", "--record", str(record)],
        cwd=REPO, capture_output=True, text=True, timeout=840, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (check,) = json.loads(record.read_text())["checks"]
    assert check["state"] == "COMPLETED"
    assert check["step_launched_by"] == "slurmd.vicc-n1.log,slurmd.vicc-n2.log"  # one task on each node
    assert check["compare"]["equal"], check["compare"]  # same losses and weights as torchrun on one node
    # the daemons are gone
    ps = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout.splitlines()
    assert not [p for p in ps if "vicc_slurm_pytest" in p and not p.startswith("Z")], ps


@pytest.mark.timeout(1800)
def test_local_slurm_cluster_builds_in_parts_byte_identical(tmp_path) -> None:
    """build.sbatch as a 2-part array + pack on the two local nodes; one part cancelled, pack refuses, requeue."""
    missing = _missing("munged", "slurmctld", "slurmd", "sbatch")
    if missing:
        pytest.skip(f"not installed: {missing} (Debian: apt-get install slurm-wlm munge)")
    record = tmp_path / "slurm_build.json"
    env = _env() | {"STATE": "/var/tmp/vicc_slurm_pytest"}
    proc = subprocess.run(
        ["bash", "scripts/slurm/local_cluster.sh", "build-demo", "--parts", "2", "--record", str(record)],
        cwd=REPO, capture_output=True, text=True, timeout=1700, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads(record.read_text())
    assert rec["byte_identical"]["equal"] and rec["byte_identical"]["manifest_splits_equal"]
    assert (
        rec["pack_refused"]["state"] == "FAILED"
        and "Missing from part(s) 1/2" in rec["pack_refused"]["message"]
    )
    assert rec["cancelled_part"]["state_after_requeue"] == "COMPLETED" and rec["pack"]["state"] == "COMPLETED"


@pytest.mark.timeout(3600)
def test_container_builds_and_runs_as_documented(tmp_path) -> None:
    missing = _missing("podman", "runc")
    if missing:
        pytest.skip(f"not installed: {missing} (Debian: apt-get install podman runc debootstrap)")
    record = tmp_path / "build.json"
    # The layer cache makes this short after the first build (only the project layer is rebuilt).
    proc = subprocess.run(
        ["bash", "scripts/container/build_local.sh", "--record", str(record), "--no-image-tests"],
        cwd=REPO, capture_output=True, text=True, timeout=3500, env=_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rec = json.loads(record.read_text())["result"]
    assert rec["image_size_bytes"] > 0 and rec["build_s"] > 0
    assert "all checks passed" in proc.stdout
