"""TV-L1 in PyTorch (data_prep.flow_torch): each block against OpenCV, known motions against the truth and
against OpenCV's TV-L1, batch = one by one, the build path.

Bounds (end-point error, px, on 64x86 frames): a translation or rotation within 0.1 of the truth away from the
border, and within 0.05 of OpenCV's TV-L1 on average; on the synthetic set's ground truth, our EPE within 5 %
(+ 0.005 px) of OpenCV's, and the mean EPE between the two flows below 0.05. Measured: 0.000-0.012.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data_prep import build, flow_torch, shards
from data_prep.flow import FlowError, compute_flow, endpoint_error
from data_prep.flow_torch import (
    TVL1Params,
    centered_gradient,
    divergence,
    forward_gradient,
    median_blur,
    median_blur_sort,
    pyramid_sizes,
    resize_linear,
    rgb_to_grey,
    tvl1,
    warp_bicubic,
)
from data_prep.sources import load_records
from data_prep.synthetic import render_video
from tests.data_prep.conftest import make_ucf_layout

H, W = 64, 86


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on 2 shared, busy cores, OpenMP threads waiting on each other made the batched
    test 8x slower than on one thread (measured 125 s against 15 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """[h, w] float32 grey in [0, 255]: smooth random texture, trackable by a flow method."""
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2.0)
    return ((t - t.min()) / np.ptp(t) * 255).astype(np.float32)


def _opencv_tvl1(i0: np.ndarray, i1: np.ndarray) -> np.ndarray:
    return cv2.optflow.DualTVL1OpticalFlow_create().calc(i0, i1, None)


def _ours(i0: np.ndarray, i1: np.ndarray) -> np.ndarray:
    return tvl1(torch.from_numpy(i0)[None], torch.from_numpy(i1)[None])[0].numpy()


# ----------------------------------------------------------------------------------- building blocks
def test_grey_conversion_is_opencvs():
    rgb = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        rgb_to_grey(torch.from_numpy(rgb)).numpy(), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    )


def test_pyramid_sizes_follow_opencv_resize():
    img = np.zeros((240, 320), np.float32)
    sizes = [img.shape]
    for _ in range(4):
        img = cv2.resize(img, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
        sizes.append(img.shape)
    assert pyramid_sizes(240, 320) == sizes
    assert pyramid_sizes(128, 171) == [(128, 171), (102, 137), (82, 110), (66, 88), (53, 70)]
    assert pyramid_sizes(24, 31) == [(24, 31), (19, 25)]  # 15 px: OpenCV drops the level


def test_resize_matches_opencv():
    img = _texture(H, W)
    down = resize_linear(torch.from_numpy(img), (51, 69), (1.25, 1.25)).numpy()
    np.testing.assert_allclose(down, cv2.resize(img, None, fx=0.8, fy=0.8), atol=1e-3)
    small = cv2.resize(img, None, fx=0.8, fy=0.8)
    up = resize_linear(torch.from_numpy(small), (H, W)).numpy()
    np.testing.assert_allclose(up, cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR), atol=1e-3)


def test_bicubic_warp_matches_remap_with_zero_border():
    img = _texture(H, W)
    rng = np.random.default_rng(1)
    fl = np.stack(
        [cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (0, 0), 4) * 20 for _ in "xy"]
    )
    fl[0, :, :8] -= 4.3  # samples left of the image: taps outside count as 0
    mx = (np.arange(W)[None] + fl[0]).astype(np.float32)
    my = (np.arange(H)[:, None] + fl[1]).astype(np.float32)
    ref = cv2.remap(img, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ours = warp_bicubic(torch.from_numpy(img)[None, None], torch.from_numpy(fl)[None])[0, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=0.02)  # grey levels 0-255


@pytest.mark.parametrize("ksize", [3, 5])
def test_median_network_and_sort_are_cv2_median_blur(ksize):
    x = np.random.default_rng(2).normal(size=(2, 37, 41)).astype(np.float32)
    x[0, 5:9, 5:9] = 0.25  # ties
    ref = np.stack([cv2.medianBlur(c, ksize) for c in x])
    np.testing.assert_array_equal(median_blur(torch.from_numpy(x), ksize).numpy(), ref)
    np.testing.assert_array_equal(median_blur_sort(torch.from_numpy(x), ksize).numpy(), ref)


def test_median_network_for_7x7_equals_sorting():  # cv2.medianBlur takes float images only up to 5x5
    x = torch.from_numpy(np.random.default_rng(5).normal(size=(3, 30, 33)).astype(np.float32))
    torch.testing.assert_close(median_blur(x, 7), median_blur_sort(x, 7), atol=0, rtol=0)


def test_gradients_and_divergence_follow_opencv_borders():
    img = torch.from_numpy(_texture(9, 11))
    g = centered_gradient(img[None])[0]
    assert torch.allclose(g[0, 3, 0], 0.5 * (img[3, 1] - img[3, 0]))  # half the one-sided difference
    assert torch.allclose(g[1, 4, 5], 0.5 * (img[5, 5] - img[3, 5]))
    f = forward_gradient(img)
    assert (f[0, :, -1] == 0).all() and (f[1, -1, :] == 0).all()
    # -div is the adjoint of the forward gradient for duals that vanish where the gradient does
    p = torch.randn(2, 9, 11, dtype=torch.float64)
    p[0, :, -1], p[1, -1, :] = 0, 0
    u = torch.randn(9, 11, dtype=torch.float64)
    assert torch.allclose((forward_gradient(u) * p).sum(), -(u * divergence(p)).sum())


def test_bad_inputs_are_clear_errors():
    x = torch.zeros(2, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="gamma"):
        tvl1(x, x, TVL1Params(gamma=0.1))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        tvl1(x, x[0])
    with pytest.raises(ValueError, match="too small"):
        tvl1(x[:, :8], x[:, :8])
    with pytest.raises(FlowError, match="too small"):
        compute_flow(np.zeros((2, 12, 40, 3), np.uint8), "tvl1-torch", device="cpu")


# --------------------------------------------------------------------------------------- known motion
def _check_known_motion(i0: np.ndarray, i1: np.ndarray, truth: np.ndarray) -> None:
    ours, ref = _ours(i0, i1), _opencv_tvl1(i0.astype(np.uint8), i1.astype(np.uint8))
    inner = (slice(8, -8), slice(8, -8))  # the border has pixels that moved in from outside
    assert endpoint_error(ours[inner], truth[inner]) < 0.1
    assert endpoint_error(ours, ref) < 0.05
    assert (
        endpoint_error(ours[inner], truth[inner]) <= 1.05 * endpoint_error(ref[inner], truth[inner]) + 0.005
    )


def test_translation():
    big = _texture(H + 20, W + 20, seed=3)
    dx, dy = 2.5, -1.5  # content moves right and up
    m0 = np.float32([[1, 0, -10], [0, 1, -10]])
    m1 = np.float32([[1, 0, -10 + dx], [0, 1, -10 + dy]])
    i0 = np.rint(cv2.warpAffine(big, m0, (W, H), flags=cv2.INTER_CUBIC)).clip(0, 255).astype(np.uint8)
    i1 = np.rint(cv2.warpAffine(big, m1, (W, H), flags=cv2.INTER_CUBIC)).clip(0, 255).astype(np.uint8)
    truth = np.broadcast_to(np.float32([dx, dy]), (H, W, 2))
    _check_known_motion(i0, i1, truth)


def test_rotation():
    img = _texture(H, W, seed=4)
    centre, angle = ((W - 1) / 2, (H - 1) / 2), 4.0
    rot = cv2.getRotationMatrix2D(centre, angle, 1.0)  # maps frame-0 points to frame-1 points
    i0 = np.rint(img).astype(np.uint8)
    i1 = np.rint(cv2.warpAffine(img, rot, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    moved = np.stack(
        [rot[0, 0] * xx + rot[0, 1] * yy + rot[0, 2], rot[1, 0] * xx + rot[1, 1] * yy + rot[1, 2]], -1
    )
    truth = (moved - np.stack([xx, yy], -1)).astype(np.float32)
    _check_known_motion(i0, i1.clip(0, 255).astype(np.uint8), truth)


@pytest.fixture(scope="module")
def synthetic_pairs():
    """Grey (I0, I1, ground-truth flow) of the synthetic set's motion classes: slide, spin, zoom, circle."""
    out = []
    for c in (0, 2, 3, 5):
        v = render_video(c, 40 + c, frames=2, height=H, width=W, flow=True)
        grey = rgb_to_grey(torch.from_numpy(v.frames)).numpy()
        out.append((grey[0], grey[1], v.flow[0].astype(np.float32)))
    return out


