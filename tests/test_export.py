"""``python -m vicc_fast.export``: safetensors + sidecar, ``vicc_fast.load_encoder``, the torch.export program."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import vicc_fast
from tests.eval.conftest import save_tiny_ckpt
from vicc_fast import checkpoint as ckpt
from vicc_fast.eval.inputs import load_checkpoint
from vicc_fast.export import ExportError, main


def _run(tmp_path):
    run = tmp_path / "run"
    save_tiny_ckpt(ckpt.phase_path(run, "cross_rgb_c1"), ["rgb1", "flow1", "cross_rgb_c1"])
    return run


def test_exported_encoder_gives_the_trained_output(tmp_path, capsys):
    run = _run(tmp_path)
    out = tmp_path / "enc.safetensors"
    assert main(["--ckpt", str(run), "--phase", "cross_rgb_c1", "--out", str(out), "--torch-export"]) == 0
    trained = (
        load_checkpoint(ckpt.phase_path(run, "cross_rgb_c1")).encoders[vicc_fast.export.Stream.rgb].eval()
    )
    enc = vicc_fast.load_encoder(out)
    spec = json.loads(out.with_suffix(".json").read_text())
    assert spec["stream"] == "rgb" and spec["source"]["label"] == "RGB-2" and enc.spec == spec
    assert spec["output"]["feature_dim"] == 4 and spec["input"]["num_frames"] > 0
    assert set(load_file(out)) == set(trained.state_dict())
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        want = trained(x)
        assert torch.equal(enc(x), want)
        prog = torch.export.load(out.with_suffix(".pt2")).module()
        n, s = spec["input"]["num_frames"], spec["input"]["crop_size"]
        y = torch.randn(2, 3, n, s, s)
        torch.testing.assert_close(prog(y), trained(y))


def test_flow_stream_and_its_layout_are_stated(tmp_path):
    run = _run(tmp_path)
    out = tmp_path / "flow.safetensors"
    assert main(["--ckpt", str(run), "--phase", "cross_rgb_c1", "--stream", "flow", "--out", str(out)]) == 0
    spec = vicc_fast.load_encoder(out).spec
    assert spec["stream"] == "flow" and "(x, y, 0)" in spec["input"]["flow"]["channels"]


def test_export_errors_are_one_line(tmp_path, capsys):
    run = _run(tmp_path)
    for argv, words in (
        (
            ["--ckpt", str(run), "--phase", "nope", "--out", str(tmp_path / "a.safetensors")],
            "nope.pt not found",
        ),
        (["--ckpt", str(run), "--phase", "cross_rgb_c1", "--out", str(tmp_path / "a.bin")], ".safetensors"),
        (["--ckpt", str(tmp_path / "none"), "--out", str(tmp_path / "a.safetensors")], "no such file"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and words in err
    (tmp_path / "b.safetensors").write_bytes(b"junk")
    (tmp_path / "b.json").write_text(
        json.dumps({"format": "vicc_fast.encoder", "format_version": 1, "model": {}})
    )
    with pytest.raises(ExportError, match="b.safetensors"):
        vicc_fast.load_encoder(tmp_path / "b.safetensors")


def test_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(f in out for f in ("--ckpt", "--phase", "--stream", "--out", "--torch-export"))
