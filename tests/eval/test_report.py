import json

import pytest

from vicc_fast.eval import report


def _engine_doc():
    return {
        "phases": {
            "rgb1": {"report": "RGB-1", "metrics": {"rgb/R@1": 40.0, "rgb/R@5": 60.0}},
            "flow1": {"report": "Flow-1", "metrics": {"flow/R@1": 55.5, "flow/R@5": 70.0}},
            "cross_rgb_c1": {"report": "", "metrics": {"rgb/R@1": 50.0}},
            "cross_rgb_c2": {
                "report": "RGB-2",
                "metrics": {"rgb/R@1": 62.1, "flow/R@1": 58.0, "rf_sum/R@1": 63.0},
            },
        },
        "completed": ["rgb1", "flow1", "cross_rgb_c1", "cross_rgb_c2"],
    }


def _entry():
    return {
        "sha256": "a" * 64,
        "labels": {"rgb": "RGB-2", "flow": "Flow-2", "rf": "R+F-2"},
        "retrieval": {"rgb/R@1": 62.5, "flow/R@1": 59.7, "rf_sum/R@1": 65.1, "rf_concat/R@1": 64.0},
        "linear": {"rgb/top1": 72.2, "flow/top1": 75.5, "rf/top1": 78.0},
        "cluster": {"rgb/kmeans/acc": 40.8, "rgb/kmeans/nmi": 67.8, "rgb/proto/acc": 30.0},
    }


def test_rows_merge_engine_and_eval(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(_engine_doc()))
    report.update_eval_results(tmp_path, "last", _entry())
    rows = report.run_rows(tmp_path)
    assert list(rows) == ["RGB-1", "Flow-1", "RGB-2", "Flow-2", "R+F-2", "R+F-2 (concat)"]
    assert rows["RGB-1"] == {"R@1": 40.0, "R@5": 60.0}
    assert rows["RGB-2"]["R@1"] == 62.5  # the checkpoint evaluation wins over the engine's hook
    assert rows["RGB-2"]["linear"] == 72.2 and rows["RGB-2"]["kmeans nmi"] == 67.8
    assert rows["R+F-2"] == {"R@1": 65.1, "linear": 78.0}
    md = report.run_report(tmp_path)
    assert "| RGB-2 | 62.5 | – | 72.2 | 40.8 | 67.8 | 30.0 |" in md
    assert report.write_run_report(tmp_path).read_text() == md


def test_update_keeps_other_protocols_and_resets_on_new_checkpoint(tmp_path):
    report.update_eval_results(tmp_path, "last", _entry())
    report.update_eval_results(tmp_path, "last", {"sha256": "a" * 64, "finetune": {"rgb/top1": 84.3}})
    doc = json.loads((tmp_path / "eval" / "results.json").read_text())["checkpoints"]["last"]
    assert doc["linear"]["rgb/top1"] == 72.2 and doc["finetune"]["rgb/top1"] == 84.3
    report.update_eval_results(tmp_path, "last", {"sha256": "b" * 64, "labels": {"rgb": "RGB-1"}})
    doc = json.loads((tmp_path / "eval" / "results.json").read_text())["checkpoints"]["last"]
    assert "linear" not in doc


def test_compare_two_runs(tmp_path):
    a, b = tmp_path / "vicc", tmp_path / "coclr"
    a.mkdir()
    b.mkdir()
    (a / "results.json").write_text(json.dumps(_engine_doc()))
    report.update_eval_results(b, "last", _entry())
    table = report.compare([a, b])
    lines = table.splitlines()
    assert lines[0].startswith("| run / model | R@1 | R@5 | linear |")
    assert any(line.startswith("| vicc / RGB-1 | 40.0 | 60.0 |") for line in lines)
    assert any(line.startswith("| coclr / R+F-2 | 65.1 | – | 78.0 |") for line in lines)


def test_missing_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        report.run_rows(tmp_path)


def test_short_names():
    assert report.short_names(["/r/a/x", "/r/b/x"]) == ["a/x", "b/x"]
    assert report.short_names(["/r/a/x", "/r/a/y"]) == ["x", "y"]


def test_joint_phase_rows(tmp_path):
    """GOCA's joint phase: one engine entry gives an RGB, a Flow and an R+F row, ordered RGB, Flow, R+F."""
    doc = {
        "phases": {
            "joint": {
                "report": "joint",
                "rows": {"rgb": "RGB-joint", "flow": "Flow-joint"},
                "metrics": {"rgb/R@1": 41.0, "flow/R@1": 70.0, "rf_sum/R@1": 60.0},
            }
        }
    }
    (tmp_path / "results.json").write_text(json.dumps(doc))
    rows = report.run_rows(tmp_path)
    assert list(rows) == ["RGB-joint", "Flow-joint", "R+F-joint"]
    assert rows["Flow-joint"] == {"R@1": 70.0} and rows["R+F-joint"] == {"R@1": 60.0}


def test_majority_protocol_columns(tmp_path):
    """GOCA's cluster protocol (majority vote, Acc / NMI / F1) gets its own columns in the run's table."""
    entry = {
        **_entry(),
        "cluster": {"rgb/majority/acc": 57.3, "rgb/majority/nmi": 75.8, "rgb/majority/f1": 57.4},
    }
    report.update_eval_results(tmp_path, "last", entry)
    rows = report.run_rows(tmp_path)
    assert {k: rows["RGB-2"][k] for k in ("majority acc", "majority nmi", "majority f1")} == {
        "majority acc": 57.3,
        "majority nmi": 75.8,
        "majority f1": 57.4,
    }
    assert "| RGB-2 | 62.5 | 72.2 | 57.3 | 75.8 | 57.4 |" in report.run_report(tmp_path)
