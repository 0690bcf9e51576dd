"""Data set layouts (UCF101, HMDB51, folder) and their bad-input errors, on tiny generated videos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data_prep.sources import DataSourceError, Record, class_names, load_records
from tests.data_prep.conftest import make_ucf_layout, moving_frames, write_video


def test_ucf101_layout(ucf_root):
    recs = load_records("ucf101", ucf_root)
    assert all(isinstance(r, Record) for r in recs)
    assert [r.split for r in recs] == ["train"] * 4 + ["test"] * 2
    assert class_names(recs) == recs.classes == ["ApplyEyeMakeup", "Biking"]
    r = recs[2]
    assert (r.label, r.class_name, r.video_id) == (1, "Biking", "Biking/v_Biking_g01_c01")
    assert r.path == ucf_root / "videos" / "Biking" / "v_Biking_g01_c01.avi" and r.problem is None
    assert [(t.label, t.video_id) for t in recs if t.split == "test"] == [
        (0, "ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01"),
        (1, "Biking/v_Biking_g03_c01"),
    ]


def test_ucf101_official_folder_names(tmp_path):
    root = make_ucf_layout(tmp_path, videos_dir="UCF-101", splits_dir="ucfTrainTestlist", frames=3)
    recs = load_records("ucf101", root, split_id=1)
    assert len(recs) == 6 and recs[0].path.parent.parent.name == "UCF-101"
    with pytest.raises(DataSourceError, match="trainlist02.txt"):
        load_records("ucf101", root, split_id=2)


@pytest.fixture
def ucf_copy(ucf_root, tmp_path) -> Path:
    return Path(shutil.copytree(ucf_root, tmp_path / "ucf"))


def test_class_missing_from_classind(ucf_copy):
    (ucf_copy / "splits" / "classInd.txt").write_text("1 ApplyEyeMakeup\n")
    with pytest.raises(DataSourceError, match=r"class 'Biking' is missing from .*classInd\.txt"):
        load_records("ucf101", ucf_copy)
    recs = load_records("ucf101", ucf_copy, skip_bad=True)
    assert [r.problem is not None for r in recs].count(True) == 3


def test_split_naming_missing_video(ucf_copy):
    (ucf_copy / "videos" / "Biking" / "v_Biking_g02_c01.avi").unlink()
    with pytest.raises(DataSourceError) as e:
        load_records("ucf101", ucf_copy)
    msg = str(e.value)
    assert "v_Biking_g02_c01.avi" in msg and "file not found" in msg and "trainlist01.txt:4" in msg


def test_zero_length_video(ucf_copy):
    (ucf_copy / "videos" / "Biking" / "v_Biking_g03_c01.avi").write_bytes(b"")
    with pytest.raises(DataSourceError, match=r"v_Biking_g03_c01\.avi: zero-length file"):
        load_records("ucf101", ucf_copy)
    bad = [r for r in load_records("ucf101", ucf_copy, skip_bad=True) if r.problem]
    assert [(b.video_id, b.problem) for b in bad] == [("Biking/v_Biking_g03_c01", "zero-length file")]


def test_missing_root_says_where_to_get_data(tmp_path):
    with pytest.raises(DataSourceError, match="crcv.ucf.edu/data/UCF101.php"):
        load_records("ucf101", tmp_path / "nope")
    with pytest.raises(DataSourceError, match="serre-lab.clps.brown.edu"):
        load_records("hmdb51", None)
    with pytest.raises(DataSourceError, match="classInd.txt"):
        load_records("ucf101", tmp_path)  # a folder that is not UCF101
    with pytest.raises(DataSourceError, match="unknown source"):
        load_records("kinetics9000", tmp_path)
    with pytest.raises(DataSourceError, match=r"no train\.csv in annotations/ or the root.*cvdfoundation"):
        load_records("kinetics", tmp_path)


def test_hmdb51_layout(tmp_path):
    root = tmp_path / "hmdb"
    split_dir = root / "testTrainMulti_7030_splits"
    split_dir.mkdir(parents=True)
    for ci, cls in enumerate(["wave", "brush_hair"]):  # alphabetical label order: brush_hair = 0
        lines = []
        for v, tag in enumerate(["1", "2", "0", "1"]):
            name = f"{cls}_clip{v}.avi"
            write_video(root / "hmdb51_org" / cls / name, moving_frames(3, 16, 21, seed=ci * 10 + v))
            lines.append(f"{name} {tag} ")
        (split_dir / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
    recs = load_records("hmdb51", root, split_id=1)
    assert recs.classes == ["brush_hair", "wave"]
    assert len(recs) == 6  # the "0" (unused) videos are left out
    assert [(r.split, r.label, r.video_id) for r in recs if r.class_name == "wave"] == [
        ("train", 1, "wave/wave_clip0"),
        ("train", 1, "wave/wave_clip3"),
        ("test", 1, "wave/wave_clip1"),
    ]
    (split_dir / "wave_test_split1.txt").write_text("missing_clip.avi 1\n")
    with pytest.raises(DataSourceError, match=r"missing_clip\.avi: file not found.*wave_test_split1\.txt:1"):
        load_records("hmdb51", root)


def test_folder_layout_deterministic_split(tmp_path):
    root = tmp_path / "folder"
    for cls in ["b_cls", "a_cls"]:
        for v in range(6):
            write_video(root / cls / f"clip{v}.mp4", moving_frames(2, 16, 21, seed=v), codec="mpeg4")
    recs = load_records("folder", root, split_id=1)
    assert recs.classes == ["a_cls", "b_cls"]
    test = [r.video_id for r in recs if r.split == "test"]
    assert test == ["a_cls/clip0", "a_cls/clip5", "b_cls/clip0", "b_cls/clip5"]
    assert [r.video_id for r in load_records("folder", root, split_id=1)] == [r.video_id for r in recs]
    test2 = {r.video_id for r in load_records("folder", root, split_id=2) if r.split == "test"}
    assert test2 == {"a_cls/clip1", "b_cls/clip1"}
    (root / "empty_cls").mkdir()
    with pytest.raises(DataSourceError, match="empty_cls: class folder holds no video files"):
        load_records("folder", root)
