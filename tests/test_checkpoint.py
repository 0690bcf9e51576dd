"""The checkpoint file (vicc_fast/checkpoint.py): round trip, atomic writes, clear errors."""

import pytest
import torch

from vicc_fast import checkpoint as ckpt
from vicc_fast import config as C

from .engine.tiny import TinyMethod


def _state(method: torch.nn.Module, step: int = 3) -> dict:
    return {
        "config": C.to_dict(C.load(None)),
        "method": method.state_dict(),
        "phase": "rgb1",
        "epoch": 1,
        "step": step,
        "optimizer": {"state": {}, "param_groups": []},
        "scaler": {},
        "rng": {},
    }


def test_round_trip(tmp_path):
    m = TinyMethod()
    m.queue.normal_()
    p = tmp_path / "a" / "last.pt"
    ckpt.save(p, _state(m))
    st = ckpt.load(p)
    assert st["format_version"] == ckpt.FORMAT_VERSION
    assert (st["phase"], st["epoch"], st["step"]) == ("rgb1", 1, 3)
    m2 = TinyMethod()
    ckpt.load_method_state(m2, st["method"], p)
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    assert C.from_dict(st["config"]) == C.load(None)


def test_save_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    p = tmp_path / "last.pt"
    m = TinyMethod()
    ckpt.save(p, _state(m, step=1))
    before = p.read_bytes()

    def half_write(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save(p, _state(m, step=2))
    assert p.read_bytes() == before  # the old checkpoint is intact
    assert [x.name for x in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_truncated_or_foreign_file_names_the_file(tmp_path):
    p = tmp_path / "last.pt"
    ckpt.save(p, _state(TinyMethod()))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match=r"last\.pt.*truncated or corrupt"):
        ckpt.load(p)
    q = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, q)
    with pytest.raises(ckpt.CheckpointError, match=r"other\.pt.*not a vicc_fast checkpoint"):
        ckpt.load(q)
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load(tmp_path / "missing.pt")


def test_another_model_is_a_clear_error(tmp_path):
    p = tmp_path / "last.pt"
    ckpt.save(p, _state(TinyMethod(queue=8)))
    st = ckpt.load(p)
    with pytest.raises(ckpt.CheckpointError, match=r"last\.pt does not match this model.*queue"):
        ckpt.load_method_state(TinyMethod(queue=16), st["method"], p)


def test_a_config_saved_before_a_key_existed_warns_naming_the_key(tmp_path):
    state = _state(TinyMethod())
    del state["config"]["eval"]["retrieval"]["crop"]
    with pytest.warns(UserWarning, match=r"old\.pt was saved before the config keys eval\.retrieval\.crop:"):
        cfg = ckpt.stored_config(state, tmp_path / "old.pt")
    assert cfg.eval.retrieval.crop == C.load(None).eval.retrieval.crop  # today's default
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckpt.stored_config(_state(TinyMethod()), tmp_path / "new.pt")  # a complete config: no warning


def test_unsafe_pickles_are_refused_as_unsafe_and_damage_stays_damage(tmp_path):
    """Objects other than tensors (torch.save zip or a plain pickle) -> UnsafeCheckpointError naming the object;
    garbage bytes or a cut file -> 'truncated or corrupt'."""
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.getcwd, ())

    zipped, plain, garbage, cut = (tmp_path / n for n in ("z.pt", "p.pt", "g.pt", "c.pt"))
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": Payload()}, zipped)
    plain.write_bytes(pickle.dumps({"x": Payload()}))
    garbage.write_bytes(b"garbage")
    torch.save({"w": torch.zeros(1000)}, cut)
    cut.write_bytes(cut.read_bytes()[:300])
    for p in (zipped, plain):
        with pytest.raises(ckpt.UnsafeCheckpointError, match=r"refused as unsafe.*posix\.getcwd"):
            ckpt.read_state(p)
    for p in (garbage, cut):
        with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt") as info:
            ckpt.read_state(p)
        assert not isinstance(info.value, ckpt.UnsafeCheckpointError)
