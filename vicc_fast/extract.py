"""``python -m vicc_fast.extract --ckpt RUN|FILE (--videos DIR | --shards DIR) --out FILE.npz``: features of a
trained encoder for any folder of videos, or for a shard set, in a file other tools read.

- the encoder: a checkpoint file, a run folder (``--phase``: RUN/checkpoints/<phase>.pt; default last.pt), a
  released ViCC/CoCLR file (with ``--stream``) or an exported ``.safetensors`` (``python -m vicc_fast.export``);
- the videos: ``--videos DIR`` (every video file under DIR, any depth) is built into shards first by
  ``data_prep.build`` under ``<out>.work/``: decode, resize, optical flow computed on the fly (``--flow``, a
  data_prep flow method), bad videos stopped on or, with ``--skip-bad``, rejected and listed as the build
  reports them; the build caches every video, so an interrupted run over a large folder resumes where it
  stopped. ``--shards DIR --split S`` reads an existing shard set (its stored flow);
- the clips: the evaluation loader (DALI on the GPU or the CPU, as ``data.loader``/``data.data_device`` say) reads
  ``--clips`` evenly spaced windows per video (``--windows``) at the encoder's clip shape, centre crop (``--crop``);
- the features: the encoder's output, i.e. the backbone's last layer globally average pooled over T, H, W
  (before the projection head); ``--level clip`` one row per clip, ``--level video`` the mean of a video's
  clip rows; ``--l2-clip`` normalises each clip row first (the released retrieval), ``--l2`` the output rows;
- the output: ``.npz`` with ``features`` [N, F] float32, ``video_ids`` [N] (str), ``clip_index`` [N] (clip
  level), ``labels`` [N] (shard sets), ``meta`` (JSON: encoder, layer, pooling, normalisation, clips, crop,
  flow method, rejected and left-out videos). A rerun with an up-to-date output does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vicc_fast import config as C

LAYER = "encoder output: the backbone's last layer, globally average pooled over T, H, W (no projection head)"


class ExtractError(ValueError):
    """Unusable extraction input; the message names the file or flag."""


def shard_video_ids(root: Path, split: str) -> dict[int, str]:
    """Split index -> video id, from the ``.json`` members of a shard set's split (no decoding)."""
    from vicc_fast.data.manifest import load_manifest

    m = load_manifest(root)
    if split not in m.splits:
        raise ExtractError(f"{root}/manifest.json has no '{split}' split (it has {sorted(m.splits)})")
    ids: dict[int, str] = {}
    for shard in m.splits[split].shards:
        try:
            with tarfile.open(shard.tar, "r:") as tf:
                for member in tf:
                    if member.isreg() and member.name.endswith(".json"):
                        f = tf.extractfile(member)
                        meta = json.loads(f.read() if f is not None else b"{}")
                        ids[int(meta["index"])] = str(meta["video_id"])
        except (tarfile.TarError, OSError, ValueError, KeyError) as exc:
            raise ExtractError(f"{shard.tar}: unreadable shard metadata ({exc})") from None
    return ids


def build_videos(
    videos: Path, work: Path, flow: str, height: int, width: int, skip_bad: bool, workers: int, progress: bool
) -> tuple[Path, list[dict[str, str]]]:
    """Shards of every video under ``videos`` (one ``train`` split) in ``work``; cached per video, so a rerun
    resumes. Returns (shard root, rejected videos with reasons, as the build reports them)."""
    from data_prep.build import BuildError, build
    from data_prep.sources import DataSourceError, load_any

    try:
        records = load_any(videos, skip_bad=skip_bad)
        report = build(records, work, flow_method=flow, height=height, width=width, skip_bad=skip_bad,
                       workers=workers, progress=progress, log=lambda m: print(m, file=sys.stderr))  # fmt: skip
    except (BuildError, DataSourceError) as exc:
        raise ExtractError(str(exc)) from None
    return work, list(report.rejected)


