"""Tiny shard sets written through data_prep (codec + shard writer), so the loader is tested against the
real format: the pattern sets of ``data_prep.patterns`` (see there what their values prove)."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.patterns import NUM_CLASSES, T_VIDEO, H, W, code, frames_from_code, make_set
from vicc_fast import config

__all__ = ["H", "NUM_CLASSES", "T_VIDEO", "W", "cfg_for", "code", "frames_from_code", "make_set"]


@pytest.fixture(scope="session")
def codes_root(tmp_path_factory) -> Path:
    return make_set(tmp_path_factory.mktemp("codes"), "codes")


@pytest.fixture(scope="session")
def ramps_root(tmp_path_factory) -> Path:
    return make_set(tmp_path_factory.mktemp("ramps"), "ramps", n_test=2)


@pytest.fixture(scope="session")
def grid_root(tmp_path_factory) -> Path:
    return make_set(tmp_path_factory.mktemp("grid"), "grid", n_test=2)


def cfg_for(root: Path, *overrides: str, pinned: bool = True) -> config.Config:
    """A small, augmentation-free configuration over ``root`` (tests switch on what they check). ``pinned``:
    flow layout, crop and grayscale draw as before issue 25 (xy0, torchvision, per view); false: the schema
    defaults (the released recipe)."""
    base = [
        f"data.root={root}",
        "data.build_if_missing=false",
        "data.num_frames=8",
        "data.crop_size=32",
        "data.augment.color_jitter_prob=0",
        "data.augment.grayscale_prob=0",
        "data.augment.blur_prob=0",
        "data.eval.color_jitter_prob=0",
        "data.dtype=float32",
        "data.threads=2",
        "data.prefetch=1",
        "data.eval.windows=uniform",
        "data.eval.clips=2",
        "train.batch_size=2",
        "eval.batch_size=4",
    ]
    # the pixel checks of the older tests read flow as (x, y, 0) and crop windows by torchvision's rule;
    # tests/data/test_released_recipe.py checks the released defaults (flow (128, y, x), crop, grayscale)
    pins = (
        ["data.flow_layout=xy0", "data.augment.crop=torchvision", "data.augment.grayscale_per=view"]
        if pinned
        else []
    )
    return config.load(None, [*base, *pins, *overrides])
