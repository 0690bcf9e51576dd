"""Shard storage per video at several stored sizes (bytes, not time: unaffected by CPU load).

The same synthetic source videos (``--source-size``, 240x320 by default: UCF101's 320x240) are built into
shards by ``data_prep.build`` at every ``--sizes`` entry and every ``--flow-at`` recipe; the record gives per
video the VP9 RGB and flow stream bytes (from the build's per-video meta) and the tar shard bytes (the streams
plus the label, the per-sample JSON, tar headers and the tar's padding to 10 KiB records: meaningless for tiny
videos), and each size's ratios to the first row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from vicc_fast.bench.common import BenchError
from vicc_fast.config import FlowMethod, SyntheticConfig


def parse_size(text: str) -> tuple[int, int]:
    """'240x320' -> (240, 320) (height x width); raises ValueError naming the text."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {text!r} is not HEIGHTxWIDTH (e.g. 128x171)") from None
    if h < 16 or w < 16:
        raise ValueError(f"size {text!r}: height and width must be >= 16")
    return h, w


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sizes", default="128x171,240x320", help="comma-separated stored sizes HEIGHTxWIDTH to compare"
    )
    p.add_argument(
        "--source-size",
        default="240x320",
        help="HEIGHTxWIDTH of the synthetic source videos (UCF101: 240x320)",
    )
    p.add_argument(
        "--classes", type=int, default=6, help="synthetic classes; one train and one test video each"
    )
    p.add_argument("--frames", type=int, default=48, help="frames per video")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic set")
    p.add_argument(
        "--flow",
        default=FlowMethod.dis.value,
        choices=[m.value for m in FlowMethod],
        help="flow method of the builds (dis: fast; tvl1: the papers')",
    )
    p.add_argument(
        "--flow-at",
        default="stored",
        help="comma-separated recipes of data_prep.build --flow-at (stored, source); a size equal to the source "
        "size is built once (both recipes give the same flow there)",
    )
    p.add_argument("--workers", type=int, default=1, help="build processes")
    p.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "vicc_fast_bench_storage"),
        help="where the synthetic sources and the shard folders are written (reused when settings match)",
    )


def _per_video(out: Path) -> dict[str, Any]:
    """Bytes per video of one built shard folder: mean RGB / flow stream bytes and tar bytes."""
    from data_prep import build, shards

    manifest = shards.load_manifest(out)
    metas = [json.loads(p.read_text()) for p in sorted((out / build.WORK_DIR).glob("*/meta.json"))]
    tars = [s["tar"] for split in manifest["splits"].values() for s in split["shards"]]
    videos = sum(split["num_samples"] for split in manifest["splits"].values())
    if len(metas) != videos:
        raise BenchError(f"{out}: {len(metas)} cached videos but {videos} in the manifest (a stale folder?)")
    rgb = statistics.mean(m["rgb_bytes"] for m in metas)
    fl = statistics.mean(m["flow_bytes"] for m in metas)
    return {
        "videos": videos,
        "frames_per_video": statistics.mean(m["frames"] for m in metas),
        "rgb_bytes_per_video": round(rgb),
        "flow_bytes_per_video": round(fl),
        "rgb_plus_flow_bytes_per_video": round(rgb + fl),
        "shard_bytes_per_video": round(sum((out / t).stat().st_size for t in tars) / videos),
    }


def _versions() -> dict[str, Any]:
    """PyAV, its FFmpeg libraries and OpenCV, which together decide the stored bytes."""
    import av
    import cv2

    libs = {k: ".".join(map(str, v)) for k, v in getattr(av, "library_versions", {}).items()}
    return {"av": av.__version__, "ffmpeg_libraries": libs, "opencv": cv2.__version__}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from data_prep import build, codec, synthetic
    from data_prep.sources import Source, load_records

    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    src_h, src_w = parse_size(args.source_size)
    recipes = [r.strip() for r in args.flow_at.split(",") if r.strip()]
    for r in recipes:
        build.FlowAt(r)  # ValueError naming a bad recipe before any work
    cfg = SyntheticConfig(
        num_classes=args.classes,
        train_per_class=1,
        test_per_class=1,
        frames=args.frames,
        height=src_h,
        width=src_w,
        seed=args.seed,
    )
    work = Path(args.workdir)
    src = synthetic.generate(
        work / f"source_{args.classes}c_{args.frames}f_{src_h}x{src_w}_s{args.seed}",
        cfg,
        workers=args.workers,
        progress=False,
        overwrite=True,
    )
    records = load_records(Source.ucf101, src, 1)
    rows: list[dict[str, Any]] = []
    for h, w in sizes:
        for recipe in recipes:
            if recipe == build.FlowAt.source.value and (h, w) == (src_h, src_w) and "stored" in recipes:
                continue  # same flow as stored at this size: built once
            out = work / f"shards_{h}x{w}_{args.flow}_{recipe}_{src.name}"
            build.build(
                records,
                out,
                flow_method=args.flow,
                height=h,
                width=w,
                workers=args.workers,
                progress=False,
                log=lambda *_: None,
                flow_at=recipe,
            )
            row = {"size": [h, w], "flow_at": recipe, **_per_video(out)}
            print(f"{h}x{w} flow at {recipe}: {row['shard_bytes_per_video']} bytes/video", file=sys.stderr)
            rows.append(row)
    base = rows[0]
    for row in rows:
        for k in ("rgb_bytes_per_video", "flow_bytes_per_video", "rgb_plus_flow_bytes_per_video"):
            row[k.replace("_per_video", "_over_first")] = round(row[k] / base[k], 3)
        row["shard_bytes_over_first"] = round(row["shard_bytes_per_video"] / base["shard_bytes_per_video"], 3)
        row["pixels_over_first"] = round(
            row["size"][0] * row["size"][1] / (base["size"][0] * base["size"][1]), 3
        )
    return {
        "command": "python -m vicc_fast.bench " + " ".join(sys.argv[1:]),
        "source": {
            "kind": "synthetic",
            "size": [src_h, src_w],
            "frames": args.frames,
            "videos": len(records),
        },
        "flow_method": args.flow,
        "codec": {"rgb_crf": codec.RGB_CRF, "flow_crf": codec.FLOW_CRF, "gop": codec.GOP},
        "versions": _versions(),  # the bytes depend on the encoder (libvpx via PyAV) and OpenCV's flow
        "rows": rows,
    }