def _settings_digest(meta: dict[str, Any]) -> str:
    keep = {k: v for k, v in meta.items() if k not in ("seconds", "written")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def up_to_date(out: Path, digest: str) -> bool:
    if not out.is_file():
        return False
    try:
        with np.load(out, allow_pickle=False) as z:
            return json.loads(str(z["meta"])).get("digest") == digest
    except (OSError, ValueError, KeyError):
        return False


def write_npz(out: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """All arrays and the JSON metadata in one .npz, written atomically (temp file, rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(tmp, **arrays, meta=np.array(json.dumps(meta, sort_keys=True)))
    tmp.replace(out)


def extract_features(args: argparse.Namespace) -> Path:
    from vicc_fast.data.loader import build_loader
    from vicc_fast.eval.features import clip_features, extract, left_out
    from vicc_fast.eval.inputs import apply_overrides
    from vicc_fast.eval.runner import pick_device
    from vicc_fast.export import resolve_encoder

    out = Path(args.out)
    if out.suffix != ".npz":
        raise ExtractError(f"--out {out}: the output must be a .npz file")
    if args.clips < 1:
        raise ExtractError(f"--clips must be >= 1, got {args.clips}")
    encoder, cfg, stream, source = resolve_encoder(args.ckpt, args.phase, args.stream)
    rejected: list[dict[str, str]] = []
    if args.videos:
        root, rejected = build_videos(Path(args.videos), Path(f"{out}.work"), args.flow, args.height,
                                      args.width, args.skip_bad, args.workers, not args.no_progress)  # fmt: skip
        split = "train"
    else:
        root, split = Path(args.shards), args.split
    data = [f"data.root={root}", f"data.eval.windows={args.windows}", f"data.eval.clips={args.clips}",
            f"data.eval.crop={args.crop}"]  # fmt: skip
    cfg = apply_overrides(cfg, [*data, "data.eval.color_jitter_prob=0", *args.overrides])
    ids = shard_video_ids(root, split)
    meta: dict[str, Any] = {
        "encoder": source, "stream": stream.value, "layer": LAYER, "feature_dim": int(encoder.feature_dim),
        "level": args.level, "pooling": "clip: global average over T, H, W" + (
            "; video: mean of its clip rows" if args.level == "video" else ""),
        "l2_clip": args.l2_clip, "l2": args.l2, "windows": args.windows,
        "clips_per_video": args.clips if args.windows != "overlap" else "every window (grows with the length)",
        "clip": {"num_frames": cfg.data.num_frames, "stride": cfg.data.stride, "crop_size": cfg.data.crop_size,
                 "crop": args.crop},
        "input": {"videos": str(args.videos) if args.videos else None, "shards": str(root), "split": split,
                  "num_videos": len(ids), "flow_method": args.flow if args.videos else "as stored"},
        "rejected": rejected,
    }  # fmt: skip
    meta["digest"] = _settings_digest(meta)
    if up_to_date(out, meta["digest"]) and not args.force:
        print(f"{out} is up to date (same encoder, videos and settings); --force recomputes it")
        return out
    device = pick_device(args.device)
    encoder = encoder.to(device)
    loader = build_loader(cfg, split, "eval", (stream,), 1, 0, 1, device)
    amp, progress = cfg.train.amp, not args.no_progress
    t0 = time.perf_counter()
    if args.level == "video":
        feats, labels, index = extract(
            encoder, loader, device, stream, amp, progress, "extract", args.l2_clip
        )
        arrays = {"clip_index": None}
    else:
        n = len(ids)
        parts = list(
            clip_features(encoder, loader, device, n, stream, amp, progress, "extract", args.l2_clip)
        )
        if not parts:
            raise ExtractError(f"{root}: the loader yielded no clips")
        index = torch.cat([p[0] for p in parts]).cpu()
        labels = torch.cat([p[1] for p in parts]).cpu()
        feats = torch.cat([p[2] for p in parts]).cpu()
        order = torch.argsort(index, stable=True)
        index, labels, feats = index[order], labels[order], feats[order]
        first = torch.searchsorted(index, index)  # position of each video's first clip
        arrays = {"clip_index": (torch.arange(len(index)) - first).numpy().astype(np.int64)}
    skipped = left_out(loader, len(ids)).nonzero().flatten().tolist()
    meta["left_out"] = [ids.get(i, str(i)) for i in skipped]  # data.on_bad_sample=skip: failed to load
    if args.l2:
        feats = torch.nn.functional.normalize(feats.float(), dim=1)
    arrays.update(
        features=feats.float().numpy(),
        video_ids=np.array([ids.get(int(i), str(int(i))) for i in index]),
        video_index=index.numpy().astype(np.int64),
        labels=labels.numpy().astype(np.int64),
    )
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    write_npz(out, {k: v for k, v in arrays.items() if v is not None}, meta)
    print(f"wrote {out}: {feats.shape[0]} x {feats.shape[1]} {args.level} features of {len(set(index.tolist()))} "
          f"videos ({len(rejected)} rejected, {len(skipped)} left out)")  # fmt: skip
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m vicc_fast.extract", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--ckpt", required=True, help="checkpoint file, run folder, released .pth.tar or exported "
                    ".safetensors: the encoder")  # fmt: skip
    ap.add_argument(
        "--phase", default=None, help="run folder only: RUN/checkpoints/<phase>.pt (default last.pt)"
    )
    ap.add_argument("--stream", choices=["rgb", "flow"], default=None,
                    help="which encoder (default: the stream the checkpoint's phase trained; required for a "
                    "released file)")  # fmt: skip
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--videos", help="folder of video files (any depth): built into shards under <out>.work/"
    )
    src.add_argument("--shards", help="a shard set (python -m data_prep.build output): read as stored")
    ap.add_argument("--split", default="test", help="--shards only: the split to read (default: test)")
    ap.add_argument("--out", required=True, help="output .npz (features, video_ids, meta, ...)")
    ap.add_argument("--level", choices=["clip", "video"], default="video",
                    help="one row per clip, or per video (mean of its clips) (default: video)")  # fmt: skip
    ap.add_argument("--windows", choices=[w.value for w in C.EvalWindows], default="uniform",
                    help="temporal windows per video: uniform = --clips evenly spaced (default) | overlap = every "
                    "window, half overlapping (the released test sampler) | random = --clips at random starts")  # fmt: skip
    ap.add_argument(
        "--clips", type=int, default=10, help="clips per video with --windows uniform/random (default: 10)"
    )
    ap.add_argument("--crop", choices=["center", "tencrop"], default="center",
                    help="spatial crop of each clip (default: center)")  # fmt: skip
    ap.add_argument("--l2-clip", action="store_true",
                    help="L2-normalise each clip's row before the video mean (the released retrieval)")  # fmt: skip
    ap.add_argument("--l2", action="store_true", help="L2-normalise the output rows")
    ap.add_argument("--flow", default=C.FlowMethod.dis.value, choices=[m.value for m in C.FlowMethod],
                    help="--videos only: optical flow method of the build (default: dis, fast on CPUs; use "
                    "the method of the encoder's training set for comparable flow features)")  # fmt: skip
    ap.add_argument("--height", type=int, default=128, help="--videos only: frame height of the build")
    ap.add_argument("--width", type=int, default=171, help="--videos only: frame width of the build")
    ap.add_argument("--skip-bad", action="store_true",
                    help="--videos only: reject unreadable videos (listed in the output's meta) instead of "
                    "stopping on the first")  # fmt: skip
    ap.add_argument("--workers", type=int, default=1, help="--videos only: build processes (default: 1)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="where the encoder runs: auto = CUDA when visible (default: auto)")  # fmt: skip
    ap.add_argument("--force", action="store_true", help="recompute even when --out is up to date")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides of the loader (data.*, train.amp); model.* is fixed by the weights")  # fmt: skip
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vicc_fast.checkpoint import CheckpointError
    from vicc_fast.data.manifest import DataError

    try:
        extract_features(args)
    except (ExtractError, CheckpointError, C.ConfigError, DataError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
