"""The sets a GPU validation reads (``validate.py make-data``, run by prepare.sh), built on the CPU machine."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from scripts.gpu.common import PY, REPO


def make_data(out: Path, tiny: bool) -> None:
    """The sets a validation reads, built here because the GPU machine has no video encoder (no PyAV):
    ``lb`` (the loader benchmark's synthetic set: 48 + 12 videos of 64 frames at 128 x 171, DIS flow),
    ``codes`` / ``ramps`` (data_prep.patterns, at 128 x 171: NVDEC refuses very small frames) and ``demo``
    (the default demo set, 64 x 64, probed on NVDEC). ``tiny``: small versions for the CPU dry run."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if tiny:
        lb = ["--classes", "2", "--train-per-class", "4", "--test-per-class", "1", "--frames", "16",
              "--height", "64", "--width", "80"]  # fmt: skip
        hw = ["--height", "48", "--width", "64"]
    else:
        lb = ["--classes", "6", "--train-per-class", "8", "--test-per-class", "2", "--frames", "64"]
        hw = ["--height", "128", "--width", "171"]
    src = out / "src_lb"
    steps = [
        [PY, "-m", "data_prep.synthetic", "--out", str(src), *lb, "--workers", "2", "--quiet"],
        [PY, "-m", "data_prep.build", "--source", "ucf101", "--root", str(src), "--out", str(out / "lb"),
         "--flow", "dis", "--no-progress", *(["--height", "64", "--width", "80"] if tiny else [])],
        [PY, "-m", "data_prep.patterns", "--kind", "codes", "--out", str(out / "codes"), *hw],
        [PY, "-m", "data_prep.patterns", "--kind", "ramps", "--out", str(out / "ramps"), "--test", "2", *hw],
    ]  # fmt: skip
    if not tiny:
        demo = ["--classes", "8", "--train-per-class", "2", "--test-per-class", "2", "--frames", "32",
                "--height", "64", "--width", "64"]  # fmt: skip
        steps += [
            [PY, "-m", "data_prep.synthetic", "--out", str(out / "src_demo"), *demo, "--workers", "2", "--quiet"],
            [PY, "-m", "data_prep.build", "--source", "ucf101", "--root", str(out / "src_demo"),
             "--out", str(out / "demo"), "--flow", "dis", "--no-progress", "--height", "64", "--width", "64"],
        ]  # fmt: skip
    built = {
        "src_lb": out / "lb",
        "src_demo": out / "demo",
    }  # a source folder is only needed to build its set
    for cmd in steps:
        target = Path(cmd[cmd.index("--out") + 1])
        if (built.get(target.name, target) / "manifest.json").is_file():
            continue  # built before (an interrupted prepare resumes)
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
    for name in built:  # sources are not needed on the GPU machine
        shutil.rmtree(out / name, ignore_errors=True)
