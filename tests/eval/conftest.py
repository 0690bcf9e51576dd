"""Tiny shard sets and checkpoints for the evaluation tests (built by the real shard writer and engine saver)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_prep import codec, shards


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
            colour = np.array([(40 * lbl) % 256, 255 - (40 * lbl) % 256, 128], dtype=np.uint8)
            rgb = np.broadcast_to(colour, (frames, h, w, 3)).copy()
            rgb += rng.integers(0, 8, rgb.shape, dtype=np.uint8)
            flow = np.full((frames, h, w, 2), 128, dtype=np.uint8)
            key = shards.sample_key(split, i)
            samples.append(
                shards.Sample(
                    key=key, rgb=codec.encode_rgb(rgb), flow=codec.encode_flow(flow), label=lbl, index=i,
                    meta={"key": key, "label": lbl, "class_name": classes[lbl], "split": split, "index": i},
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