def test_synthetic_ground_truth_within_5_percent_of_opencv(synthetic_pairs):
    ours, theirs, between = [], [], []
    for i0, i1, gt in synthetic_pairs:
        a, b = _ours(i0, i1), _opencv_tvl1(i0, i1)
        ours.append(endpoint_error(a, gt))
        theirs.append(endpoint_error(b, gt))
        between.append(endpoint_error(a, b))
    assert np.mean(ours) <= 1.05 * np.mean(theirs) + 0.005, (ours, theirs)
    assert np.mean(between) < 0.05, between


def test_a_batch_equals_its_pairs_one_by_one(synthetic_pairs):
    """Pairs converge after different numbers of steps: each must stop on its own inside a batch."""
    i0 = torch.from_numpy(np.stack([p[0] for p in synthetic_pairs]))
    i1 = torch.from_numpy(np.stack([p[1] for p in synthetic_pairs]))
    # fewer levels and warps: the same stopping logic in a quarter of the time
    prm = TVL1Params(nscales=3, warps=2)
    batch = tvl1(i0, i1, prm)
    alone = torch.stack([tvl1(i0[k : k + 1], i1[k : k + 1], prm)[0] for k in range(len(synthetic_pairs))])
    torch.testing.assert_close(batch, alone, atol=1e-4, rtol=0)


