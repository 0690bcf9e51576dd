"""Single steps of the DALI graph (vicc_fast/data/dali.py), each in a tiny CPU pipeline of its own."""

from __future__ import annotations

import numpy as np
import pytest

from vicc_fast.config import DataConfig, DataEvalConfig, EvalWindows, FlowLayout, Stream

pytest.importorskip("nvidia.dali")


def _spec(data: DataConfig, *, train: bool = True, size: int = 8):
    from vicc_fast.data.dali import PipeSpec

    return PipeSpec(
        data=data, train=train, streams=(Stream.rgb, Stream.flow), num_views=2, height=size, width=size,
        half=False, nvdec=False, tencrop=False,
    )  # fmt: skip


def _const(batch: list[np.ndarray]):
    return lambda: batch  # no parameter: DALI would pass it the iteration


def _run(step, *batches: list[np.ndarray], layouts: tuple[str | None, ...] = ()):
    """``step(*inputs)`` in a CPU pipeline whose inputs are ``batches`` (each a list of per-sample arrays)."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=len(batches[0]), num_threads=1, device_id=None, seed=0)
    def pipe():
        ins = [
            fn.external_source(source=_const(b), batch=True, layout=lay)
            for b, lay in zip(batches, layouts or (None,) * len(batches))
        ]
        return step(*ins)

    p = pipe()
    p.build()
    (out,) = p.run()
    return [np.array(out[i]) for i in range(len(batches[0]))]


@pytest.mark.parametrize("layout", [FlowLayout.released, FlowLayout.xy0])
def test_flow_image_puts_the_planes_where_the_layout_says(layout):
    """[2T, c, c, 1] planes x_0, y_0, x_1, ... -> [T, c, c, 3]: released (128, y, x), xy0 (x, y, 0)."""
    from vicc_fast.data.dali import flow_image

    T, c = 3, 4
    spec = _spec(DataConfig(num_frames=T, crop_size=c, flow_layout=layout), size=c)
    planes = np.random.default_rng(0).integers(0, 256, (2 * T, c, c, 1), dtype=np.uint8)
    (out,) = _run(lambda x: flow_image(spec, x), [planes], layouts=("FHWC",))
    x, y = planes[0::2, ..., 0], planes[1::2, ..., 0]
    want = (np.full_like(x, 128), y, x) if layout is FlowLayout.released else (x, y, np.zeros_like(x))
    np.testing.assert_array_equal(out, np.stack(want, -1))


def test_crop_flip_resize_of_the_whole_frame_is_a_mirror():
    """The flip is a reversed ROI: the whole frame at its own size, flipped, is the mirrored frame."""
    from nvidia.dali import types

    from vicc_fast.data.dali import crop_flip_resize

    c = 6
    x = np.random.default_rng(1).integers(0, 256, (2, c, c, 3), dtype=np.uint8)
    window = (types.Constant(np.array([0, 0], np.int32)), types.Constant(np.array([c, c], np.int32)))

    def step(v, flip):
        return crop_flip_resize(v, flip, window, c, host_crop=False)

    out = _run(step, [x, x], [np.array(1, np.int32), np.array(0, np.int32)], layouts=("FHWC", None))
    np.testing.assert_allclose(out[0], x[:, :, ::-1], atol=1)
    np.testing.assert_allclose(out[1], x, atol=1)


def test_colour_map_is_one_affine_map_per_sample():
    from vicc_fast.data.dali import colour_map

    spec = _spec(DataConfig())
    spec.data.augment.grayscale_prob = 0.0  # one map per sample (not per frame)
    rng = np.random.default_rng(2)
    x = [rng.integers(0, 256, (2, 3, 3, 3), dtype=np.uint8) for _ in range(2)]
    m = [rng.normal(size=(3, 3)).astype(np.float32) for _ in range(2)]
    t = [rng.normal(size=3).astype(np.float32) for _ in range(2)]
    out = _run(lambda v, mm, tt: colour_map(spec, v, mm, tt), x, m, t, layouts=("FHWC", None, None))
    for i in range(2):
        np.testing.assert_allclose(out[i], x[i].astype(np.float64) @ m[i].T + t[i], rtol=1e-5, atol=1e-3)


def test_overlapping_eval_windows_are_the_released_sampler():
    """Per video: every half-overlapping window's frame indices back to back (windows.overlap_starts)."""
    from vicc_fast.data.dali import Graph, eval_indices
    from vicc_fast.data.windows import clip_indices, overlap_starts

    T, stride = 4, 1
    frames = np.array([4, 9, 13, 20])
    data = DataConfig(num_frames=T, stride=stride, eval=DataEvalConfig(windows=EvalWindows.overlap))
    g = Graph(_spec(data, train=False), "cpu", False, frames, None, None)
    index = [np.array(i, np.int64) for i in range(len(frames))]
    out = _run(lambda i: eval_indices(g, i), index)
    for n, got in zip(frames, out):
        np.testing.assert_array_equal(
            got, clip_indices(overlap_starts(int(n), T, stride), T, stride).reshape(-1)
        )


def test_same_start_views_share_their_start_and_stay_inside_the_video():
    from nvidia.dali import fn

    from vicc_fast.data.dali import draw_starts

    spec = _spec(DataConfig(num_frames=4, stride=2))  # span 7
    n = 16
    frames = [np.array(12.0, np.float32)] * n
    same = [np.array(i % 2, np.int32) for i in range(n)]
    out = _run(lambda f, s: fn.stack(*draw_starts(spec, f, s)), frames, same)
    starts = np.array(out)  # [n, views]
    assert ((starts >= 0) & (starts <= 12 - 7)).all()
    assert (starts[1::2, 0] == starts[1::2, 1]).all() and (starts[0::2, 0] != starts[0::2, 1]).any()
