"""The loader benchmark runs both backends on real (tiny) shards and reports ratios that follow from its own
figures; no timing is asserted."""

from __future__ import annotations

import argparse
import json
import tempfile

import pytest

from data_prep import shards
from tests.eval.conftest import write_shard_set
from vicc_fast.bench import loader as L


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    L.add_arguments(p)
    return p.parse_args(argv)


def test_loader_bench_both_backends_with_peer(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the replicated scratch copy goes there
    root = write_shard_set(tmp_path / "set", [0, 1, 0, 1], [0, 1], ["A", "B"], frames=6).parent
    args = parse(
        ["--root", str(root), "--batch", "2", "--steps", "2", "--warmup", "0", "--repeat", "1",
         "--threads", "1", "--replicate", "2", "--peer", "orig=2.5", "--device", "cpu",
         "--set", "data.num_frames=4", "data.crop_size=16", "data.dtype=float32"]
    )  # fmt: skip
    res = L.run(args)
    for b in ("dali", "torch"):
        assert (
            res[b]["samples_per_s"] > 0 and res[b]["steps_per_epoch"] == 4
        )  # 8 replicated samples / batch 2
        assert res[f"ratio_{b}_over_orig"] == pytest.approx(res[b]["samples_per_s"] / 2.5)
        # two streams x two views per sample
        assert res[b]["clips_per_s"] == pytest.approx(4 * res[b]["samples_per_s"])
    assert res["ratio_dali_over_torch"] == pytest.approx(
        res["dali"]["samples_per_s"] / res["torch"]["samples_per_s"]
    )
    assert res["root"].startswith(str(tmp_path))
    m = json.loads((L.Path(res["root"]) / "manifest.json").read_text())
    assert m["splits"]["train"]["num_samples"] == 8
    keys = [k for sh in m["splits"]["train"]["shards"] for k in sh["keys"]]
    assert len(set(keys)) == 8 and keys[0] == shards.sample_key("train", 0)


def test_loader_bench_variants_measure_each_configuration(tmp_path, monkeypatch) -> None:
    """--variants: every backend under each configuration (the overrides reach the loader: a variant that
    cannot build fails), with the first variant's ratio to the others."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = write_shard_set(tmp_path / "set", [0, 1, 0, 1], [0, 1], ["A", "B"], frames=6).parent
    common = ["--root", str(root), "--batch", "2", "--steps", "1", "--warmup", "0", "--repeat", "1",
              "--threads", "1", "--device", "cpu", "--backend", "dali",
              "--set", "data.num_frames=4", "data.crop_size=16", "data.dtype=float32"]  # fmt: skip
    res = L.run(
        parse(
            [
                *common,
                "--variants",
                "rel:data.augment.color_jitter=released",
                "aff:data.augment.color_jitter=affine",
            ]
        )
    )
    assert res["variants"] == {
        "rel": ["data.augment.color_jitter=released"],
        "aff": ["data.augment.color_jitter=affine"],
    }
    assert res["ratio_dali_rel_over_aff"] == pytest.approx(
        res["dali/rel"]["samples_per_s"] / res["dali/aff"]["samples_per_s"]
    )
    with pytest.raises(SystemExit, match="NAME:KEY=VALUE"):
        L.run(parse([*common, "--variants", "rel"]))
    with pytest.raises(Exception, match="color_jitter"):
        L.run(parse([*common, "--variants", "bad:data.augment.color_jitter=nope"]))


@pytest.mark.parametrize("bad", ["orig", "orig=x", "=3", "orig=-1"])
def test_bad_peer_is_one_line_error(bad: str) -> None:
    with pytest.raises(SystemExit, match="NAME=SAMPLES_PER_S"):
        L.parse_peer(bad)


def test_jpeg_lmdb_baseline_reads_what_the_shards_hold(tmp_path) -> None:
    """The released data path rebuilt from our shards (JPEG frames in LMDB): one LMDB entry per video with all
    its frames, and clips whose RGB and flow hold the same frames (the pattern set codes frame numbers)."""
    import numpy as np

    from data_prep.patterns import frames_from_code, make_set
    from vicc_fast import config
    from vicc_fast.bench.jpeg_lmdb import JpegLmdbLoader, build
    from vicc_fast.config import Stream
    from vicc_fast.data.augment import flow_values, rgb_values

    root = make_set(tmp_path / "codes", "codes", n_train=4, n_test=1)
    info = build(root, tmp_path / "lmdb")
    assert info["videos"] == 4 and info["lmdb_bytes_per_video"] > 0
    assert build(root, tmp_path / "lmdb") == info  # built once
    cfg = config.load(None, [f"data.root={root}", "data.num_frames=5", "data.stride=2", "data.crop_size=32",
                             "data.augment.color_jitter_prob=0", "data.augment.grayscale_prob=0", "data.threads=1",
                             "train.batch_size=2"])  # fmt: skip
    ld = JpegLmdbLoader(tmp_path / "lmdb", cfg, (Stream.rgb, Stream.flow), 2)
    batches = list(ld)
    assert len(batches) == len(ld) == 2
    for b in batches:
        for v in range(2):
            r, f = b.views[Stream.rgb][v], b.views[Stream.flow][v]
            assert r.shape == f.shape == (2, 3, 5, 32, 32)
            fr = frames_from_code(rgb_values(r).mean(axis=(2, 3))[..., 0])
            # flow is normalised like RGB (ImageNet mean/std), as the released code does
            ff = frames_from_code(255 - flow_values(f, "imagenet").mean(axis=(2, 3))[..., 1])
            np.testing.assert_array_equal(fr, ff)
            np.testing.assert_array_equal(np.diff(fr, axis=1), 2)


def _grid_batches(tmp_path, *over: str) -> list:
    from data_prep.patterns import make_set
    from vicc_fast import config
    from vicc_fast.bench.jpeg_lmdb import JpegLmdbLoader, build
    from vicc_fast.config import Stream

    root = make_set(tmp_path / "grid", "grid", n_train=4, n_test=1)
    build(root, tmp_path / "lmdb")
    cfg = config.load(None, [f"data.root={root}", "data.num_frames=3", "data.crop_size=24", "data.threads=1",
                             "train.batch_size=4", *over])  # fmt: skip
    return list(JpegLmdbLoader(tmp_path / "lmdb", cfg, (Stream.rgb, Stream.flow), 2))


def test_jpeg_lmdb_augments_rgb_and_flow_as_one_sequence(tmp_path) -> None:
    """The released transform sees [rgb_i, flow_i] as one frame sequence: one crop and one flip for both, flow x
    not negated on a flip, flow normalised like RGB. On the grid pattern (RGB R = flow x, RGB G = flow y) the two
    streams then come out equal pixel for pixel; another window, flip or a negated x would break that."""
    import numpy as np

    from vicc_fast.config import Stream
    from vicc_fast.data.augment import flow_values, rgb_values

    for b in _grid_batches(
        tmp_path,
        "data.augment.color_jitter_prob=0",
        "data.augment.grayscale_prob=0",
        "data.augment.blur_prob=0",
    ):
        for v in range(2):
            r = rgb_values(b.views[Stream.rgb][v])[..., :2]
            f = flow_values(b.views[Stream.flow][v], "imagenet")[..., :2]
            assert np.abs(r - f).max() < 12  # JPEG and bicubic: a few levels; a mirrored ramp is off by ~100


def test_jpeg_lmdb_gives_flow_the_strong_augmentation(tmp_path) -> None:
    """With every view strong (controller off) and grayscale certain, flow gets the channel split too (the
    released code applies the base transform to flow frames as images): its three channels are one."""
    import numpy as np

    from vicc_fast.config import Stream
    from vicc_fast.data.augment import flow_values

    over = [
        "data.augment.aug_controller=false",
        "data.augment.grayscale_prob=1",
        "data.augment.color_jitter_prob=0",
        "data.augment.blur_prob=0",
    ]
    for b in _grid_batches(tmp_path, *over):
        f = flow_values(b.views[Stream.flow][0], "imagenet")
        assert np.abs(f - f[..., :1]).max() < 1e-3


def test_loader_bench_three_backends(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = write_shard_set(tmp_path / "set", [0, 1, 0, 1], [0, 1], ["A", "B"], frames=6).parent
    args = parse(
        ["--root", str(root), "--batch", "2", "--steps", "1", "--warmup", "0", "--repeat", "1",
         "--threads", "1", "--device", "cpu", "--backends", "dali,jpeg_lmdb",
         "--set", "data.num_frames=4", "data.crop_size=16", "data.dtype=float32"]
    )  # fmt: skip
    res = L.run(args)
    assert res["jpeg_lmdb"]["samples_per_s"] > 0 and res["jpeg_lmdb_build"]["videos"] == 4
    assert res["ratio_dali_over_jpeg_lmdb"] == pytest.approx(
        res["dali"]["samples_per_s"] / res["jpeg_lmdb"]["samples_per_s"]
    )
    with pytest.raises(SystemExit, match="unknown"):
        L.run(parse(["--root", str(root), "--backends", "dali,nope"]))


def test_jpeg_lmdb_single_stream_reads_only_its_own_stream(tmp_path) -> None:
    """A single-stream run is the released stage-1 dataset: it opens, reads and decodes its own stream's LMDB
    only (decoding both, as the two-stream dataset does, doubled the RGB-only baseline's work). With the flow
    LMDB gone, RGB-only still iterates and two-stream fails naming it."""
    import shutil

    from data_prep.patterns import make_set
    from vicc_fast import config
    from vicc_fast.bench.jpeg_lmdb import JpegLmdbLoader, build
    from vicc_fast.config import Stream

    root = make_set(tmp_path / "grid", "grid", n_train=4, n_test=1)
    build(root, tmp_path / "lmdb")
    shutil.rmtree(tmp_path / "lmdb" / "flow.lmdb")
    cfg = config.load(None, [f"data.root={root}", "data.num_frames=3", "data.crop_size=24", "data.threads=1",
                             "train.batch_size=2"])  # fmt: skip
    batches = list(JpegLmdbLoader(tmp_path / "lmdb", cfg, (Stream.rgb,), 2))
    assert len(batches) == 2 and set(batches[0].views) == {Stream.rgb}
    assert batches[0].views[Stream.rgb][1].shape == (2, 3, 3, 24, 24)
    with pytest.raises(Exception, match="flow.lmdb"):
        list(JpegLmdbLoader(tmp_path / "lmdb", cfg, (Stream.rgb, Stream.flow), 2))
