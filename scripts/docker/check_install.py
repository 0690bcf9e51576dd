"""Build-time check of the installed (non-editable) project inside the Docker image.

Run from a folder that is NOT the source tree (otherwise ``import vicc_fast`` finds the sources, not the
install). It checks that the three packages import from site-packages, that the configuration folder the schema
looks for (``vicc_fast.config.CONFIG_DIR``) exists and the default config loads, and that torch, DALI and Triton
import. With ``--configs-from DIR`` it first copies the YAML configs there when the wheel did not ship them
(pyproject packages only Python modules; ``CONFIG_DIR`` is resolved next to the installed package).

Usage: python /path/to/check_install.py [--configs-from /opt/vicc_fast/configs]
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from pathlib import Path


def ensure_configs(src: Path) -> Path:
    """Copy ``src/*.yaml`` into the installed ``CONFIG_DIR`` when it is missing; return ``CONFIG_DIR``."""
    from vicc_fast import config

    if not config.DEFAULT_CONFIG.is_file():
        yamls = sorted(src.rglob("*.yaml"))
        if not yamls:
            raise SystemExit(f"error: no *.yaml in {src} to install as {config.CONFIG_DIR}")
        config.CONFIG_DIR.mkdir(parents=True, exist_ok=True)
        for y in yamls:
            dst = config.CONFIG_DIR / y.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(y, dst)
    return config.CONFIG_DIR


def check(source_tree: Path | None = None) -> dict[str, str]:
    """Import everything the entry point needs; return ``{module: version or location}``."""
    found: dict[str, str] = {}
    for pkg in ("vicc_fast", "kernels", "data_prep"):
        mod = importlib.import_module(pkg)
        loc = Path(mod.__file__ or "").resolve()
        if source_tree is not None and source_tree.resolve() in loc.parents:
            raise SystemExit(f"error: {pkg} imported from the source tree ({loc}), not from the install")
        found[pkg] = str(loc.parent)
    from vicc_fast import config

    if not config.DEFAULT_CONFIG.is_file():
        raise SystemExit(f"error: default config {config.DEFAULT_CONFIG} is missing from the install")
    config.load(config.DEFAULT_CONFIG)
    for mod in ("torch", "torchvision", "triton", "nvidia.dali", "webdataset", "omegaconf"):
        m = importlib.import_module(mod)
        found[mod] = getattr(m, "__version__", "?")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs-from", type=Path, default=None, help="copy YAML configs from here if missing"
    )
    parser.add_argument(
        "--source-tree", type=Path, default=None, help="fail if a package is imported from this folder"
    )
    args = parser.parse_args(argv)
    if args.configs_from is not None:
        ensure_configs(args.configs_from)
    for name, where in check(args.source_tree).items():
        print(f"{name:12s} {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
