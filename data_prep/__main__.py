"""``python -m data_prep {build,verify,synthetic} ...``: one entry point for the data-preparation tools."""

from __future__ import annotations

import sys

COMMANDS = {
    "build": "videos -> flow -> WebDataset shards (python -m data_prep.build --help)",
    "verify": "check a shard folder against its manifest (python -m data_prep.verify --help)",
    "synthetic": "write the built-in synthetic action set (python -m data_prep.synthetic --help)",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m data_prep {build,verify,synthetic} [args]\n", file=sys.stderr)
        for name, what in COMMANDS.items():
            print(f"  {name:10s} {what}", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "build":
        from data_prep.build import main as run
    elif cmd == "verify":
        from data_prep.verify import main as run
    else:
        from data_prep.synthetic import main as run
    sys.argv = [f"python -m data_prep {cmd}", *rest]
    result = run(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
