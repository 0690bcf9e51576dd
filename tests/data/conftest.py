"""Tiny shard sets written through data_prep (codec + shard writer), so the loader is tested against the
real format. Videos carry patterns whose values after augmentation prove what the loader did:

- ``codes``: every frame uniform; RGB R = G = B = code(i), flow x = code(i), flow y = 255 - code(i), with
  code(i) = 16 + 8 i (frame number). A clip's values name the frames it holds, in both streams.
- ``ramps``: static frames; RGB R = horizontal ramp, G = vertical ramp, B = 128; flow x = y = the horizontal
  ramp. Every frame of a clip must come out the same (same crop and flip on all frames); flow x and y must
  match (same crop on both halves) up to the negation of x on flipped clips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_prep import codec, shards
from vicc_fast import config

H, W = 48, 64
T_VIDEO = 24
NUM_CLASSES = 3


def code(i: np.ndarray | int) -> np.ndarray | int:
    return 16 + 8 * np.asarray(i)


def frames_from_code(v: np.ndarray) -> np.ndarray:
    """Inverse of code(): nearest frame number."""
    return np.rint((np.asarray(v, np.float64) - 16) / 8).astype(int)


def _codes_video(t: int) -> tuple[np.ndarray, np.ndarray]:
    c = code(np.arange(t)).astype(np.uint8)
    rgb = np.broadcast_to(c[:, None, None, None], (t, H, W, 3)).copy()
    q = np.empty((t, H, W, 2), np.uint8)
    q[..., 0] = c[:, None, None]
    q[..., 1] = (255 - c)[:, None, None]
    return rgb, q


def _ramps_video(t: int) -> tuple[np.ndarray, np.ndarray]:
    hr = np.linspace(0, 255, W).astype(np.uint8)[None, :].repeat(H, 0)
    vr = np.linspace(0, 255, H).astype(np.uint8)[:, None].repeat(W, 1)
    rgb = np.stack([hr, vr, np.full_like(hr, 128)], -1)[None].repeat(t, 0)
    q = np.stack([hr, hr], -1)[None].repeat(t, 0)
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
) -> Path:
    """Write a shard folder; ``short`` train indices get 6 frames, ``corrupt`` ones a truncated RGB video."""
    make = {"codes": _codes_video, "ramps": _ramps_video}[kind]
    cache: dict[int, tuple[bytes, bytes]] = {}

    def encoded(t: int) -> tuple[bytes, bytes]:
        if t not in cache:
            rgb, q = make(t)
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
                "video_id": f"v{i}",
                "label": i % NUM_CLASSES,
                "class_name": f"c{i % NUM_CLASSES}",
                "split": split,
                "index": i,
                "fps": 25.0,
                "frames": t,
                "flow_frames": t,
                "height": H,
                "width": W,
                "source": kind,
            }
            samples.append(shards.Sample(key, rgb, flow, i % NUM_CLASSES, i, meta))
        split_shards[split] = shards.write_split(root, split, samples, shard_size)
    manifest = shards.make_manifest(
        classes=[f"c{k}" for k in range(NUM_CLASSES)],
        splits=split_shards,
        video={"height": H, "width": W, "fps": 25.0, "min_frames": min(frames, 6 if short else frames)},
        flow={"method": "test", "bound": 20},
        settings={"kind": kind},
        rejected=[],
    )
    shards.write_manifest(root, manifest)
    return root


@pytest.fixture(scope="session")
def codes_root(tmp_path_factory) -> Path:
    return make_set(tmp_path_factory.mktemp("codes"), "codes")


@pytest.fixture(scope="session")
def ramps_root(tmp_path_factory) -> Path:
    return make_set(tmp_path_factory.mktemp("ramps"), "ramps", n_test=2)


def cfg_for(root: Path, *overrides: str) -> config.Config:
    """A small, augmentation-free configuration over ``root`` (tests switch on what they check)."""
    base = [
        f"data.root={root}",
        "data.build_if_missing=false",
        "data.num_frames=8",
        "data.crop_size=32",
        "data.color_jitter_prob=0",
        "data.grayscale_prob=0",
        "data.blur_prob=0",
        "data.dtype=float32",
        "data.threads=2",
        "data.prefetch=1",
        "data.eval_clips=2",
        "train.batch_size=2",
        "eval.batch_size=4",
    ]
    return config.load(None, [*base, *overrides])
