"""Train a self-supervised video model: ``torchrun --standalone --nproc_per_node=N -m vicc_fast.train``.

With no arguments it runs the default synthetic demo (configs/synthetic_demo.yaml): it builds the synthetic shards
when they are missing, trains the whole ViCC schedule scaled down (RGB-1, Flow-1, then the cross-stream cycles),
evaluates kNN retrieval after each phase and prints the table RGB-1 / Flow-1 / RGB-2 / Flow-2 / R+F.
``python -m vicc_fast.train`` (no torchrun) runs one process.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from vicc_fast import config as C

USAGE = """\
torchrun --standalone --nproc_per_node=N -m vicc_fast.train [--config FILE ...] [key=value ...]

  --config FILE   YAML file of settings (default: configs/synthetic_demo.yaml); repeat it to layer
                  overlays in order, e.g. --config configs/synthetic_demo.yaml --config configs/compare/coclr.yaml
  key=value       override any key below, e.g. train.batch_size=16 schedule.phase=rgb1 train.amp=bf16
  -h, --help      this text

Phases: schedule.phase=all runs the whole schedule; rgb1 | flow1 | cross run one part, each starting from the
previous phase's checkpoint in train.out_dir. train.resume=auto continues the latest checkpoint of train.out_dir
exactly where it stopped.
"""


def parse_args(argv: list[str]) -> tuple[list[Path], list[str]]:
    ap = argparse.ArgumentParser(prog="vicc_fast.train", add_help=False, usage=USAGE)
    ap.add_argument("-h", "--help", action="store_true")
    ap.add_argument("--config", type=str, action="append", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.help:
        print(USAGE)
        print(C.help_text())
        sys.exit(0)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        ap.error(f"arguments must be key=value, got {bad[0]!r}")
    return [Path(c) for c in args.config] if args.config else [C.DEFAULT_CONFIG], list(args.overrides)


def ensure_data(cfg: C.Config, is_main: bool) -> None:
    """Build the synthetic shards into data.root when its manifest is missing (rank 0; the others wait)."""
    from vicc_fast.engine.distributed import barrier

    manifest = Path(cfg.data.root) / "manifest.json"
    if not manifest.is_file():
        if not cfg.data.build_if_missing:
            raise FileNotFoundError(
                f"{manifest} not found: build shards with `python -m data_prep ...` or set data.build_if_missing=true"
            )
        if is_main:
            from data_prep.build import build_synthetic

            print(f"building the synthetic data set into {cfg.data.root} ...", flush=True)
            build_synthetic(cfg.data.root, cfg.data.synthetic, workers=os.cpu_count() or 1, progress=True)
    barrier()
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} is still missing after the synthetic build")


def install_stop_handlers(trainer) -> None:  # noqa: ANN001  (engine.trainer.Trainer, imported lazily)
    """SIGTERM/SIGUSR1 (preemption) and a first Ctrl-C: checkpoint after the current step, then exit with code 3.
    A second Ctrl-C aborts at once."""

    def handler(signum: int, frame: object) -> None:
        if signum == signal.SIGINT and trainer.stop_requested:
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            print(
                "\nstopping after this step (a checkpoint is written); Ctrl-C again aborts", file=sys.stderr
            )
        trainer.request_stop()

    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = C.load(path, overrides)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        from vicc_fast.engine.distributed import resolve_device
        from vicc_fast.engine.trainer import validate_training

        validate_training(
            cfg, world, resolve_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0")))
        )
    except (C.ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    from vicc_fast.engine import distributed as D
    from vicc_fast.engine.checkpoint import CheckpointError
    from vicc_fast.engine.trainer import (
        NonFiniteLossError,
        ResumeError,
        Trainer,
        TrainingStopped,
        results_table,
        select_phases,
    )
    from vicc_fast.methods import build_method

    info = D.init_distributed(cfg.train.device)
    try:
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank (DDP also broadcasts them)
        method = build_method(cfg)  # before the data: a bad model/method setting fails without work done
        if not select_phases(method.phases(), cfg.schedule.phase):
            raise C.ConfigError(
                f"config key 'schedule.phase': no phase '{cfg.schedule.phase.value}' in this method"
            )
        ensure_data(cfg, info.is_main)
        trainer = Trainer(cfg, method, info)
        install_stop_handlers(trainer)
        if info.is_main:
            Path(cfg.train.out_dir).mkdir(parents=True, exist_ok=True)
            from vicc_fast import atomic

            atomic.write_text(Path(cfg.train.out_dir) / "config.yaml", C.to_yaml(cfg))
        results = trainer.run()
        if info.is_main:
            order = select_phases(method.phases(), C.Phase.all)
            print("\n" + results_table(results, order), flush=True)
            print(f"wall time {time.perf_counter() - t_start:.0f} s (this invocation)", flush=True)
        return 0
    except TrainingStopped as exc:
        print(str(exc), file=sys.stderr)
        return 3
    except (NonFiniteLossError, ResumeError, CheckpointError, C.ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        D.shutdown()


if __name__ == "__main__":
    sys.exit(main())
