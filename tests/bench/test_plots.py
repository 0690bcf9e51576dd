"""The step-breakdown plot and table read the step benchmark's records (structure as `step.run` writes it)."""

from __future__ import annotations

import json

import pytest

from vicc_fast.bench import plots
from vicc_fast.bench.step import PARTS, ratios


def _measurement(scale: float) -> dict:
    b = {p: scale * (i + 1) for i, p in enumerate(PARTS)}
    b["other"] = 0.5 * scale
    step = sum(b.values())
    return {"breakdown_ms": b, "step_ms": step, "clips_per_s": 1000 * 16 / step, "data_wait_pct": 100 * b["data_wait"] / step,
            "loss_head_pct": 100 * b["loss_head"] / step, "peak_rss_mb_process": 900.0}  # fmt: skip


def record(clips_scale: float = 1.0) -> dict:
    point = dict(backbone="tiny", frames=8, stride=2, crop=64, batch=8, amp="off", channels_last=True, compile=False,
                 phase="rgb1", queue=True)  # fmt: skip
    fast, base = _measurement(clips_scale), _measurement(3.0)
    return {"benchmark": "step", "env": {"gpu": None},
            "result": {"rows": [{"point": point, "fast": fast, "baseline": base, "ratio": ratios(fast, base)}]}}  # fmt: skip


def test_table_and_plot(tmp_path) -> None:
    recs = [record(2.0), record(1.0)]  # the newest record of a point wins
    table = plots.step_table(recs)
    assert "| fast / baseline | **3.00x** |" in table
    assert table.count("tiny 8x2 64px b8") == 1
    assert len(plots.bars(recs)) == 2 and len(plots.bars(recs, newest_only=False)) == 4
    src = tmp_path / "step.json"
    src.write_text(json.dumps(recs))
    out = tmp_path / "plot.png"
    assert plots.main([str(src), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_step_records_is_a_clear_error(tmp_path, capsys) -> None:
    src = tmp_path / "other.json"
    src.write_text(json.dumps([{"benchmark": "loader", "result": {}}]))
    assert plots.main([str(src), "-o", str(tmp_path / "x.png")]) == 1
    assert "no step-benchmark rows" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plots.main([str(tmp_path / "missing.json"), "-o", str(tmp_path / "x.png")])
