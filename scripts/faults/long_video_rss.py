"""Peak memory (RSS) of processing one source video in data_prep.build, for a normal and a 20x longer video.

    python scripts/faults/long_video_rss.py --frames 48 --factor 20 --flow dis

Each measurement runs data_prep.build.process_video on one MPEG-4 AVI (240 x 320, the UCF101 size) in a fresh
child process and reads its ru_maxrss, so the numbers are the per-worker peak of a build. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import resource, sys, time
from pathlib import Path
from data_prep import build
from data_prep.sources import Record
src, work, flow = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
meta = build.process_video(Record(src, 0, "c", "train", src.stem), work, build.VideoSettings(128, 171, flow))
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, meta["frames"], time.perf_counter() - t0)
"""


def write_source(path: Path, frames: int) -> Path:
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    bg = rng.integers(0, 255, (240, 320 + 2 * frames, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(bg[:, 2 * i : 2 * i + 320]), format="rgb24")
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=48, help="frames of the normal video")
    ap.add_argument("--factor", type=int, default=20, help="the long video has factor x frames")
    ap.add_argument("--flow", default="dis", help="flow method (tvl1 is the papers', much slower)")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (a.frames, a.frames * a.factor):
            src = write_source(Path(tmp) / f"v{n}.avi", n)
            r = subprocess.run(
                [sys.executable, "-c", _CHILD, str(src), str(Path(tmp) / f"work{n}"), a.flow],
                capture_output=True, text=True, check=True, cwd=ROOT,
            )  # fmt: skip
            base, peak, frames, secs = r.stdout.split()
            rows.append({"frames": int(frames), "peak_rss_mib": round(int(peak) / 1024, 1),
                         "after_imports_mib": round(int(base) / 1024, 1), "seconds": round(float(secs), 1)})  # fmt: skip
    per = (rows[1]["peak_rss_mib"] - rows[0]["peak_rss_mib"]) / (rows[1]["frames"] - rows[0]["frames"])
    print(json.dumps({"flow": a.flow, "rows": rows, "mib_per_extra_frame": round(per, 3)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
