"""scripts/demo_weights.py, the refactor safety net: it trains the demo command and compares per-phase digests."""

from __future__ import annotations

import json

from scripts import demo_weights

# The demo command shrunk to seconds on the session's tiny set (the same keys test_determinism.py shrinks).
TINY = ["data.num_frames=4", "data.crop_size=16", "data.threads=2", "data.eval.clips=1", "model.tiny_width=4",
        "model.proj_hidden=16", "model.proj_dim=8", "model.num_prototypes=6", "method.swav.queue_size=0",
        "schedule.single_epochs=1", "schedule.cross_cycles=1", "schedule.cross_epochs=1", "train.batch_size=4",
        "train.amp=off", "train.ckpt_every_steps=0", "data.build_if_missing=false"]  # fmt: skip


def test_digests_every_phase_and_names_the_phase_that_differs(tiny_shards, tmp_path, capsys):
    over = [f"data.root={tiny_shards}", *TINY]
    assert demo_weights.main(["--out", str(tmp_path / "a"), *over]) == 0
    first = json.loads((tmp_path / "a.json").read_text())["weights_sha256"]
    assert list(first) == ["rgb1", "flow1", "cross_rgb_c1", "cross_flow_c1"]
    assert len(set(first.values())) == 4  # every phase trained something

    ref = {"weights_sha256": {**first, "flow1": "0" * 64}}  # a base whose flow1 differs
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    capsys.readouterr()
    assert (
        demo_weights.main(["--out", str(tmp_path / "b"), "--against", str(tmp_path / "ref.json"), *over]) == 1
    )
    out = capsys.readouterr().out
    assert "DIFFERENT flow1" in out and "1 phase(s) differ" in out  # the rerun equals the first run elsewhere
