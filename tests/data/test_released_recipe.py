"""The released recipe as the data defaults (issue 25 items 4, 5, 6, 8), through the loaders where the
behaviour lives: the flow image's channels (128, y, x), the grayscale channel drawn per frame, the released
random-resized crop (one try, uniform aspect with a swap, bicubic with antialiasing), and the paper configs
refusing data built another way."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.data.conftest import cfg_for, code, frames_from_code, make_set
from vicc_fast import config as C
from vicc_fast.config import Stream
from vicc_fast.data import augment
from vicc_fast.data.augment import crop_window, fold_flow, released_crop_window, rgb_values
from vicc_fast.data.loader import build_loader
from vicc_fast.data.manifest import DataError, check_recipe, load_manifest, recipe_mismatches

BOTH = (Stream.rgb, Stream.flow)
CPU = torch.device("cpu")
BACKENDS = ["dali", "torch"]


def released_cfg(root: Path, *overrides: str) -> C.Config:
    """cfg_for with the schema defaults of flow layout, crop and grayscale draw: the released recipe."""
    return cfg_for(root, *overrides, pinned=False)


def loader(cfg, mode="train", streams=BOTH, views=2):
    split = "train" if mode == "train" else "test"
    return build_loader(cfg, split, mode, streams, views, 0, 1, CPU)


# ---------------------------------------------------------------------------------------- 4. flow layout
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["released", "xy0"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_flow_image_layout_through_the_loader(codes_root, backend, layout, mode):
    """Codes set: flow x = code(frame), y = 255 - code(frame). Released layout (ViCC extract_ff.py writes BGR
    [x, y, 128], PIL reads RGB): channel 0 the constant 128 (zero motion grey), channel 1 = y, channel 2 = x;
    xy0: (x, y, 0). With the unit normalisation the constant channel is exactly 0 in both."""
    ours = () if layout == "released" else ("data.flow_layout=xy0",)  # released: the default
    cfg = released_cfg(codes_root, f"data.backend={backend}", *ours)
    b = next(iter(loader(cfg, mode)))
    rgb, flo = b.views[Stream.rgb][0], b.views[Stream.flow][0]
    frames = frames_from_code(rgb_values(rgb)[..., 0].mean(axis=(2, 3)))  # [B, T] (or [B, clips * T])
    x, y = code(frames)[..., None, None], (255 - code(frames))[..., None, None]
    v = augment.flow_values(flo, "imagenet", layout)  # the default normalisation undone: [B, T, h, w, 3]
    want = (np.full_like(x, 128), y, x) if layout == "released" else (x, y, np.zeros_like(x))
    for ch in range(3):
        np.testing.assert_allclose(v[..., ch], np.broadcast_to(want[ch], v.shape[:-1]), atol=2.5)
    unit = released_cfg(codes_root, f"data.backend={backend}", *ours, "data.flow_normalisation=unit")
    flo = next(iter(loader(unit, mode))).views[Stream.flow][0].float()
    assert torch.all(flo[:, 0 if layout == "released" else 2] == 0)


@pytest.mark.parametrize("layout", ["released", "xy0"])
def test_flip_negation_acts_on_the_x_channel_of_the_layout(layout):
    """data.augment.flow_flip_negate mirrors the motion: x -> 255 - x on x's channel (2 released, 0 xy0), nothing else."""
    m, t = fold_flow(np.eye(3)[None], np.zeros((1, 3)), np.ones(1, bool), "unit", layout)
    mean, std = augment.flow_norm("unit", layout)
    img = np.array([128.0, 200.0, 10.0]) if layout == "released" else np.array([10.0, 200.0, 0.0])
    out = (m[0] @ img + t[0]) * std + mean
    ix = 2 if layout == "released" else 0
    np.testing.assert_allclose(out[ix], 245.0, atol=1e-4)
    np.testing.assert_allclose(np.delete(out, ix), np.delete(img, ix), atol=1e-4)


