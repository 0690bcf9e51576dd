"""Shard writer: tar layout, DALI index (read by DALI's webdataset reader), manifest, atomic writes."""

from __future__ import annotations

import json
import os
import tarfile

import numpy as np
import pytest

from data_prep import codec, shards
from tests.data_prep.conftest import moving_frames, realistic_flow

pytest.importorskip("nvidia.dali")
from nvidia.dali import fn, pipeline_def, types  # noqa: E402


def make_samples(n: int, split: str = "train", t: int = 6) -> list[shards.Sample]:
    out = []
    for i in range(n):
        rgb = codec.encode_rgb(moving_frames(t=t, h=16, w=21, seed=i))
        flow = codec.encode_flow(realistic_flow(t=t, h=16, w=21, seed=i))
        key = shards.sample_key(split, i)
        meta = {"key": key, "label": i % 3, "index": i, "frames": t, "flow_frames": t, "split": split}
        out.append(shards.Sample(key=key, rgb=rgb, flow=flow, label=i % 3, index=i, meta=meta))
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    samples = make_samples(5)
    infos = shards.write_split(out, "train", samples, shard_size=2)
    return out, samples, infos


def test_shard_names_counts_and_hashes(written):
    out, samples, infos = written
    assert [i.tar for i in infos] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert [i.index for i in infos] == ["train-000000.idx", "train-000001.idx", "train-000002.idx"]
    assert [i.num_samples for i in infos] == [2, 2, 1]
    assert sum((i.keys for i in infos), []) == [s.key for s in samples] == [f"train{i:06d}" for i in range(5)]
    for i in infos:
        assert shards.sha256_file(out / i.tar) == i.sha256
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_tar_members_and_roundtrip(written):
    out, samples, _ = written
    with tarfile.open(out / "train-000000.tar") as tf:
        assert tf.getnames() == [
            f"train00000{i}.{ext}" for i in range(2) for ext in ("rgb.webm", "flow.webm", "lbl", "json")
        ]
    got = dict(shards.iter_tar_samples(out / "train-000001.tar"))
    s = samples[3]
    assert got[s.key]["rgb.webm"] == s.rgb and got[s.key]["flow.webm"] == s.flow
    assert shards.decode_label(got[s.key]["lbl"]) == (s.label, s.index)
    assert json.loads(got[s.key]["json"]) == s.meta


def test_index_matches_tar_layout(written):
    """Our index equals the one recomputed from the tar with tarfile's offsets (what wds2idx writes)."""
    out, _, infos = written
    for i in infos:
        text = (out / i.index).read_text()
        assert text == shards.dali_index_of_tar(out / i.tar)
        lines = text.splitlines()
        assert lines[0] == f"v1.2 {i.num_samples}"
        assert lines[1].split()[:4][0] == "rgb.webm" and lines[1].split()[3].endswith(".rgb.webm")
        # offsets point at the member bytes
        raw = (out / i.tar).read_bytes()
        ext, off, size, name = lines[1].split()[4:8]
        with tarfile.open(out / i.tar) as tf:
            assert raw[int(off) : int(off) + int(size)] == tf.extractfile(name).read()


def test_dali_webdataset_reader_reads_shards_with_index(written):
    out, samples, infos = written
    tars = [str(out / i.tar) for i in infos]
    idxs = [str(out / i.index) for i in infos]

    @pipeline_def(batch_size=5, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        rgb, flow, lbl = fn.readers.webdataset(
            paths=tars,
            index_paths=idxs,
            ext=["rgb.webm", "flow.webm", "lbl"],
            dtypes=[types.UINT8, types.UINT8, types.INT64],
            missing_component_behavior="error",
            random_shuffle=False,
        )
        clip = fn.decoders.video(rgb, device="cpu", start_frame=1, sequence_length=4)
        fclip = fn.decoders.video(flow, device="cpu", sequence_length=6)
        return clip, fclip, lbl

    p = pipe()
    p.build()
    clip, fclip, lbl = p.run()
    labels = np.stack([np.array(lbl[i]) for i in range(5)])
    np.testing.assert_array_equal(labels, [[s.label, s.index] for s in samples])
    for i, s in enumerate(samples):
        c = np.array(clip[i])
        assert c.shape == (4, 16, 21, 3)
        assert (
            np.abs(c[0].astype(int) - codec.decode_rgb(s.rgb, 1, 1)[0]).max() <= 1
        )  # frame 1 of the right video
        f = np.array(fclip[i])
        assert f.shape == (6, 32, 21, 3)
        np.testing.assert_array_equal(codec.luma_to_flow(f[..., 0]), codec.decode_flow(s.flow))


def test_manifest_roundtrip_and_errors(tmp_path, written):
    _, _, infos = written
    m = shards.make_manifest(
        classes=["a", "b", "c"],
        splits={"train": infos, "test": []},
        video={"height": 16, "width": 21, "fps": 25.0, "min_frames": 6},
        flow={"method": "tvl1", "bound": 20},
        settings={"shard_size": 2},
        rejected=[{"video": "x.avi", "reason": "zero-length file"}],
    )
    assert m["splits"]["train"]["num_samples"] == 5 and m["splits"]["test"]["num_samples"] == 0
    path = shards.write_manifest(tmp_path, m)
    assert shards.load_manifest(tmp_path) == json.loads(path.read_text()) == m
    with pytest.raises(shards.ShardFormatError, match="no manifest"):
        shards.load_manifest(tmp_path / "nowhere")
    (tmp_path / "manifest.json").write_text("{trunc")
    with pytest.raises(shards.ShardFormatError, match="manifest.json"):
        shards.load_manifest(tmp_path)


def test_failed_write_leaves_no_shard(tmp_path):
    """An exception while producing samples (e.g. a crash mid-build) leaves no tar or index behind."""

    def boom():
        yield from make_samples(1)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        shards.write_split(tmp_path, "train", boom(), shard_size=4)
    assert os.listdir(tmp_path) == []


def test_bad_keys_and_sizes(tmp_path):
    s = make_samples(1)[0]
    s.key = "bad.key"
    with pytest.raises(shards.ShardFormatError, match="must not contain"):
        shards.write_split(tmp_path, "train", [s], shard_size=1)
    with pytest.raises(shards.ShardFormatError, match="shard_size"):
        shards.write_split(tmp_path, "train", [], shard_size=0)
    with pytest.raises(shards.ShardFormatError, match="unknown split"):
        shards.write_split(tmp_path, "val", [], shard_size=1)
