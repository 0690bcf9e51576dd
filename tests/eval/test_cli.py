"""The CLI's input checks: every bad input is one clear line on stderr and exit status 2, before any compute."""

import pytest

from vicc_fast.eval.__main__ import build_parser, main


def _err(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_help_lists_every_command_and_eval_key(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for cmd in (
        "retrieval",
        "linear",
        "finetune",
        "cluster",
        "tsne",
        "grid",
        "curves",
        "all",
        "report",
        "compare",
    ):
        assert cmd in out
    assert "eval.cluster.restarts" in out and "eval.linear.augment" in out


def test_truncated_checkpoint(tmp_path, capsys, save_ckpt):
    p = save_ckpt(tmp_path / "x.pt", ["rgb1"])
    p.write_bytes(p.read_bytes()[:100])
    assert "x.pt is truncated or corrupt" in _err(capsys, ["retrieval", "--ckpt", str(p)])


def test_missing_checkpoint(tmp_path, capsys, save_ckpt):
    assert "not found" in _err(capsys, ["retrieval", "--ckpt", str(tmp_path / "nope.pt")])


def test_data_set_without_test_split(tmp_path, capsys, make_shards, save_ckpt):
    make_shards(tmp_path / "d", [0, 1], None, ["a", "b"])
    p = save_ckpt(tmp_path / "x.pt", ["rgb1"])
    err = _err(capsys, ["all", "--ckpt", str(p), f"data.root={tmp_path / 'd'}"])
    assert "no test split" in err


def test_classes_differ(tmp_path, capsys, make_shards, save_ckpt):
    make_shards(tmp_path / "d", [0, 1], [0, 2], ["a", "b", "c"])
    p = save_ckpt(tmp_path / "x.pt", ["rgb1"])
    assert "classes differ" in _err(capsys, ["linear", "--ckpt", str(p), f"data.root={tmp_path / 'd'}"])


def test_model_override_and_bad_key(tmp_path, capsys, save_ckpt):
    p = save_ckpt(tmp_path / "x.pt", ["rgb1"])
    assert "model.backbone" in _err(capsys, ["retrieval", "--ckpt", str(p), "model.backbone=r3d"])
    assert "eval.no_such_key" in _err(capsys, ["retrieval", "--ckpt", str(p), "eval.no_such_key=1"])


def test_run_folder_without_results(tmp_path, capsys, save_ckpt):
    assert "no results.json" in _err(capsys, ["report", str(tmp_path)])


def test_report_and_compare_commands(tmp_path, capsys):
    import json

    for name, r1 in (("a", 40.0), ("b", 62.1)):
        (tmp_path / name).mkdir()
        doc = {"phases": {"rgb1": {"report": "RGB-1", "metrics": {"rgb/R@1": r1}}}}
        (tmp_path / name / "results.json").write_text(json.dumps(doc))
    assert main(["report", str(tmp_path / "a")]) == 0
    assert "| RGB-1 | 40.0 |" in capsys.readouterr().out
    assert (tmp_path / "a" / "eval" / "results.md").is_file()
    out = tmp_path / "cmp.md"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| a / RGB-1 | 40.0 |" in text and "| b / RGB-1 | 62.1 |" in text
    assert out.read_text() == text
