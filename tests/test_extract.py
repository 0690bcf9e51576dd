"""``python -m vicc_fast.extract``: features of a folder of videos (built on the fly, flow included) or of a
shard set, as .npz with the video ids and the settings; bad videos as the build reports them; reruns resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_prep import synthetic
from tests.eval.conftest import save_tiny_ckpt, write_shard_set
from vicc_fast import checkpoint as ckpt
from vicc_fast.eval.features import clip_rows
from vicc_fast.eval.inputs import load_checkpoint
from vicc_fast.extract import main

SMALL = ["data.num_frames=4", "data.crop_size=16", "train.amp='off'", "eval.batch_size=4"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Three synthetic videos in nested folders (data_prep's renderer, encoded as AVI)."""
    root = tmp_path_factory.mktemp("videos")
    for i, rel in enumerate(["a/x.avi", "a/y.avi", "b/c/z.avi"]):
        v = synthetic.render_video(i, i, frames=10, height=24, width=32)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(synthetic.encode_avi(v.frames, 25))
    return root


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shard_set(root, [0, 1, 2, 0, 1, 2], [0, 1, 2, 2], ["Walk", "Run", "Jump"])
    return root


def _run(tmp_path):
    run = tmp_path / "run"
    save_tiny_ckpt(ckpt.phase_path(run, "flow1"), ["rgb1", "flow1"])
    return run


def _load(out):
    with np.load(out, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}, json.loads(str(z["meta"]))


def test_video_folder_clip_and_video_features(tmp_path, videos, capsys):
    run = _run(tmp_path)
    out = tmp_path / "clips.npz"
    argv = ["--ckpt", str(run), "--phase", "flow1", "--videos", str(videos), "--out", str(out), "--level", "clip",
            "--clips", "2", "--height", "24", "--width", "32", "--no-progress", *SMALL]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    z, meta = _load(out)
    assert meta["stream"] == "flow" and meta["input"]["flow_method"] == "dis" and meta["clips_per_video"] == 2
    assert meta["layer"].startswith("encoder output") and meta["rejected"] == [] and not meta["l2"]
    assert sorted(set(z["video_ids"].tolist())) == ["a/x", "a/y", "b/c/z"]
    assert z["features"].shape == (6, 4) and z["clip_index"].tolist() == [0, 1] * 3
    # the rows are the encoder's output on the clips the eval loader reads (recomputed here from the shards)
    from vicc_fast.data.loader import build_loader
    from vicc_fast.eval.inputs import apply_overrides

    ck = load_checkpoint(ckpt.phase_path(run, "flow1"))
    cfg = apply_overrides(ck.cfg, [f"data.root={out}.work", "data.eval.windows=uniform", "data.eval.clips=2", "data.eval.color_jitter_prob=0",
                                   *SMALL])  # fmt: skip
    enc = ck.encoders[ck.trained_streams[-1]].eval()
    rows = []
    for b in build_loader(cfg, "train", "eval", (ck.trained_streams[-1],), 1, 0, 1, torch.device("cpu")):
        with torch.no_grad():
            rows += list(zip(b.index.tolist(), clip_rows(enc(b.views[ck.trained_streams[-1]][0]), False)))
    rows.sort(key=lambda r: r[0])
    torch.testing.assert_close(torch.from_numpy(z["features"]), torch.stack([r[1] for r in rows]))

    # video level with L2: the mean of the clip rows, normalised; a rerun is up to date, no work
    vout = tmp_path / "videos.npz"
    argv_v = [*argv[:7], str(vout), "--clips", "2", "--height", "24", "--width", "32", "--l2", "--no-progress",
              *SMALL]  # fmt: skip
    assert main(argv_v) == 0
    zv, _ = _load(vout)
    want = torch.nn.functional.normalize(torch.from_numpy(z["features"]).view(3, 2, 4).mean(1), dim=1)
    torch.testing.assert_close(torch.from_numpy(zv["features"]), want)
    capsys.readouterr()
    assert main(argv_v) == 0 and "up to date" in capsys.readouterr().out


def test_bad_video_stops_or_is_rejected_as_the_build_reports(tmp_path, videos, capsys):
    run = _run(tmp_path)
    bad = tmp_path / "vids"
    bad.mkdir()
    for p in videos.rglob("*.avi"):
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "broken.avi").write_bytes(b"not a video at all" * 10)
    base = ["--ckpt", str(run), "--phase", "flow1", "--videos", str(bad), "--clips", "1", "--height", "24",
            "--width", "32", "--no-progress", *SMALL]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "f.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "broken.avi" in err and "--skip-bad" in err
    assert main([*base, "--out", str(tmp_path / "g.npz"), "--skip-bad"]) == 0
    z, meta = _load(tmp_path / "g.npz")
    assert [r["video"].endswith("broken.avi") for r in meta["rejected"]] == [True]
    assert sorted(z["video_ids"].tolist()) == ["x", "y", "z"]


def test_shard_set_and_errors(tmp_path, tiny_shards, capsys):
    run = _run(tmp_path)
    out = tmp_path / "s.npz"
    argv = ["--ckpt", str(run), "--phase", "flow1", "--stream", "rgb", "--shards", str(tiny_shards), "--split",
            "test", "--clips", "1", "--no-progress", "--out", str(out), *SMALL]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    z, meta = _load(out)
    assert meta["stream"] == "rgb" and z["labels"].tolist() == [0, 1, 2, 2] and len(z["video_ids"]) == 4
    for bad, words in ((["--out", str(tmp_path / "s.csv")], ".npz"), (["--split", "val"], "'val'")):
        assert main([*argv, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and words in err


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in (
        "--ckpt",
        "--phase",
        "--stream",
        "--videos",
        "--shards",
        "--split",
        "--out",
        "--level",
        "--clips",
        "--crop",
        "--windows",
        "--l2-clip",
        "--l2",
        "--flow",
        "--skip-bad",
        "--device",
        "--force",
        "--no-progress",
    ):
        assert flag in out
