"""Supervised reference on the synthetic demo set: can a tiny RGB 3D CNN learn the motion classes from labels?

The synthetic classes are defined by motion only, so this is the check that the motion survives the frame size
the demo trains at (e.g. 64x64): a supervised tiny RGB model, trained on clips decoded from the source videos
(PyAV; this benchmarks the data set, not the input pipeline), reports test accuracy and the kNN R@1 of its
features (test queries, train gallery: the retrieval protocol of the papers). A static control trains the same
model on single frames: appearance is a nuisance, so it should stay near chance. If a change to the generator
hides the motion, `accuracy` drops towards `static_accuracy`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data_prep.synthetic import decode_video, generate
from vicc_fast.bench.common import add_synthetic_arguments, synthetic_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data set")
    g.add_argument("--data", default="", help="existing synthetic set (UCF101 layout); empty: generate one")
    g.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "vicc_fast_bench"),
        help="where a generated set is kept (reused on the next run with the same settings)",
    )
    add_synthetic_arguments(g, height=64, width=64, seed_help="seed of the generated set and of training")
    g = p.add_argument_group("model and training")
    g.add_argument(
        "--size", type=int, default=64, help="input crop side; videos are resized to this short side"
    )
    g.add_argument("--clip-len", type=int, default=16, help="frames per clip")
    g.add_argument("--stride", type=int, default=2, help="temporal stride between clip frames")
    g.add_argument("--channels", type=int, default=16, help="channels of the first conv (doubling per stage)")
    g.add_argument("--epochs", type=int, default=25, help="epochs (one random clip per training video)")
    g.add_argument("--batch-size", type=int, default=16, help="clips per step")
    g.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (cosine decay)")
    g.add_argument("--eval-clips", type=int, default=3, help="uniformly spaced clips per video at evaluation")
    g.add_argument("--no-hflip", action="store_true", help="disable the random horizontal flip augmentation")
    g.add_argument("--no-static-control", action="store_true", help="skip the single-frame control model")
    g.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes generating the set")


class TinyC3D(nn.Module):
    """Four 3x3x3 conv-BN-ReLU stages (spatial /16, temporal /8), global average pool, linear classifier.

    x: [B, 3, T, H, W] -> (logits [B, classes], features [B, 8 * channels]).
    """

    def __init__(self, classes: int, channels: int = 16) -> None:
        super().__init__()
        widths = [3, channels, 2 * channels, 4 * channels, 8 * channels]
        strides = [(1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]
        layers: list[nn.Module] = []
        for cin, cout, s in zip(widths[:-1], widths[1:], strides):
            layers += [
                nn.Conv3d(cin, cout, 3, stride=s, padding=1, bias=False),
                nn.BatchNorm3d(cout),
                nn.ReLU(True),
            ]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x).mean(dim=(2, 3, 4))
        return self.head(feats), feats


def _read_split(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, int]]]:
    splits = root / "splits"
    classes = [line.split()[1] for line in (splits / "classInd.txt").read_text().split("\n") if line.strip()]
    index = {c: i for i, c in enumerate(classes)}

    def rows(name: str) -> list[tuple[Path, int]]:
        out = []
        for line in (splits / name).read_text().split("\n"):
            if line.strip():
                rel = line.split()[0]
                out.append((root / "videos" / rel, index[rel.split("/")[0]]))
        return out

    return classes, rows("trainlist01.txt"), rows("testlist01.txt")


def _load(items: list[tuple[Path, int]], size: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode and resize (short side = size) every video: ([N, T, h, w, 3] uint8, labels [N])."""
    videos = []
    for path, _ in tqdm(items, desc=desc, unit="video"):
        v = decode_video(path)
        h, w = v.shape[1:3]
        scale = size / min(h, w)
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        if new != (w, h):
            v = np.stack([cv2.resize(f, new, interpolation=cv2.INTER_AREA) for f in v])
        videos.append(v)
    frames = min(v.shape[0] for v in videos)
    return np.stack([v[:frames] for v in videos]), np.array([lbl for _, lbl in items])


def _clips(
    videos: np.ndarray, starts: np.ndarray, clip_len: int, stride: int, size: int, offsets: np.ndarray, flips
) -> torch.Tensor:
    """Gather clips: videos [N, T, h, w, 3] uint8, per clip start frame, crop offset (y, x), flip -> [N, 3, L, S, S]."""
    out = np.empty((len(videos), clip_len, size, size, 3), dtype=np.uint8)
    for i, (v, s, (oy, ox), fl) in enumerate(zip(videos, starts, offsets, flips)):
        clip = v[s : s + clip_len * stride : stride, oy : oy + size, ox : ox + size]
        out[i] = clip[:, :, ::-1] if fl else clip
    # [N, L, S, S, 3] -> [N, 3, L, S, S] as a channels-last-3d view: no copy, and faster 3D convs on CPU
    x = torch.from_numpy(out).permute(0, 4, 1, 2, 3).float()
    return (x / 255.0 - 0.45) / 0.225