def test_compaction_runs_fewer_rows_for_the_same_flow(synthetic_pairs, monkeypatch):
    """Once pairs stop, a warp runs only the others: bit-identical flow, fewer pixel-steps of the inner step."""
    i0 = torch.from_numpy(np.stack([p[0] for p in synthetic_pairs]))
    i1 = torch.from_numpy(np.stack([p[1] for p in synthetic_pairs]))
    prm = TVL1Params(nscales=3, warps=2)
    step = flow_torch.masked_tv_step
    rows: list[int] = []

    def counted(u, p, active, *rest):
        rows.append(u.shape[0])
        return step(u, p, active, *rest)

    monkeypatch.setattr(flow_torch, "masked_tv_step", counted)
    full = tvl1(i0, i1, prm, compact=False)
    full_rows, rows[:] = list(rows), []
    compacted = tvl1(i0, i1, prm, compact=True)
    torch.testing.assert_close(compacted, full, atol=0, rtol=0)
    assert set(full_rows) == {4}
    assert min(rows) == 2  # never one row: torch.compile would specialise it
    assert sum(rows) < 0.9 * sum(full_rows), (sum(rows), sum(full_rows))


def test_compute_flow_tvl1_torch_is_the_drop_in():
    frames = render_video(3, 7, frames=3, height=48, width=64).frames
    out = compute_flow(frames, "tvl1-torch", device="cpu")
    assert out.shape == (3, 48, 64, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[-1], out[-2])
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    assert endpoint_error(out[0], _opencv_tvl1(grey[0], grey[1])) < 0.05


@pytest.mark.slow
def test_compiled_path_equals_eager(synthetic_pairs, monkeypatch):
    """torch.compile fuses the inner step (tens of seconds to compile on 2 cores: slow). One graph serves every
    level, batch size and compacted run: a recompile (each costs a build worker tens of seconds) is an error."""
    sizes: list[int] = []
    compact = flow_torch._Run.compact
    monkeypatch.setattr(flow_torch._Run, "compact", lambda run: sizes.append(len(run.rows)) or compact(run))
    i0 = torch.from_numpy(np.stack([p[0] for p in synthetic_pairs]))
    i1 = torch.from_numpy(np.stack([p[1] for p in synthetic_pairs]))
    # two levels: at these small frames a coarser level would cross a size guard of inductor's (2 x H x W <=
    # 4096 values), a recompile that frames of 128x171 and more never meet
    prm = TVL1Params(nscales=2)
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = tvl1(i0, i1, prm, compile=True)
        one = tvl1(i0[:1], i1[:1], prm, compile=True)  # a batch of one runs as two copies under compile
    assert 4 in sizes  # the 4-pair batch was compacted
    torch.testing.assert_close(compiled, tvl1(i0, i1, prm), atol=1e-3, rtol=0)
    torch.testing.assert_close(one, tvl1(i0[:1], i1[:1], prm), atol=1e-3, rtol=0)


# ------------------------------------------------------------------------------------------ the build
def test_build_with_tvl1_torch_on_cpu_is_resumable(tmp_path):
    root = make_ucf_layout(tmp_path / "src", train_per_class=1, test_per_class=1, frames=4)
    kw = {
        "flow_method": "tvl1-torch",
        "height": 32,
        "width": 43,
        "workers": 1,
        "progress": False,
        "log": lambda *_: None,
        "flow_device": build.FlowDevice("cpu", compile=False),
    }
    first = build.build(load_records("ucf101", root), tmp_path / "out", **kw)
    assert first.processed == 4 and first.rejected == []
    assert shards.load_manifest(tmp_path / "out")["flow"] == {"method": "tvl1-torch", "bound": 20}
    again = build.build(load_records("ucf101", root), tmp_path / "out", **kw)
    assert (again.processed, again.reused) == (0, 4)


