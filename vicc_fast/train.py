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
from typing import TYPE_CHECKING

from vicc_fast import config as C

if TYPE_CHECKING:  # imported lazily at run time: `--help` and config errors must not pay for torch
    from vicc_fast.engine.distributed import DistInfo
    from vicc_fast.engine.runlock import RunLock

USAGE = """\
torchrun --standalone --nproc_per_node=N -m vicc_fast.train [--config FILE ...] [key=value ...]

  --config FILE   YAML file of settings (default: configs/synthetic_demo.yaml); repeat it to layer
                  overlays in order, e.g. --config configs/synthetic_demo.yaml --config configs/compare/coclr.yaml
  key=value       override any key below, e.g. train.batch_size=16 schedule.phase=rgb1 train.amp=bf16
  -h, --help      this text

Phases: schedule.phase=all runs the whole schedule; rgb1 | flow1 | cross run one part, each starting from the
previous phase's checkpoint in train.out_dir. train.resume=auto continues the latest checkpoint of train.out_dir
exactly where it stopped (a damaged one is reported and the newest good one used).

Exit codes: 0 done, 1 error, 2 bad settings, 3 stopped on request (SIGTERM/SIGUSR1/Ctrl-C, or the torchrun
launcher gone: a checkpoint was written; rerun to resume), 4 the run folder is locked by another live run,
5 another rank was lost (the message names it).
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
    from vicc_fast.data.manifest import check_recipe, load_manifest

    # the paper configs (data.require_recipe=released) refuse data built another way before any model is built
    check_recipe(load_manifest(cfg.data.root), cfg.data.require_recipe.value)


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


def fail(message: str) -> None:
    """Print an error the run stopped on as one ``error:`` line on stderr. Under torchrun also write it to the
    worker's error file (``TORCHELASTIC_ERROR_FILE``): the launcher's failure summary, printed after it, then
    shows this line as its root cause instead of a link to its docs."""
    line = f"error: {message}"
    print(line, file=sys.stderr, flush=True)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:  # read by the launcher once this process has exited: no partial file to fear
        import contextlib
        import json

        with contextlib.suppress(OSError):  # the line is printed; the launcher's summary just stays generic
            info = {"py_callstack": line, "timestamp": str(int(time.time()))}  # shown as the root cause
            Path(path).write_text(json.dumps({"message": {"message": line, "extraInfo": info}}))


def way_on(exc: Exception) -> str:
    """The message of an input error, with what the user can do next when the message does not say it."""
    from vicc_fast.data.manifest import BadSampleError

    msg = str(exc)
    if isinstance(exc, BadSampleError) and "on_bad_sample=skip" not in msg:
        root = Path(exc.shard).parent
        msg += (
            f"; to train without such samples set data.on_bad_sample=skip, to list every damaged sample run "
            f"`python -m data_prep.verify {root}`"
        )
    return msg


def _lock_run_folder(lock: RunLock, info: DistInfo) -> None:
    """Rank 0 locks train.out_dir (engine.runlock); every rank learns whether it could, so a refused run
    exits on all ranks instead of leaving the others waiting at the next collective."""
    from vicc_fast.engine.runlock import RunLockError

    err = None
    if info.is_main:
        try:
            lock.acquire(lambda m: print(m, file=sys.stderr, flush=True))
        except RunLockError as exc:
            err = exc
    if info.distributed:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([float(err is not None)], device=info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and err is None:
            err = RunLockError(f"rank 0 could not lock run folder {lock.out_dir} (see its message)")
    if err is not None:
        raise err


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
        fail(str(exc))
        return 2

    import torch

    from vicc_fast.checkpoint import CheckpointError
    from vicc_fast.data.manifest import DataError
    from vicc_fast.engine import distributed as D
    from vicc_fast.engine.heartbeat import Heartbeat
    from vicc_fast.engine.runlock import LauncherWatch, RunLock, RunLockError, launched_by_torchrun
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
    lock = RunLock(cfg.train.out_dir)
    watch = None
    beat = Heartbeat(info.rank, info.world_size).start() if info.distributed else None
    try:
        _lock_run_folder(lock, info)
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank (DDP also broadcasts them)
        method = build_method(cfg)  # before the data: a bad model/method setting fails without work done
        select_phases(method.phases(), cfg.schedule.phase)  # a phase the method lacks, before the data too
        ensure_data(cfg, info.is_main)
        trainer = Trainer(cfg, method, info)
        install_stop_handlers(trainer)
        if launched_by_torchrun() and cfg.train.launcher_check_s > 0:

            def launcher_gone(msg: str) -> None:
                print(f"rank {info.rank}: {msg}", file=sys.stderr, flush=True)
                trainer.request_stop()

            watch = LauncherWatch(launcher_gone, cfg.train.launcher_check_s).start()
        if info.is_main:
            Path(cfg.train.out_dir).mkdir(parents=True, exist_ok=True)
            from vicc_fast import atomic

            atomic.write_text(Path(cfg.train.out_dir) / "config.yaml", C.to_yaml(cfg))
        results = trainer.run()
        if info.is_main:
            print("\n" + results_table(results, method), flush=True)
            print(f"wall time {time.perf_counter() - t_start:.0f} s (this invocation)", flush=True)
        return 0
    except TrainingStopped as exc:
        print(str(exc), file=sys.stderr)
        return 3
    except (
        NonFiniteLossError,
        ResumeError,
        CheckpointError,
        C.ConfigError,
        DataError,
        FileNotFoundError,
    ) as exc:
        fail(way_on(exc))  # the errors raised on purpose: their message names the file, no traceback needed
        return 1
    except RunLockError as exc:
        fail(str(exc))
        return 4
    except Exception as exc:
        # a failed collective names a socket, not a rank: say which rank is gone (heartbeats), then stop
        lost = beat.lost() if beat is not None else None
        if lost is None:
            raise
        from vicc_fast.checkpoint import latest_path

        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        fail(
            f"rank {info.rank}: lost {lost}: its process died or its node went away ({first}); "
            f"the checkpoint {latest_path(cfg.train.out_dir)} is intact: resume with train.resume=auto once "
            "every rank runs again"
        )
        return 5
    finally:
        if beat is not None:
            beat.stop()
        if watch is not None:
            watch.stop()
        lock.release()
        D.shutdown()


if __name__ == "__main__":
    sys.exit(main())
