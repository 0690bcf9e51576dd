"""Dispatcher of the benchmarks; see the package docstring."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from vicc_fast.bench.common import BenchError, environment, write_json

# name -> module under vicc_fast.bench; each module has add_arguments(parser) and run(args) -> dict
BENCHMARKS = {
    "loader": "Input pipeline clips/s: DALI vs the PyTorch DataLoader baseline",
    "decode": "NVDEC vs CPU decoding: frame equality, RGB/flow alignment on the GPU path, frames/s",
    "augment": "The released colour jitter's DALI steps vs the one-map jitter: ms per clip, agreement",
    "kernels": "Loss head fwd+bwd time: Triton vs eager vs torch.compile",
    "flow": "Optical flow frames/s and EPE per method on the synthetic set",
    "storage": "Shard bytes per video (RGB and flow streams) at several stored sizes, same sources",
    "build": "data_prep.build and verify as a user runs them: wall and CPU seconds, frame pairs/s, rerun, bytes",
    "step": "Training step breakdown: data-wait / forward / loss / backward / optimiser",
    "scaling": "Throughput per rank with 1, 2, 4 ranks",
    "supervised": "Supervised reference on the synthetic demo set (tiny RGB model trained on labels)",
    "protoreg": "GOCA's prototype initialisation: how far apart eq. 11 leaves N prototypes in D dims",
    "demo": "The demo / method comparison over seeds as committed records (train + evaluate per seed)",
    "report": "README / comparison tables generated from the demo records (--write, --check)",
}
NOT_IN_ALL = {
    "demo",
    "report",
    "build",
}  # records of their own (build: minutes of a whole set): run on their own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vicc_fast.bench", description=__doc__)
    sub = parser.add_subparsers(
        dest="bench", required=True, metavar="{" + ",".join([*BENCHMARKS, "all"]) + "}"
    )
    modules = {}
    for name, desc in BENCHMARKS.items():
        p = sub.add_parser(name, help=desc, description=desc)
        p.add_argument("--json", default="", help="append the result to this JSON file")
        try:
            modules[name] = importlib.import_module(f"vicc_fast.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"vicc_fast.bench.{name}":
                raise
            continue  # not implemented yet
        modules[name].add_arguments(p)
    p_all = sub.add_parser("all", help="run every benchmark with its defaults")
    p_all.add_argument("--json", default="", help="append the results to this JSON file")
    args = parser.parse_args(argv)
    names = [n for n in modules if n not in NOT_IN_ALL] if args.bench == "all" else [args.bench]
    for name in names:
        if name not in modules:
            parser.error(f"benchmark '{name}' is not implemented yet")
        bargs = args if args.bench == name else sub.choices[name].parse_args([])
        try:
            result = {"benchmark": name, "env": environment(), "result": modules[name].run(bargs)}
        except input_errors() as exc:  # raised on purpose, naming the input: the message is the report
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except SystemExit as exc:  # the benchmarks' own argument checks
            if not isinstance(exc.code, str):
                raise
            print(f"error: {exc.code.removeprefix('error: ')}", file=sys.stderr)
            return 1  # SystemExit's own status for a message
        print(json.dumps(result["result"], indent=2, default=str))
        if args.json:
            write_json(args.json, result)
    return 0


def input_errors() -> tuple[type[Exception], ...]:
    """The error types the package raises on purpose about what a benchmark was given (its data, records,
    checkpoints, settings) or about a run it started; any other exception is a bug and keeps its traceback."""
    from data_prep.build import BuildError
    from data_prep.shards import ShardFormatError
    from data_prep.sources import DataSourceError
    from vicc_fast.checkpoint import CheckpointError
    from vicc_fast.config import ConfigError
    from vicc_fast.data.manifest import DataError

    return (BenchError, ConfigError, DataError, CheckpointError, BuildError, DataSourceError, ShardFormatError,
            FileNotFoundError)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
