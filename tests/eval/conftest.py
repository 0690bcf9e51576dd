"""Tiny shard sets and checkpoints for the evaluation tests (built by the real shard writer and engine saver)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep import codec, shards
from vicc_fast import config as C


def write_shard_set(
    root: Path,
    train_labels: list[int],
    test_labels: list[int] | None,
    classes: list[str],
    frames: int = 6,
    size: tuple[int, int] = (16, 24),
    shard_size: int = 3,
) -> Path:
    """A shard folder whose videos are flat colours (one hue per class, so thumbnails show the class)."""
    rng = np.random.default_rng(0)
    h, w = size
    splits = {}
    for split, labels in (("train", train_labels), ("test", test_labels)):
        if labels is None:
            continue
        samples = []
        for i, lbl in enumerate(labels):
            colour = np.array([(30 + 70 * lbl) % 240, 200 - (50 * lbl) % 200, 128], dtype=np.uint8)
            rgb = np.broadcast_to(colour, (frames, h, w, 3)).copy()
            rgb += rng.integers(0, 8, rgb.shape, dtype=np.uint8)
            flow = np.full((frames, h, w, 2), 128, dtype=np.uint8)
            key = shards.sample_key(split, i)
            samples.append(
                shards.Sample(
                    key=key, rgb=codec.encode_rgb(rgb), flow=codec.encode_flow(flow), label=lbl, index=i,
                    meta={
                        "key": key, "video_id": f"v{split}{i}", "label": lbl, "class_name": classes[lbl],
                        "split": split, "index": i, "fps": 25, "frames": frames, "flow_frames": frames,
                        "height": h, "width": w, "source": "test",
                    },
                )
            )  # fmt: skip
        splits[split] = shards.write_split(root, split, samples, shard_size)
    m = shards.make_manifest(
        classes=classes,
        splits=splits,
        video={"height": h, "width": w, "fps": 25, "min_frames": frames},
        flow={"method": "tvl1", "bound": 20},
        settings={},
        rejected=[],
    )
    return shards.write_manifest(root, m)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_shard_set(root, [0, 1, 2, 0, 1, 2, 0, 1], [0, 1, 2, 2], ["Walk", "Run", "Jump"])
    return root


@pytest.fixture
def make_shards():
    """The shard-set writer, for tests that need a particular (often broken) set."""
    return write_shard_set


TINY = ["model.backbone=tiny", "model.tiny_width=4", "model.proj_hidden=8", "model.proj_dim=4",
        "model.num_prototypes=5", "schedule.single_epochs=1", "schedule.cross_epochs=1", "schedule.cross_cycles=1"]  # fmt: skip


def save_tiny_ckpt(path, completed, phase=None, overrides=()):
    """A real checkpoint (engine format) of a randomly initialised tiny ViCC that claims `completed` phases."""
    from vicc_fast import checkpoint as ckpt
    from vicc_fast.methods import build_method

    cfg = C.load(None, [*TINY, *overrides])
    torch.manual_seed(0)
    method = build_method(cfg)
    ckpt.save(path, {
        "config": C.to_dict(cfg), "method": method.state_dict(), "phase": phase or completed[-1], "epoch": 1,
        "step": 0, "optimizer": None, "scaler": None, "rng": {}, "completed": completed,
    })  # fmt: skip
    return path


@pytest.fixture
def save_ckpt():
    return save_tiny_ckpt


@pytest.fixture
def tiny_overrides():
    """Config overrides of the tiny ViCC model the checkpoints here are built from."""
    return list(TINY)
