"""What a run shows and records: a progress bar on rank 0, TensorBoard scalars, NVTX ranges and profiler windows.

Values reach the host only every ``train.log_every_steps`` steps (one sync then), never per step.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from vicc_fast.config import ProfileConfig


@contextlib.contextmanager
def nvtx_range(name: str, enabled: bool) -> Iterator[None]:
    """When enabled: an NVTX range (Nsight Systems / Compute, CUDA present) and the same name as a
    torch.profiler range (``record_function``), because torch.profiler traces do not record NVTX ranges; the
    trace then shows the step's parts on the CPU and, as ``gpu_user_annotation``, on the GPU timeline."""
    if not enabled:
        yield
        return
    cuda = torch.cuda.is_available()
    with torch.profiler.record_function(name):
        if cuda:
            torch.cuda.nvtx.range_push(name)
        try:
            yield
        finally:
            if cuda:
                torch.cuda.nvtx.range_pop()


class Profiler:
    """``profile.steps = [start, stop]`` brackets run-wide steps start..stop-1 by cudaProfilerStart/Stop (for
    ``nsys --capture-range=cudaProfilerApi``) and, when ``profile.torch_trace`` is set, a torch.profiler trace
    written there as a Chrome trace."""

    def __init__(self, cfg: ProfileConfig, rank: int) -> None:
        self.cfg = cfg
        self.rank = rank
        self.window = tuple(cfg.steps) if cfg.steps else None
        self._torch_prof: torch.profiler.profile | None = None
        self._cuda_on = False

    def step(self, run_step: int) -> None:
        """Call at the start of every step with the run-wide step counter."""
        if self.window is None:
            return
        start, stop = self.window
        if run_step == start:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.profiler.start()
                self._cuda_on = True
            if self.cfg.torch_trace:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                self._torch_prof = torch.profiler.profile(activities=acts, record_shapes=True)
                self._torch_prof.__enter__()
        elif run_step == stop:
            self.close()

    def close(self) -> None:
        if self._cuda_on:
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            self._cuda_on = False
        if self._torch_prof is not None:
            self._torch_prof.__exit__(None, None, None)
            out = Path(self.cfg.torch_trace)
            out.mkdir(parents=True, exist_ok=True)
            self._torch_prof.export_chrome_trace(str(out / f"trace_rank{self.rank}.json"))
            self._torch_prof = None


class Meter:
    """Host-side timing of the steps between two log points: clips/s and the share of time spent waiting for data."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0 = time.perf_counter()
        self.wait = 0.0
        self.clips = 0

    def add(self, wait_s: float, clips: int) -> None:
        self.wait += wait_s
        self.clips += clips

    def read(self) -> tuple[float, float]:
        """(clips per second, data-wait percent) since the last reset."""
        dt = max(time.perf_counter() - self.t0, 1e-9)
        return self.clips / dt, 100.0 * self.wait / dt


class RunLogger:
    """tqdm bar (rank 0, when ``progress``), TensorBoard scalars under ``out_dir/tb`` and the same scalars as
    one JSON line per log step in ``out_dir/metrics.jsonl`` (rank 0; readable without TensorBoard, and complete
    up to the last log step when a run is killed)."""

    def __init__(self, out_dir: str | Path, rank: int, progress: bool, tensorboard: bool = True) -> None:
        self.rank = rank
        self.progress = progress and rank == 0
        self.bar = None
        self.writer = None
        self.metrics_path = Path(out_dir) / "metrics.jsonl" if rank == 0 else None
        if rank == 0 and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tb"))
            except ImportError:  # tensorboard is a declared dependency; a stripped install still trains
                self.writer = None

    def start_phase(self, name: str, total: int, initial: int) -> None:
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=name, dynamic_ncols=True, leave=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def scalars(self, phase: str, values: dict[str, float], run_step: int, postfix: dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{phase}/{k}", v, run_step)
        if self.metrics_path is not None:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"phase": phase, "step": run_step, "time": time.time(), **values})
            with open(self.metrics_path, "a") as f:  # appended and flushed per log step: a kill loses no line
                f.write(line + "\n")

    def write(self, msg: str) -> None:
        if self.rank != 0:
            return
        if self.bar is not None:
            self.bar.write(msg)
        else:
            print(msg, flush=True)

    def end_phase(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.end_phase()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
