"""Pattern videos whose pixel values, after decoding and augmentation, prove what a loader did.

Written through data_prep's codec and shard writer, so they are real shards:

- ``codes``: every frame uniform; RGB R = G = B = code(i), flow x = code(i), flow y = 255 - code(i), with
  code(i) = 16 + 8 i (frame number). A clip's values name the frames it holds, in both streams.
- ``ramps``: static frames; RGB R = horizontal ramp, G = vertical ramp, B = 128; flow x = y = the horizontal
  ramp. Every frame of a clip must come out the same (same crop and flip on all frames); flow x and y must
  match (same crop on both halves) up to the negation of x on flipped clips.
- ``grid``: static frames; RGB R = flow x = horizontal ramp, RGB G = flow y = vertical ramp, RGB B = 128. With
  the same crop window and flip on RGB view i and flow view i (and no photometric change), RGB (R, G) and
  flow (x, y) come out equal pixel for pixel; a different window or flip breaks that.
- ``noise``: static frames of one fixed texture (uniform noise in [32, 224] on 4x4-pixel cells, the same in
  R, G, B and in flow x and y): its resized crops show the interpolation (bicubic overshoot, antialiasing).

Used by the loader tests and by the GPU validation (``scripts/gpu``), which checks the NVDEC path with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_prep import codec, shards

H, W = 48, 64
T_VIDEO = 24
NUM_CLASSES = 3


def code(i: np.ndarray | int) -> np.ndarray | int:
    return 16 + 8 * np.asarray(i)


def frames_from_code(v: np.ndarray) -> np.ndarray:
    """Inverse of code(): nearest frame number."""
    return np.rint((np.asarray(v, np.float64) - 16) / 8).astype(int)


def _codes_video(t: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    c = code(np.arange(t)).astype(np.uint8)
    rgb = np.broadcast_to(c[:, None, None, None], (t, h, w, 3)).copy()
    q = np.empty((t, h, w, 2), np.uint8)
    q[..., 0] = c[:, None, None]
    q[..., 1] = (255 - c)[:, None, None]
    return rgb, q


def _ramps_video(t: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    hr = np.linspace(0, 255, w).astype(np.uint8)[None, :].repeat(h, 0)
    vr = np.linspace(0, 255, h).astype(np.uint8)[:, None].repeat(w, 1)
    rgb = np.stack([hr, vr, np.full_like(hr, 128)], -1)[None].repeat(t, 0)
    q = np.stack([hr, hr], -1)[None].repeat(t, 0)
    return rgb, q


def _noise_video(t: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    cells = np.random.default_rng(25).integers(32, 225, size=((h + 3) // 4, (w + 3) // 4)).astype(np.uint8)
    tex = cells.repeat(4, 0).repeat(4, 1)[:h, :w]
    rgb = np.stack([tex] * 3, -1)[None].repeat(t, 0)
    q = np.stack([tex, tex], -1)[None].repeat(t, 0)
    return rgb, q


def _grid_video(t: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    hr = np.linspace(0, 255, w).astype(np.uint8)[None, :].repeat(h, 0)
    vr = np.linspace(0, 255, h).astype(np.uint8)[:, None].repeat(w, 1)
    rgb = np.stack([hr, vr, np.full_like(hr, 128)], -1)[None].repeat(t, 0)
    q = np.stack([hr, vr], -1)[None].repeat(t, 0)
    return rgb, q


def make_set(
    root: Path,
    kind: str,
    n_train: int = 8,
    n_test: int = 5,
    frames: int = T_VIDEO,
    shard_size: int = 3,
    short: tuple[int, ...] = (),
    corrupt: tuple[int, ...] = (),
    height: int = H,
    width: int = W,
    ucf_names: bool = False,
) -> Path:
    """Write a shard folder; ``short`` train indices get 6 frames, ``corrupt`` ones a truncated RGB video.
    ``ucf_names``: video ids named as UCF101's clips, two per group (``v_P_g<i // 2>_c<i % 2 + 1>``), so
    videos 2k and 2k + 1 share a source video.
    ``height`` x ``width``: the tests' 48 x 64 by default; NVDEC needs larger frames (scripts/gpu uses 128 x 171)."""
    make = {"codes": _codes_video, "ramps": _ramps_video, "grid": _grid_video, "noise": _noise_video}[kind]
    cache: dict[int, tuple[bytes, bytes]] = {}

    def encoded(t: int) -> tuple[bytes, bytes]:
        if t not in cache:
            rgb, q = make(t, height, width)
            cache[t] = (codec.encode_rgb(rgb), codec.encode_flow(q))
        return cache[t]

    split_shards = {}
    for split, n in (("train", n_train), ("test", n_test)):
        samples = []
        for i in range(n):
            t = 6 if (split == "train" and i in short) else frames
            rgb, flow = encoded(t)
            if split == "train" and i in corrupt:
                rgb = rgb[: len(rgb) // 3]
            key = shards.sample_key(split, i)
            meta = {
                "key": key,
                "video_id": f"P/v_P_g{i // 2:02d}_c{i % 2 + 1:02d}" if ucf_names else f"v{i}",
                "label": i % NUM_CLASSES,
                "class_name": f"c{i % NUM_CLASSES}",
                "split": split,
                "index": i,
                "fps": 25.0,
                "frames": t,
                "flow_frames": t,
                "height": height,
                "width": width,
                "source": kind,
            }
            samples.append(shards.Sample(key, rgb, flow, i % NUM_CLASSES, i, meta))
        split_shards[split] = shards.write_split(root, split, samples, shard_size)
    manifest = shards.make_manifest(
        classes=[f"c{k}" for k in range(NUM_CLASSES)],
        splits=split_shards,
        video={
            "height": height,
            "width": width,
            "fps": 25.0,
            "min_frames": min(frames, 6 if short else frames),
        },
        flow={"method": "test", "bound": 20},
        settings={"kind": kind},
        rejected=[],
    )
    shards.write_manifest(root, manifest)
    return root


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m data_prep.patterns",
        description="Write a pattern shard set (codes | ramps | grid | noise).",
    )
    p.add_argument("--out", required=True, help="output folder (manifest.json and shards)")
    p.add_argument(
        "--kind",
        choices=["codes", "ramps", "grid", "noise"],
        required=True,
        help="pattern (module docstring)",
    )
    p.add_argument("--train", type=int, default=8, help="training videos")
    p.add_argument("--test", type=int, default=5, help="test videos")
    p.add_argument("--frames", type=int, default=T_VIDEO, help="frames per video")
    p.add_argument("--height", type=int, default=H, help="frame height")
    p.add_argument("--width", type=int, default=W, help="frame width")
    a = p.parse_args(argv)
    make_set(Path(a.out), a.kind, a.train, a.test, a.frames, height=a.height, width=a.width)
    print(f"wrote {a.kind} set to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
