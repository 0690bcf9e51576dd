"""Two gloo ranks under torchrun, one SIGKILLed mid-training: how long until everything has exited, and does
the output name the lost rank? Also samples the surviving rank's RSS and open file descriptors (--long: a long
run with the RSS/fd curve over many epochs, the loader rebuilt per epoch).

    python scripts/faults/kill_rank.py --work /tmp/kill_rank                 # kill rank 1, report
    python scripts/faults/kill_rank.py --work /tmp/kill_rank --long 120      # no kill: 120 s, RSS/fd over time

Uses the tiny synthetic shards that kill_resume.py builds (made on first use). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kill_resume as kr  # noqa: E402  (the same tiny model and shards)

ARGS = [a for a in kr.TINY if not a.startswith(("train.ckpt_every_steps", "train.batch_size"))]


def _proc(pid: int) -> tuple[float, int] | None:
    """(RSS MiB, open fds) of a live process, None once it is gone."""
    try:
        rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1]) / 1024
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/kill_rank"), help="scratch folder")
    ap.add_argument("--long", type=float, default=0, help="no kill: train this many seconds, sample RSS/fds")
    ap.add_argument("--backend", default="torch", help="data.backend of the run (dali | torch)")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    _, shards = kr.make_sources(a.work)
    out = a.work / "run"
    shutil.rmtree(out, ignore_errors=True)
    log_path = a.work / "torchrun.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "vicc_fast.train", f"data.root={shards}", f"train.out_dir={out}", *ARGS, "train.batch_size=2",
           f"data.backend={a.backend}", "schedule.single_epochs=100000", "schedule.phase=rgb1",
           "train.ckpt_every_steps=50"]  # fmt: skip
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=kr.ENV, cwd=kr.ROOT)
        t0 = time.monotonic()
        while not (out / "metrics.jsonl").is_file() and time.monotonic() - t0 < 300 and p.poll() is None:
            time.sleep(0.2)
        kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        rank = {}
        for k in kids:
            env = Path(f"/proc/{k}/environ").read_text().split("\0")
            r = next((e.split("=")[1] for e in env if e.startswith("RANK=")), None)
            rank[int(r)] = int(k)
        report: dict = {"workers": rank}
        if a.long:
            samples = []
            t1 = time.monotonic()
            while time.monotonic() - t1 < a.long and p.poll() is None:
                s = _proc(rank[0])
                if s:
                    samples.append(
                        {"t_s": round(time.monotonic() - t1, 1), "rss_mib": round(s[0], 1), "fds": s[1]}
                    )
                time.sleep(2)
            steps = len((out / "metrics.jsonl").read_text().splitlines())
            p.send_signal(signal.SIGTERM)  # the run checkpoints and stops
            p.wait(timeout=120)
            tail = samples[len(samples) // 5 :]  # after warm-up
            spe = 2  # 8 training videos, 2 ranks, 2 per rank and step
            report.update(steps=steps, epochs=steps // spe, samples=samples[:: max(1, len(samples) // 20)],
                          rss_growth_after_warmup_mib=round(tail[-1]["rss_mib"] - tail[0]["rss_mib"], 1),
                          rss_max_mib=max(s["rss_mib"] for s in samples),
                          fds_min_max=[min(s["fds"] for s in tail), max(s["fds"] for s in tail)])  # fmt: skip
        else:
            time.sleep(1.0)
            t_kill = time.monotonic()
            os.kill(rank[1], signal.SIGKILL)
            rc = p.wait(timeout=600)
            gone0 = _proc(rank[0]) is None
            text = log_path.read_text()
            report.update(
                launcher_rc=rc,
                kill_to_launcher_exit_s=round(time.monotonic() - t_kill, 1),
                rank0_exited=gone0,
                names_lost_rank=bool(
                    re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*-9", text)
                ),
            )
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