def _features(model, videos, clip_len, stride, size, n_clips, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and features averaged over `n_clips` uniformly spaced centre-crop clips per video."""
    n, t, h, w, _ = videos.shape
    last = max(0, t - (clip_len - 1) * stride - 1)
    centre = np.array([[(h - size) // 2, (w - size) // 2]] * n)
    logits, feats = 0.0, 0.0
    model.eval()
    with torch.no_grad():
        for start in np.linspace(0, last, n_clips).round().astype(int):
            lo, fe = [], []
            for b in range(0, n, batch):
                x = _clips(
                    videos[b : b + batch],
                    np.full(n, start)[b : b + batch],
                    clip_len,
                    stride,
                    size,
                    centre[b : b + batch],
                    [False] * len(videos[b : b + batch]),
                )
                out = model(x)
                lo.append(out[0])
                fe.append(out[1])
            logits = logits + torch.cat(lo)
            feats = feats + torch.cat(fe)
    return logits / n_clips, F.normalize(feats, dim=1)


def train_and_eval(train, test, classes: int, args, clip_len: int, desc: str) -> dict[str, Any]:
    """Train TinyC3D on (videos, labels) `train`, report test accuracy and kNN R@1 (test -> train)."""
    (xtr, ytr), (xte, yte) = train, test
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    model = TinyC3D(classes, args.channels).to(memory_format=torch.channels_last_3d)
    steps_per_epoch = int(np.ceil(len(xtr) / args.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    n, t, h, w, _ = xtr.shape
    last = max(0, t - (clip_len - 1) * args.stride - 1)
    t0 = time.perf_counter()
    for _ in tqdm(range(args.epochs), desc=desc, unit="epoch"):
        model.train()
        order = rng.permutation(n)
        for b in range(0, n, args.batch_size):
            idx = order[b : b + args.batch_size]
            starts = rng.integers(0, last + 1, len(idx))
            offsets = np.stack(
                [rng.integers(0, h - args.size + 1, len(idx)), rng.integers(0, w - args.size + 1, len(idx))],
                1,
            )
            flips = rng.random(len(idx)) < (0.0 if args.no_hflip else 0.5)
            x = _clips(xtr[idx], starts, clip_len, args.stride, args.size, offsets, flips)
            loss = F.cross_entropy(model(x)[0], torch.from_numpy(ytr[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    train_s = time.perf_counter() - t0
    _, ftr = _features(model, xtr, clip_len, args.stride, args.size, args.eval_clips, 64)
    logits, fte = _features(model, xte, clip_len, args.stride, args.size, args.eval_clips, 64)
    pred = logits.argmax(1).numpy()
    nearest = (fte @ ftr.T).argmax(1).numpy()
    return {
        "accuracy": round(float((pred == yte).mean()), 4),
        "knn_r1": round(float((ytr[nearest] == yte).mean()), 4),
        "per_class_accuracy": [round(float((pred[yte == c] == c).mean()), 3) for c in range(classes)],
        "final_train_loss": round(float(loss), 4),
        "train_seconds": round(train_s, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.data:
        root = Path(args.data)
        if not (root / "splits" / "classInd.txt").is_file():
            raise SystemExit(f"error: {root} is not a synthetic/UCF101-style folder (no splits/classInd.txt)")
    else:
        cfg = synthetic_config(args)
        name = f"syn_{cfg.num_classes}c_{cfg.train_per_class}x{cfg.test_per_class}_{cfg.frames}f_{cfg.height}x{cfg.width}_s{cfg.seed}"
        root = generate(Path(args.workdir) / name, cfg, workers=args.workers, overwrite=True)
    gen_s = time.perf_counter() - t0
    classes, train_items, test_items = _read_split(root)
    train = _load(train_items, args.size, "decode train")
    test = _load(test_items, args.size, "decode test")
    if train[0].shape[1] < (args.clip_len - 1) * args.stride + 1:
        raise SystemExit(f"error: videos of {train[0].shape[1]} frames are shorter than a clip")
    result: dict[str, Any] = {
        "data": str(root),
        "classes": classes,
        "num_train": len(train[1]),
        "num_test": len(test[1]),
        "video_shape": list(train[0].shape[1:4]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "bench")},
        "chance": round(1 / len(classes), 4),
        "generate_seconds": round(gen_s, 1),
    }
    result["motion"] = train_and_eval(train, test, len(classes), args, args.clip_len, "train RGB clips")
    if not args.no_static_control:
        result["static_control"] = train_and_eval(train, test, len(classes), args, 1, "train single frames")
    result["accuracy"] = result["motion"]["accuracy"]
    result["knn_r1"] = result["motion"]["knn_r1"]
    result["static_accuracy"] = result.get("static_control", {}).get("accuracy")
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    return result
