"""``python -m vicc_fast.export --ckpt RUN|FILE [--phase P] [--stream S] --out encoder.safetensors``: one trained
encoder as safetensors weights plus a JSON sidecar of what it expects; :func:`load_encoder` reads it back.

safetensors is the exchange format: a header and raw tensor bytes, nothing executed on load (a pickle can run
code; vicc_fast refuses pickles of anything but tensors and plain values, ``checkpoint.read_state``). The
sidecar (``encoder.json`` beside ``encoder.safetensors``) states the stream, the ``model.*`` settings that build
the module, the clip shape (``[B, 3, T, H, W]``, frames, stride, crop), the normalisation of the input, the
flow layout and the output (feature dim, global average pooling). ``--torch-export`` also writes a
``torch.export`` program (``encoder.pt2``) that runs without vicc_fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vicc_fast import atomic
from vicc_fast import checkpoint as ckpt
from vicc_fast import config as C
from vicc_fast.config import Stream

FORMAT = "vicc_fast.encoder"
FORMAT_VERSION = 1


class ExportError(ValueError):
    """An export input or an exported file that cannot be used; the message names the file."""


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def input_spec(cfg: C.Config, stream: Stream) -> dict[str, Any]:
    """What the encoder expects of its input: clip shape, value range and normalisation, flow layout."""
    from vicc_fast.data.augment import RGB_MEAN, RGB_STD, flow_norm

    d = cfg.data
    spec: dict[str, Any] = {
        "layout": "[B, 3, T, H, W] float32, channels first",
        "num_frames": d.num_frames,
        "stride": d.stride,
        "crop_size": d.crop_size,
    }
    if stream is Stream.rgb:
        spec["normalisation"] = {"on": "RGB in [0, 255]", "mean": list(RGB_MEAN), "std": list(RGB_STD)}
    else:
        mean, std = flow_norm(d.flow_normalisation)
        spec["normalisation"] = {"on": "flow image (x, y, 0) in [0, 255]", "mode": d.flow_normalisation.value,
                                 "mean": mean.tolist(), "std": std.tolist()}  # fmt: skip
        spec["flow"] = {
            "channels": "(x, y, 0): horizontal, vertical displacement, a zero plane",
            "coding": "uint8 = 127.5 + displacement * 127.5 / bound, clipped to [0, 255] (data_prep/flow.py)",
        }
    return spec


def export_encoder(
    encoder: nn.Module, cfg: C.Config, stream: Stream, out: str | Path, extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``encoder``'s state as safetensors at ``out`` and the sidecar JSON beside it (both atomically)."""
    from safetensors.torch import save

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ExportError(f"--out {out}: the file name must end in .safetensors (the sidecar is its .json)")
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    spec = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "stream": stream.value,
        "model": C.to_dict(cfg)["model"],
        "input": input_spec(cfg, stream),
        "output": {
            "feature_dim": int(encoder.feature_dim),
            "pooling": "global average over T, H, W",
            "l2_normalised": False,
        },  # fmt: skip
        **(extra or {}),
    }
    atomic.write_bytes(out, save(tensors, metadata={"format": FORMAT, "stream": stream.value}))
    side = sidecar_path(out)
    atomic.write_text(side, json.dumps(spec, indent=1, sort_keys=True) + "\n")
    return out, side


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The encoder exported at ``path`` (``.safetensors`` with its ``.json`` sidecar), in eval mode, built from the
    sidecar's ``model`` settings alone (no checkpoint, no training state). ``encoder.spec`` is the sidecar.
    ``encoder(x)``: ``[B, 3, T, H, W]`` normalised as ``spec["input"]`` says -> ``[B, feature_dim]``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vicc_fast.models import build_encoder

    p = Path(path)
    side = sidecar_path(p)
    for f in (p, side):
        if not f.is_file():
            raise ExportError(
                f"exported encoder: {f} not found (load_encoder needs the .safetensors and its .json)"
            )
    try:
        spec = json.loads(side.read_text())
    except ValueError as exc:
        raise ExportError(f"{side}: not JSON ({exc})") from None
    if spec.get("format") != FORMAT or int(spec.get("format_version", 0)) > FORMAT_VERSION:
        raise ExportError(f"{side}: not a {FORMAT} sidecar of version <= {FORMAT_VERSION}")
    names = {f.name for f in fields(C.ModelConfig)}
    try:
        model_cfg = C.from_dict({"model": {k: v for k, v in spec["model"].items() if k in names}}).model
    except (C.ConfigError, KeyError) as exc:
        raise ExportError(f"{side}: its model settings are invalid ({exc})") from None
    encoder = build_encoder(model_cfg)
    try:
        tensors = load_file(p, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ExportError(f"{p}: not a readable safetensors file ({exc})") from None
    try:
        encoder.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ExportError(
            f"{p}: its tensors do not fit the model of {side} ({str(exc).splitlines()[0]})"
        ) from None
    encoder.spec = spec
    return encoder.to(device).eval()


def _pick_checkpoint(target: Path, phase: str | None) -> Path:
    if target.is_file():
        if phase:
            raise ExportError(
                f"--phase {phase}: names a checkpoint of a run folder; --ckpt {target} is a file"
            )
        return target
    if not target.is_dir():
        raise ExportError(f"--ckpt {target}: no such file or run folder")
    p = ckpt.phase_path(target, phase) if phase else ckpt.latest_path(target)
    if not p.is_file():
        have = sorted(q.stem for q in ckpt.ckpt_dir(target).glob("*.pt"))
        raise ExportError(f"{p} not found (the run has checkpoints {have})")
    return p


def resolve_encoder(
    target: str | Path, phase: str | None = None, stream: str | None = None
) -> tuple[nn.Module, C.Config, Stream, dict[str, Any]]:
    """(encoder in eval mode, its config, its stream, where it came from) of a checkpoint file, a run folder
    (+ ``phase``), a released ViCC/CoCLR file (+ ``stream``) or an exported ``.safetensors``. The stream
    defaults to the one the checkpoint's last phase trained."""
    from vicc_fast.eval.inputs import file_sha256, load_checkpoint

    t = Path(target)
    if t.suffix == ".safetensors":
        enc = load_encoder(t)
        spec = enc.spec
        if stream is not None and stream != spec["stream"]:
            raise ExportError(f"--stream {stream}: {t} holds the {spec['stream']} encoder")
        i = spec["input"]
        data = [
            f"data.num_frames={i['num_frames']}",
            f"data.stride={i['stride']}",
            f"data.crop_size={i['crop_size']}",
        ]
        if spec["stream"] == "flow":
            data.append(f"data.flow_normalisation={i['normalisation']['mode']}")
        cfg = C.load(C.DEFAULT_CONFIG, data)
        cfg = C.from_dict({**C.to_dict(cfg), "model": spec["model"]})
        return (
            enc,
            cfg,
            Stream(spec["stream"]),
            {"file": str(t), "sha256": file_sha256(t), **spec.get("source", {})},
        )
    path = _pick_checkpoint(t, phase)
    ck = load_checkpoint(path, (), stream)
    if stream is None:
        trained = ck.trained_streams
        if len(trained) != 1:
            last = _last_trained_stream(ck)
            if last is None:
                raise ExportError(f"{path}: say which encoder with --stream rgb|flow (trained: {trained})")
            trained = [last]
        s = trained[0]
    else:
        s = Stream(stream)
    source = {
        "checkpoint": str(path),
        "sha256": ck.sha256,
        "phase": ck.phase,
        "label": ck.labels.get(s.value, ""),
    }
    return ck.encoders[s].eval(), ck.cfg, s, source


def export_checkpoint(
    target: str | Path,
    out: str | Path,
    phase: str | None = None,
    stream: str | None = None,
    torch_export: bool = False,
) -> list[Path]:
    """Export one stream's encoder of a checkpoint (file, or run folder + phase; a released ViCC/CoCLR file
    with ``stream``). The stream defaults to the one the checkpoint's last phase trained."""
    encoder, cfg, s, source = resolve_encoder(target, phase, stream)
    written = list(export_encoder(encoder, cfg, s, out, {"source": source}))
    if torch_export:
        written.append(write_program(encoder, cfg, Path(out).with_suffix(".pt2")))
    return written


def _last_trained_stream(ck: Any) -> Stream | None:
    """The stream of the checkpoint's phase (``phase`` names it: rgb1, cross_flow_c2, ...)."""
    phases = {p.name: p for p in ck.method.phases()}
    p = phases.get(ck.phase)
    streams = list(getattr(p, "trained_streams", []) or [])
    return streams[0] if len(streams) == 1 else None


def write_program(encoder: nn.Module, cfg: C.Config, out: Path, batch: int = 2) -> Path:
    """A ``torch.export`` program of the encoder (eval mode) for ``[batch, 3, T, crop, crop]`` clips."""
    d = cfg.data
    example = torch.zeros(batch, 3, d.num_frames, d.crop_size, d.crop_size)
    program = torch.export.export(encoder.eval(), (example,))
    tmp = out.with_name(f".{out.name}.tmp")
    torch.export.save(program, tmp)
    tmp.replace(out)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m vicc_fast.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--ckpt", required=True,
                    help="checkpoint file, a run folder (then --phase picks RUN/checkpoints/<phase>.pt; default "
                    "last.pt), or a released ViCC/CoCLR .pth.tar (with --stream)")  # fmt: skip
    ap.add_argument(
        "--phase", default=None, help="phase checkpoint of a run folder, e.g. cross_rgb_c2, flow1"
    )
    ap.add_argument("--stream", choices=["rgb", "flow"], default=None,
                    help="which encoder (default: the stream the checkpoint's phase trained)")  # fmt: skip
    ap.add_argument(
        "--out", required=True, help="output .safetensors file (its sidecar: the same name, .json)"
    )
    ap.add_argument("--torch-export", action="store_true",
                    help="also write a torch.export program beside it (.pt2) for clips of the config's shape")  # fmt: skip
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for p in export_checkpoint(args.ckpt, args.out, args.phase, args.stream, args.torch_export):
            print(f"wrote {p}")
    except (ExportError, ckpt.CheckpointError, C.ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
