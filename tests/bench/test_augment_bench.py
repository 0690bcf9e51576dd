"""bench augment: the released colour jitter's DALI steps against the reference, and their cost."""

from __future__ import annotations

import argparse

import numpy as np

from vicc_fast.bench import augment as A


def _args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    A.add_arguments(p)
    return p.parse_args(
        ["--frames", "4", "--size", "16", "--batch", "3", "--iters", "1", "--repeat", "2",
         *[x for k, v in kw.items() for x in (f"--{k}", str(v))]]
    )  # fmt: skip


def test_released_steps_agree_with_the_reference_and_are_timed() -> None:
    r = A.run(_args())
    assert r["agrees_with_reference"] and r["released_vs_reference"]["max_abs"] <= 3
    assert set(r["ms_per_clip"]) == {"released", "affine"} and all(
        len(v) == 2 for v in r["all_ms_per_clip"].values()
    )
    assert r["ratio_released_over_affine"] > 0


def test_a_wrong_reference_is_reported(monkeypatch) -> None:
    """The check can fail: against a reference that brightens everything, the steps disagree."""
    from vicc_fast.data import augment

    real = augment.jitter_steps_np
    monkeypatch.setattr(augment, "jitter_steps_np", lambda x, s: np.clip(real(x, s) + 20, 0, 255))
    assert not A.run(_args())["agrees_with_reference"]
