"""Small shared fixtures for the data_prep tests: tiny real video files and realistic flow fields."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest


def moving_frames(t: int = 12, h: int = 32, w: int = 43, seed: int = 0) -> np.ndarray:
    """[t, h, w, 3] uint8: a smooth random background panning right plus a bright square moving down."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (4, 6, 3)).astype(np.float32)
    yy = np.linspace(0, 3, h)[:, None]
    xx = np.linspace(0, 5, w + 2 * t)[None, :]
    # Bilinear upsampling of the coarse grid: low-frequency texture that survives resizing.
    y0, x0 = np.floor(yy).astype(int).clip(0, 2), np.floor(xx).astype(int).clip(0, 4)
    fy, fx = (yy - y0)[..., None], (xx - x0)[..., None]
    bg = (
        coarse[y0, x0] * (1 - fy) * (1 - fx)
        + coarse[y0 + 1, x0] * fy * (1 - fx)
        + coarse[y0, x0 + 1] * (1 - fy) * fx
        + coarse[y0 + 1, x0 + 1] * fy * fx
    )
    out = np.empty((t, h, w, 3), np.uint8)
    s = max(2, h // 4)
    for i in range(t):
        f = bg[:, 2 * i : 2 * i + w].copy()
        top = (i * 2) % max(1, h - s)
        f[top : top + s, w // 3 : w // 3 + s] = (250, 240, 30)
        out[i] = f.clip(0, 255).astype(np.uint8)
    return out


def write_video(path: Path, frames: np.ndarray, fps: int = 25, codec: str = "mpeg4") -> Path:
    """Write frames [T, H, W, 3] uint8 as a real video file (AVI/MPEG-4 part 2, like UCF101's xvid)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = frames.shape[2], frames.shape[1]
        s.pix_fmt = "yuv420p"
        s.options = {"qscale": "2"} if codec == "mpeg4" else {}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def realistic_flow(t: int = 16, h: int = 64, w: int = 85, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    """Quantised flow [t, h, w, 2] uint8 (docs/shard_format.md's coding, bound 20): a smooth rotation/zoom/wave field
    plus two objects with sharp motion boundaries (one beyond the +-20 clip) and TV-L1-like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w / 2, h / 2
    flow = np.zeros((t, h, w, 2), np.float32)
    for i in range(t):
        a, z = 0.04 * np.sin(i / 7), 0.05 * np.cos(i / 5)
        fx = -a * (yy - cy) + z * (xx - cx) + 3 * np.sin(xx / 15 + i / 4)
        fy = a * (xx - cx) + z * (yy - cy) + 2 * np.cos(yy / 10 + i / 6)
        r = h / 6
        ox, oy = cx + w / 4 * np.sin(i / 8), cy + h / 6 * np.cos(i / 9)
        disc = (xx - ox) ** 2 + (yy - oy) ** 2 < r * r
        fx[disc], fy[disc] = 15.0, -12.0
        box = (np.abs(xx - w / 5 - i) < w / 16) & (np.abs(yy - h / 4) < h / 8)
        fx[box], fy[box] = -25.0, 8.0
        flow[i, ..., 0], flow[i, ..., 1] = fx, fy
    flow += rng.normal(0, noise, flow.shape).astype(np.float32)
    return np.rint((np.clip(flow, -20, 20) + 20) * 255 / 40).astype(np.uint8)


def make_ucf_layout(
    root: Path,
    classes: tuple[str, ...] = ("ApplyEyeMakeup", "Biking"),
    train_per_class: int = 2,
    test_per_class: int = 1,
    frames: int = 10,
    size: tuple[int, int] = (32, 43),
    videos_dir: str = "videos",
    splits_dir: str = "splits",
) -> Path:
    """A tiny UCF101-style folder: videos/<Class>/v_<Class>_gXX_cYY.avi plus classInd/trainlist01/testlist01."""
    (root / splits_dir).mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for ci, name in enumerate(classes):
        for g in range(train_per_class + test_per_class):
            rel = f"{name}/v_{name}_g{g + 1:02d}_c01.avi"
            write_video(root / videos_dir / rel, moving_frames(frames, *size, seed=ci * 100 + g))
            (train if g < train_per_class else test).append((rel, ci + 1))
    (root / splits_dir / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    (root / splits_dir / "trainlist01.txt").write_text("".join(f"{r} {c}\n" for r, c in train))
    (root / splits_dir / "testlist01.txt").write_text("".join(f"{r}\n" for r, _ in test))
    return root


@pytest.fixture(scope="session")
def ucf_root(tmp_path_factory) -> Path:
    """A tiny read-only UCF101-style data set shared by the tests (copy it before changing it)."""
    return make_ucf_layout(tmp_path_factory.mktemp("ucf"))
