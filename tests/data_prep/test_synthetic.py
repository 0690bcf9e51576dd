"""The synthetic action set: deterministic, UCF101 layout, real decodable videos, motion-defined classes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from data_prep import synthetic
from data_prep.synthetic import CLASSES, decode_video, generate, render_video
from vicc_fast.config import SyntheticConfig

SMALL = SyntheticConfig(
    num_classes=3, train_per_class=2, test_per_class=1, frames=8, height=32, width=42, seed=3
)


def _videos(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "videos").rglob("*.avi"))}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("syn") / "a", SMALL, gt_flow=True, progress=False)


def test_same_seed_same_videos_any_worker_count(small_set, tmp_path):
    again = generate(tmp_path / "b", SMALL, gt_flow=True, workers=2, progress=False)
    first, second = _videos(small_set), _videos(again)
    assert first.keys() == second.keys() and len(first) == 9
    for name in first:  # decoded frames identical (and, with this encoder, the bytes too)
        np.testing.assert_array_equal(decode_video(small_set / name), decode_video(again / name))
        assert first[name] == second[name], name


def test_other_seed_other_videos(small_set, tmp_path):
    other = generate(tmp_path / "c", SyntheticConfig(**{**vars(SMALL), "seed": 4}), progress=False)
    name = "videos/SlideHorizontal/v_SlideHorizontal_g01_c01.avi"
    a, b = decode_video(small_set / name), decode_video(other / name)
    assert a.shape == b.shape
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 5


def test_layout_and_split_files(small_set):
    splits = small_set / "splits"
    class_ind = [line.split() for line in (splits / "classInd.txt").read_text().splitlines()]
    assert class_ind == [[str(i + 1), c.name] for i, c in enumerate(CLASSES[:3])]
    train = [line.split() for line in (splits / "trainlist01.txt").read_text().splitlines()]
    test = [line.split() for line in (splits / "testlist01.txt").read_text().splitlines()]
    assert all(len(x) == 2 for x in train) and all(len(x) == 1 for x in test)
    for num, name in class_ind:
        rows = [p for p, lbl in train if p.startswith(name + "/")]
        assert len(rows) == SMALL.train_per_class and {lbl for p, lbl in train if p in rows} == {num}
        assert sum(p.startswith(name + "/") for (p,) in test) == SMALL.test_per_class
    assert not {p for p, _ in train} & {p for (p,) in test}
    for rel in [p for p, _ in train] + [p for (p,) in test]:
        cls, fname = rel.split("/")
        assert fname.startswith(f"v_{cls}_g") and fname.endswith("_c01.avi")
        video = decode_video(small_set / "videos" / rel)
        assert video.shape == (SMALL.frames, SMALL.height, SMALL.width, 3) and video.dtype == np.uint8
        flow = np.load(small_set / "gt_flow" / cls / (Path(fname).stem + ".npy"))
        assert flow.dtype == np.float16 and flow.shape == (SMALL.frames, SMALL.height, SMALL.width, 2)
        np.testing.assert_array_equal(flow[-1], flow[-2])  # last flow frame repeats the one before
    assert not list(small_set.rglob("*.tmp"))  # atomic writes leave no temp files


def test_gt_flow_file_is_the_rendered_flow(small_set):
    entry = synthetic.VideoEntry(1, CLASSES[1].name, "train", 0, SMALL.test_per_class + 1)
    rendered = render_video(
        1,
        synthetic.video_seed(SMALL.seed, entry),
        frames=SMALL.frames,
        height=SMALL.height,
        width=SMALL.width,
        flow=True,
    )
    stored = np.load(small_set / "gt_flow" / entry.class_name / f"{entry.stem}.npy")
    np.testing.assert_allclose(stored.astype(np.float32), rendered.flow, atol=2e-2)
    decoded = decode_video(small_set / "videos" / entry.relpath)
    assert np.abs(decoded.astype(int) - rendered.frames.astype(int)).mean() < 4  # codec at high quality


def test_rerun_is_noop_and_other_settings_need_overwrite(small_set, tmp_path):
    out = generate(tmp_path / "d", SMALL, progress=False)
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.avi")}
    generate(out, SMALL, progress=False)
    assert stamp == {p: p.stat().st_mtime_ns for p in out.rglob("*.avi")}
    bigger = SyntheticConfig(**{**vars(SMALL), "num_classes": 2, "frames": 6})
    with pytest.raises(ValueError, match="other settings"):
        generate(out, bigger, progress=False)
    generate(out, bigger, progress=False, overwrite=True)
    assert len(list(out.rglob("*.avi"))) == 2 * 3
    assert decode_video(next(out.rglob("*.avi"))).shape[0] == 6


@pytest.mark.parametrize(
    "key,value", [("num_classes", 0), ("num_classes", len(CLASSES) + 1), ("frames", 1), ("height", 4)]
)
def test_bad_settings_are_clear_errors(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        generate(tmp_path, SyntheticConfig(**{**vars(SMALL), key: value}), progress=False)


def test_cli(tmp_path, capsys):
    rc = synthetic.main(
        [
            "--out",
            str(tmp_path / "e"),
            "--classes",
            "2",
            "--train-per-class",
            "1",
            "--test-per-class",
            "1",
            "--frames",
            "4",
            "--height",
            "24",
            "--width",
            "32",
            "--workers",
            "1",
            "--quiet",
        ]
    )
    assert rc == 0 and len(list((tmp_path / "e").rglob("*.avi"))) == 4
    assert synthetic.main(["--out", str(tmp_path / "f"), "--classes", "99", "--quiet"]) == 2
    assert "num_classes" in capsys.readouterr().err


def test_unreadable_video_names_the_file(tmp_path):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="bad.avi"):
        decode_video(bad)


# ------------------------------------------------------------------------------ classes are motion-defined
FEATURES = (
    "moving_fraction",
    "speed_x",
    "speed_y",
    "net_x",
    "net_y",
    "divergence",
    "div_net",
    "curl",
    "path_turn",
    "impact_y",
)


def motion_features(flow: np.ndarray) -> np.ndarray:
    """Statistics of the object's motion relative to the background (camera pan removed), each unchanged by a
    horizontal flip of the video. flow: [T, H, W, 2] -> [len(FEATURES)]."""
    f = flow[:-1].astype(np.float64)  # the last frame repeats the one before
    t_len, h, w, _ = f.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    v, div, curl, frac = np.zeros((t_len, 2)), np.zeros(t_len), np.zeros(t_len), np.zeros(t_len)
    for t in range(t_len):
        border = np.concatenate([f[t, 0], f[t, -1], f[t, :, 0], f[t, :, -1]])
        values, counts = np.unique(border, axis=0, return_counts=True)
        rel = f[t] - values[counts.argmax()]  # the camera pan moves most border pixels alike
        mask = np.hypot(rel[..., 0], rel[..., 1]) > 1e-3
        frac[t] = mask.mean()
        if mask.sum() < 10:
            continue
        r, dx, dy = rel[mask], xs[mask] - xs[mask].mean(), ys[mask] - ys[mask].mean()
        v[t] = r.mean(0)
        spread = (dx * dx + dy * dy).mean()
        div[t] = (dx * r[:, 0] + dy * r[:, 1]).mean() / spread
        curl[t] = (dx * r[:, 1] - dy * r[:, 0]).mean() / spread
    eps = 1e-9
    speed = np.abs(v).mean(0)
    net = np.abs(v.sum(0)) / (np.abs(v).sum(0) + eps)
    turn = abs((v[:-1, 0] * v[1:, 1] - v[:-1, 1] * v[1:, 0]).mean()) / ((v * v).sum(1).mean() + eps)
    impact = np.abs(np.diff(v[:, 1])).max() / (np.abs(v[:, 1]).max() + eps)
    return np.array(
        [
            frac.mean(),
            speed[0],
            speed[1],
            net[0],
            net[1],
            div.mean(),
            abs(div.sum()) / (np.abs(div).sum() + eps),
            abs(curl.mean()),
            turn,
            impact,
        ]
    )


def test_every_class_differs_in_a_flip_invariant_motion_statistic():
    per_class = {}
    for c in range(len(CLASSES)):
        rows = []
        for i in range(4):
            flow = render_video(c, 1000 * c + i, frames=32, height=48, width=64, flow=True).flow
            feats = motion_features(flow)
            flipped = flow[:, :, ::-1].copy()
            flipped[..., 0] *= -1
            np.testing.assert_allclose(motion_features(flipped), feats, atol=1e-6)  # survives hflip
            rows.append(feats)
        per_class[c] = np.stack(rows)
    scale = np.abs(np.concatenate(list(per_class.values()))).max(0) + 1e-12
    for a, b in itertools.combinations(per_class, 2):
        fa, fb = per_class[a], per_class[b]
        gap = np.maximum(fb.min(0) - fa.max(0), fa.min(0) - fb.max(0))  # > 0: value ranges do not overlap
        assert (gap / scale).max() > 0.1, f"{CLASSES[a].name} vs {CLASSES[b].name}: no separating statistic"


def test_motion_scales_with_frame_size():
    small = render_video(0, 7, frames=12, height=64, width=85, flow=True).flow
    large = render_video(0, 7, frames=12, height=128, width=171, flow=True).flow
    ratio = np.abs(large[..., 0]).max() / np.abs(small[..., 0]).max()
    assert 1.6 < ratio < 2.4
