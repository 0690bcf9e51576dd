"""Print the runtime requirements of pyproject.toml, one per line, for the Docker image's dependency layer.

The image installs exactly ``[project].dependencies`` (so its pins cannot drift from pyproject) before it copies
the source, so that the multi-GB torch/DALI layer is cached across source edits. The one change allowed is the
DALI CUDA variant (``--dali-cuda cuda130`` turns ``nvidia-dali-cuda120==V`` into ``nvidia-dali-cuda130==V``,
keeping the version pin), because torch's and DALI's CUDA builds are chosen independently.

Usage: python scripts/docker/pyproject_requirements.py [--pyproject FILE] [--dali-cuda VARIANT]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib

DALI_RE = re.compile(r"^nvidia-dali-(cuda\d+)\b")


def dali_variant(deps: list[str]) -> str:
    """The CUDA variant (e.g. ``cuda120``) of the one DALI requirement in ``deps``."""
    found = [m.group(1) for d in deps if (m := DALI_RE.match(d.strip()))]
    if len(found) != 1:
        raise ValueError(f"expected exactly one nvidia-dali-cudaXXX requirement, found {found}")
    return found[0]


def requirements(pyproject: Path, dali_cuda: str | None = None) -> list[str]:
    """``[project].dependencies`` of ``pyproject``, with the DALI variant swapped to ``dali_cuda`` if given."""
    deps: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    if dali_cuda is None:
        return list(deps)
    if not re.fullmatch(r"cuda\d+", dali_cuda):
        raise ValueError(f"--dali-cuda must look like cuda120 or cuda130, got {dali_cuda!r}")
    return [DALI_RE.sub(f"nvidia-dali-{dali_cuda}", d.strip()) for d in deps]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pyproject", type=Path, default=Path("pyproject.toml"), help="the pyproject.toml to read"
    )
    parser.add_argument(
        "--dali-cuda",
        default=None,
        help="DALI CUDA variant to install instead of the one pinned in pyproject (e.g. cuda130); "
        "default: the pinned one",
    )
    args = parser.parse_args(argv)
    try:
        print("\n".join(requirements(args.pyproject, args.dali_cuda)))
    except (OSError, KeyError, ValueError) as exc:
        print(f"error: {args.pyproject}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