# ------------------------------------------------------------------------------ 5. grayscale per frame
def _gray_channels(v: np.ndarray, layout_const: int, layout_h: int, layout_v: int) -> np.ndarray:
    """Grid frames [T, h, w, 3] all grayed: which source channel each frame copies (its index in the image's
    layout), from how the copied plane varies: along x (the horizontal ramp), along y (the vertical one), not
    at all (the constant)."""
    assert np.abs(v - v[..., :1]).max() < 1e-3, "a frame is not gray (all channels equal)"
    p = v[..., 0]
    along_x = np.abs(np.diff(p, axis=2)).mean(axis=(1, 2))
    along_y = np.abs(np.diff(p, axis=1)).mean(axis=(1, 2))
    return np.where(
        np.ptp(p, axis=(1, 2)) < 20, layout_const, np.where(along_x > along_y, layout_h, layout_v)
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per", ["frame", "view"])
def test_grayscale_channel_drawn_per_frame_as_released(grid_root, backend, per):
    """Released RandomGray (ViCC augmentation.py lines 203-216, seq_len = the [rgb_i, flow_i] sequence): whether
    to gray is one draw per view for both streams, the copied channel ``np.random.choice(3)`` per frame, RGB and
    flow frames alike. Grid set (RGB = (h ramp, v ramp, 128), flow x = h, y = v), every view grayed: per frame
    the channels vary within a clip and differ between its RGB and flow frames; per view one channel, the same
    layout index in both streams."""
    cfg = released_cfg(
        grid_root,
        f"data.backend={backend}",
        *(() if per == "frame" else ("data.augment.grayscale_per=view",)),  # frame: the default
        "data.augment.grayscale_prob=1",
        "data.augment.aug_controller=false",
        "data.augment.flow_photometric=true",
    )
    varied = differs = clips = 0
    for b in loader(cfg):
        for v in range(2):
            rgb = rgb_values(b.views[Stream.rgb][v])
            flo = augment.flow_values(b.views[Stream.flow][v], "imagenet", "released")
            for r, f in zip(rgb, flo):
                cr = _gray_channels(r, 2, 0, 1)  # RGB: (R = h, G = v, B = 128)
                cf = _gray_channels(f, 0, 2, 1)  # flow (128, y = v, x = h)
                clips += 1
                varied += len(set(cr.tolist())) > 1
                differs += bool((cr != cf).any())
                if per == "view":
                    assert len(set(cr.tolist())) == 1 and (cr == cf).all()
    if per == "frame":  # 8 frames: all one channel by chance with p 3^-7 per clip
        assert varied == clips and differs == clips


# ----------------------------------------------------------------------------------------- 6. the crop
def test_released_crop_is_one_try_else_the_whole_frame():
    """ViCC augmentation.py RandomSizedCrop under main_cross.py (consistent=False, lines 121-138) returns on its
    first try: a window that does not fit leaves the whole frame. On a 100 x 100 frame at 90 % area a window
    fits only for aspect in [0.9, 1.11] (36 %): the released rule gives the whole frame in ~64 % of draws,
    torchvision's 10 tries almost never."""
    n = 3000
    rng = np.random.default_rng(0)
    whole = [
        released_crop_window(rng, 100, 100, (0.9, 0.9), (0.75, 4 / 3)) == (0, 0, 100, 100) for _ in range(n)
    ]
    assert 0.58 < np.mean(whole) < 0.70
    rng = np.random.default_rng(0)
    whole = [crop_window(rng, 100, 100, (0.9, 0.9), (0.75, 4 / 3)) == (0, 0, 100, 100) for _ in range(n)]
    assert np.mean(whole) < 0.05


def test_crop_fallbacks_released_classifier_torchvision():
    """A window that never fits (95 % of a 60 x 100 frame, aspect at most 4/3 either way): the pretraining crop
    leaves the whole frame (one try, main_cross.py), the released classifier's crop (main_classifier.py,
    consistent=True: 10 tries) falls back to Scale + CenterCrop (the central 60 x 60 square), torchvision's to
    the central crop with the aspect clamped (60 x 80)."""
    from vicc_fast.data.augment import draw_crop_window

    args = (60, 100, (0.95, 0.95), (0.75, 4 / 3))
    rng = np.random.default_rng(2)
    assert draw_crop_window(rng, *args, "released") == (0, 0, 60, 100)
    assert draw_crop_window(rng, *args, "classifier") == (0, 20, 60, 60)
    assert draw_crop_window(rng, *args, "torchvision") == (0, 10, 60, 80)
    # where a window can fit, the classifier's 10 tries almost always find one (as torchvision's)
    whole = [
        draw_crop_window(rng, 100, 100, (0.9, 0.9), (0.75, 4 / 3), "classifier") == (0, 0, 100, 100)
        for _ in range(2000)
    ]
    assert np.mean(whole) < 0.05


def test_released_crop_aspect_is_uniform_with_a_swap():
    """Released: aspect uniform in the range, then w and h swapped with p 0.5 (lines 105, 124); torchvision:
    log-uniform, never swapped. With the range [1, 2] (windows always fit): released w/h < 1 in half the draws
    and max(w/h, h/w) has the uniform mean 1.5; torchvision never below 1, mean 1 / ln 2 = 1.443."""
    n = 6000
    for rule, below, mean in ((released_crop_window, 0.5, 1.5), (crop_window, 0.0, 1 / np.log(2))):
        rng = np.random.default_rng(1)
        hw = np.array([rule(rng, 20000, 20000, (0.01, 0.01), (1.0, 2.0))[2:] for _ in range(n)], float)
        r = hw[:, 1] / hw[:, 0]
        assert abs(np.mean(r < 1) - below) < 0.03
        assert abs(np.maximum(r, 1 / r).mean() - mean) < 0.012


@pytest.fixture(scope="module")
def noise_root(tmp_path_factory) -> Path:
    return make_set(tmp_path_factory.mktemp("noise"), "noise", n_train=2, n_test=2)


def _decoded_frame(root: Path) -> np.ndarray:
    """The first RGB frame of the set as the loaders decode it (every noise frame is the same)."""
    from vicc_fast.data.torch_loader import decode_window

    tar = sorted(root.glob("**/*.tar"))[0]
    with tarfile.open(tar) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("rgb.webm"))
        return decode_window(tf.extractfile(member).read(), 0, 1, False)[0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [16, 96])