def test_cli_has_device_and_compile_flags():
    a = build.parse_args(["--source", "ucf101", "--out", "x", "--flow", "tvl1-torch", "--device", "cpu"])
    assert (a.flow, a.device, a.flow_compile) == ("tvl1-torch", "cpu", True)
    assert build.parse_args(["--source", "ucf101", "--out", "x", "--no-flow-compile"]).flow_compile is False
    assert flow_torch.default_device() in ("cuda", "cpu")


def test_build_chunks_tvl1_torch_pairs_without_changing_the_flow(tmp_path):
    """process_video streams a video and hands tvl1-torch its pairs in chunks (8 on the CPU): a video longer
    than a chunk gives the same stored flow bytes as the flow of its whole frame array."""
    from data_prep import codec
    from data_prep.build import FlowDevice, VideoSettings, process_video, read_video
    from data_prep.flow import compute_flow, quantize_flow
    from data_prep.flow_torch import default_batch
    from data_prep.sources import Record
    from tests.data_prep.conftest import moving_frames, write_video

    t = default_batch("cpu") * 2 + 3  # two full chunks and a remainder
    src = write_video(tmp_path / "v.avi", moving_frames(t=t, h=32, w=40))
    settings = VideoSettings(height=32, width=40, flow_method="tvl1-torch")
    meta = process_video(
        Record(src, 0, "c0", "train", "v"), tmp_path / "work", settings, False, FlowDevice("cpu", False)
    )
    frames, fps, _ = read_video(src, 32, 40)
    assert meta["frames"] == meta["flow_frames"] == t
    want = codec.encode_flow(quantize_flow(compute_flow(frames, "tvl1-torch", device="cpu")), fps=fps)
    got = (tmp_path / "work").rglob("flow.webm")
    assert [p.read_bytes() for p in got] == [want]


def _assigned_device(_: int) -> tuple[int, str | None]:
    import os
    import time

    time.sleep(0.5)  # hold this worker so the next task starts the other one
    return os.getpid(), build._worker_job.device


def test_devices_parsing_and_one_worker_per_gpu():
    """--devices and the pool's GPU assignment (issue 27). The assignment runs the real spawn pool with the
    real initializer; it only names devices, so it runs here without a GPU."""
    import concurrent.futures as cf
    import multiprocessing as mp

    assert build.parse_devices(None, 4) == ("cuda:0", "cuda:1", "cuda:2", "cuda:3")
    assert build.parse_devices("2, cuda:0", 4) == ("cuda:2", "cuda:0")
    for spec, why in (
        ("4", "not visible"),
        ("0,0", "named twice"),
        ("gpu0", "expected GPU indices"),
        ("", "expected GPU indices"),
    ):
        with pytest.raises(build.BuildError, match=why):
            build.parse_devices(spec, 4)
    with pytest.raises(build.BuildError, match="no GPU is visible"):
        build.parse_devices(None, 0)
    assert [build.worker_device(i, ("cuda:1", "cuda:3")) for i in range(5)] == [
        "cuda:1", "cuda:3", "cuda:1", "cuda:3", "cuda:1"
    ]  # fmt: skip
    ctx = mp.get_context("spawn")
    job = build.VideoJob(Path("work"), build.VideoSettings(32, 40, "tvl1-torch"), False,
                         build.FlowDevice("cuda", True, ("cuda:1", "cuda:3")))  # fmt: skip
    init = (os.getpid(), job, ctx.Value("i", 0))
    with cf.ProcessPoolExecutor(2, mp_context=ctx, initializer=build._worker_init, initargs=init) as pool:
        got = dict(pool.map(_assigned_device, range(4)))
    assert sorted(got.values()) == ["cuda:1", "cuda:3"]  # two workers, one on each GPU


def test_cli_devices_need_cuda(tmp_path, capsys):
    args = [
        "--source",
        "folder",
        "--root",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--flow",
        "tvl1-torch",
    ]
    assert build.main([*args, "--device", "cpu", "--devices", "0"]) == 2
    assert "--devices applies to --device cuda only" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert build.main([*args, "--device", "cuda", "--devices", "0"]) == 2
        assert "cuda:0 is not visible (0 GPU(s) visible)" in capsys.readouterr().err