def test_released_crop_resamples_as_pil_bicubic(noise_root, backend, size):
    """The released crop resizes with PIL's Image.BICUBIC (antialiased when shrinking). The window is the whole
    48 x 64 frame here (area 1, aspect 4/3), shrunk to 16 or enlarged to 96: the released crop matches PIL's
    bicubic resize of the decoded frame within a level on average (DALI: cubic with antialiasing; the
    DataLoader: torchvision's PIL-compatible bicubic), the torchvision crop (bilinear, no antialiasing) is
    several levels off it."""
    from PIL import Image

    ref = np.asarray(Image.fromarray(_decoded_frame(noise_root)).resize((size, size), Image.BICUBIC), float)
    errs = {}
    for crop in ("released", "torchvision"):
        cfg = released_cfg(
            noise_root,
            f"data.backend={backend}",
            *(() if crop == "released" else ("data.augment.crop=torchvision",)),  # released: the default
            "data.augment.crop_scale=[1,1]",
            "data.augment.aspect_ratio=[1.3333334,1.3333334]",
            "data.augment.hflip=false",
            f"data.crop_size={size}",
        )
        b = next(iter(loader(cfg, streams=(Stream.rgb,), views=1)))
        errs[crop] = np.abs(rgb_values(b.views[Stream.rgb][0]) - ref).mean()
    assert errs["released"] < 1.2 and errs["torchvision"] > 3.0, errs


@pytest.mark.parametrize("backend", BACKENDS)
def test_released_windows_are_shared_by_a_views_streams(grid_root, backend):
    """Released crop windows are drawn on the host (DALI: ViewSource win_<stream>) and shared by RGB view i and
    flow view i: on the grid set RGB (R, G) equal flow (x, y) = channels (2, 1) of the released flow image."""
    cfg = released_cfg(grid_root, f"data.backend={backend}", "data.augment.crop_scale=[0.2,0.6]")
    n = 0
    for b in loader(cfg):
        for v in range(2):
            rgb = rgb_values(b.views[Stream.rgb][v])
            flo = augment.flow_values(b.views[Stream.flow][v], "imagenet", "released")
            assert np.abs(rgb[..., 0] - flo[..., 2]).mean(axis=(1, 2, 3)).max() < 4
            assert np.abs(rgb[..., 1] - flo[..., 1]).mean(axis=(1, 2, 3)).max() < 4
            assert np.abs(flo[..., 0] - 128).max() < 1
            n += len(rgb)
    assert n == 8 * 2


# ------------------------------------------------------------------------------ 8. the data's recipe
def _with_recipe(root: Path, tmp_path: Path, **video: object) -> Path:
    """A copy of ``root``'s manifest (shards linked) whose build claims other settings."""
    out = tmp_path / "claimed"
    out.mkdir()
    raw = json.loads((root / "manifest.json").read_text())
    for p in root.iterdir():
        if p.name != "manifest.json":
            (out / p.name).symlink_to(p)
    raw["video"].update({k: v for k, v in video.items() if k in ("height", "width")})
    raw["settings"].update({k: v for k, v in video.items() if k not in ("height", "width")})
    (out / "manifest.json").write_text(json.dumps(raw))
    return out


def test_paper_configs_refuse_data_of_another_recipe(codes_root, tmp_path):
    """A paper config over a 48 x 64 set with flow at the stored size: training, the loaders and evaluation
    all stop with one error naming the manifest and the mismatches; data.require_recipe=none accepts it."""
    from vicc_fast.eval.inputs import EvalInputError, check_dataset
    from vicc_fast.train import ensure_data

    paper = C.load(C.CONFIG_DIR / "ucf101_s3d.yaml", [f"data.root={codes_root}"])
    manifest = str(codes_root / "manifest.json")
    with pytest.raises(DataError, match="48x64, released 240x320") as e:
        ensure_data(paper, True)
    assert (
        manifest in str(e.value)
        and "source resolution" in str(e.value)
        and "require_recipe=none" in str(e.value)
    )
    with pytest.raises(DataError, match="not the released data recipe"):
        loader(cfg_for(codes_root, "data.require_recipe=released"), "eval")
    with pytest.raises(EvalInputError, match="48x64"):
        check_dataset(codes_root, paper.data.require_recipe.value)
    ensure_data(
        C.load(C.CONFIG_DIR / "ucf101_s3d.yaml", [f"data.root={codes_root}", "data.require_recipe=none"]),
        True,
    )
    check_dataset(codes_root, "none")
    # the released build: 240x320, TV-L1 (or its PyTorch port) between the source frames
    ok = _with_recipe(codes_root, tmp_path, height=240, width=320, flow_at="source", flow_method="tvl1")
    m = load_manifest(ok)
    m.flow["method"] = "tvl1-torch"
    assert recipe_mismatches(m) == []
    check_recipe(m, "released")
    m.settings["flow_short_side"] = 128
    assert recipe_mismatches(m) == [
        "flow computed with the shorter side capped at 128, released at the source resolution"
    ]
