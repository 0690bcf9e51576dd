"""Checkpoints of the released ViCC / CoCLR code (``ViCC-RGB-S3D.pth.tar`` ...) read into our modules.

The released files are ``torch.save`` dicts with a ``state_dict`` of the released modules (plain tensors, so
they load with ``weights_only=True``). What a state dict holds, by the module that wrote it:

- pretraining (ViCC ``main_single.py`` / ``main_cross.py``, CoCLR ``main_nce.py`` / ``main_coclr.py``):
  ``encoder_q.0.*`` the backbone, ``encoder_q.2`` / ``encoder_q.4`` the projection head (1x1x1 convolutions
  F -> F -> D), ``prototypes.weight`` (ViCC, [K, D]); the cross-stream stage adds the frozen other stream as
  ``second.*`` (ViCC2) or ``sampler.*`` (CoCLR); CoCLR adds ``encoder_k.*`` (momentum copy) and its queues;
- classifier (``eval/main_classifier.py``, which renames ``encoder_q.0.`` to ``backbone.``): ``backbone.*``,
  ``final_bn.*`` and ``final_fc.1.*`` (the linear / finetuned head);
- any of them wrapped by (Distributed)DataParallel: every key starts with ``module.``.

Backbones: the released ``s3dg.py`` (``S3D``; its layers also registered a second time inside ``blockN``
Sequentials, so every tensor appears under two names) maps onto torchvision's S3D trunk (:class:`S3D` with
``model.s3d_init=released``), the released ``r21d.py`` (``R2Plus1DNet((1, 1, 1, 1))``) onto :class:`PaperResNet`
("r21d"). Every released key is placed or named as left out with its reason (queues, the momentum copy, the
classifier head); a key neither placed nor known is an error naming it, never a silent skip.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vicc_fast import checkpoint as ckpt
from vicc_fast import config as C
from vicc_fast.config import Stream


class ReleasedError(ckpt.CheckpointError):
    """A released-format checkpoint that cannot be mapped; the message names the file and the key."""


FEATURE_DIM = {"s3d": 1024, "r21d": 512}
# torchvision S3D ``features`` index of each released top-level layer (its MaxPools hold no tensors)
_S3D_TOP = {
    "Conv_1a": 0, "Conv_2b": 2, "Conv_2c": 3, "Mixed_3b": 5, "Mixed_3c": 6, "Mixed_4b": 8, "Mixed_4c": 9,
    "Mixed_4d": 10, "Mixed_4e": 11, "Mixed_4f": 12, "Mixed_5b": 14, "Mixed_5c": 15,
}  # fmt: skip
# the released ``blockN`` Sequentials hold the same layers again: blockN.i -> the layer's own name
_S3D_BLOCKS = {
    "block1": ["Conv_1a"], "block2": ["MaxPool_2a", "Conv_2b", "Conv_2c"],
    "block3": ["MaxPool_3a", "Mixed_3b", "Mixed_3c"],
    "block4": ["MaxPool_4a", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"],
    "block5": ["MaxPool_5a", "Mixed_5b", "Mixed_5c"],
}  # fmt: skip
_ST = {"conv1": "0.0", "bn1": "0.1", "conv2": "1.0", "bn2": "1.1"}  # STConv3d -> TemporalSeparableConv
_BASIC = {"conv": "0", "bn": "1"}  # BasicConv3d -> Conv3dNormActivation
_STC = {"spatial_conv": "0", "bn": "1", "temporal_conv": "3"}  # SpatioTemporalConv -> Conv2Plus1D


def _sub(table: dict[str, str], part: str, rest: str) -> str:
    return f"{table[part]}.{rest}"


def s3d_key(key: str) -> str:
    """Released ``s3dg.S3D`` key (relative to the backbone) -> our :class:`S3D` key; KeyError when unknown."""
    top, rest = key.split(".", 1)
    if top in _S3D_BLOCKS:
        idx, rest = rest.split(".", 1)
        top = _S3D_BLOCKS[top][int(idx)]
    i = _S3D_TOP[top]
    if top in ("Conv_1a", "Conv_2c"):
        return f"features.{i}." + _sub(_ST, *rest.split(".", 1))
    if top == "Conv_2b":
        return f"features.{i}." + _sub(_BASIC, *rest.split(".", 1))
    m = re.fullmatch(r"branch(\d)\.(\d)\.(\w+)\.(.+)", rest)  # SepInception (no gating in s3d)
    if m is None:
        raise KeyError(key)
    b, j, part, leaf = m.groups()
    if b == "0" and j == "0":  # torchvision's branch0 is the Conv3dNormActivation itself
        return f"features.{i}.branch0." + _sub(_BASIC, part, leaf)
    if (b in "12" and j == "0") or (b == "3" and j == "1"):
        return f"features.{i}.branch{b}.{j}." + _sub(_BASIC, part, leaf)
    if b in "12" and j == "1":
        return f"features.{i}.branch{b}.1." + _sub(_ST, part, leaf)
    raise KeyError(key)


def _r21d_conv(rest: str) -> str:
    part, leaf = rest.split(".", 1)
    return _sub(_STC, part, leaf)


def r21d_key(key: str) -> str:
    """Released ``r21d.R2Plus1DNet((1, 1, 1, 1))`` key -> our :class:`PaperResNet` ("r21d") key."""
    top, rest = key.split(".", 1)
    if top == "conv1":
        return "features.0." + _r21d_conv(rest)
    if top == "bn1":
        return f"features.1.{rest}"
    m = re.fullmatch(r"conv([2-5])\.block1\.(\w+)\.(.+)", key)
    if m is None:  # conv2.blocks.N: a deeper net than the paper's one block per stage
        raise KeyError(key)
    stage, part, leaf = m.groups()
    pre = f"features.{int(stage) + 1}."
    if part in ("conv1", "conv2"):
        return pre + f"{part}." + _r21d_conv(leaf)
    if part in ("bn1", "bn2"):
        return pre + f"{part}.{leaf}"
    if part == "downsampleconv":
        return pre + "shortcut.0." + _r21d_conv(leaf)
    if part == "downsamplebn":
        return pre + f"shortcut.1.{leaf}"
    raise KeyError(key)


KEY_MAPS = {"s3d": s3d_key, "r21d": r21d_key}


@dataclass
class StreamWeights:
    """One released encoder: backbone state in our key names, and (pretraining files) head and prototypes."""

    encoder: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None = None  # fc1.weight [F, F], fc1.bias, fc2.weight [D, F], fc2.bias
    prototypes: torch.Tensor | None = None  # [K, D]


@dataclass
class Released:
    """What a released file holds. ``main``: the trained encoder (``encoder_q`` / ``backbone``); ``other``: the
    frozen other stream of a cross-stream file (ViCC2 ``second``, CoCLR ``sampler``)."""

    path: Path
    backbone: str  # s3d | r21d
    kind: str  # pretrain | classifier
    main: StreamWeights
    other: StreamWeights | None = None
    left_out: dict[str, str] = field(default_factory=dict)  # key -> why it is not used

    @property
    def feature_dim(self) -> int:
        return FEATURE_DIM[self.backbone]


def is_released(state: Any) -> bool:
    """A released-format file: a dict with a ``state_dict`` of tensors and none of our checkpoint's keys."""
    return isinstance(state, dict) and "state_dict" in state and "method" not in state


def _strip_module(sd: dict[str, Any]) -> dict[str, Any]:
    """Drop (Distributed)DataParallel's ``module.`` prefix, when every key has it."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _backbone_of(sd: dict[str, Any], prefix: str, path: Path) -> str:
    keys = [k[len(prefix) :] for k in sd if k.startswith(prefix)]
    if any(k.startswith("Mixed_") for k in keys):
        if any(".gating_" in k for k in keys):
            raise ReleasedError(f"{path}: S3D-G (gated S3D) weights: only S3D ('--net s3d') is supported")
        return "s3d"
    if any(k.startswith("conv5.") for k in keys):
        return "r21d"
    raise ReleasedError(f"{path}: the backbone under '{prefix}' is neither the released S3D nor R(2+1)D")


def map_backbone(sd: dict[str, Any], prefix: str, backbone: str, path: Path) -> dict[str, torch.Tensor]:
    """Our encoder's state dict from the released keys under ``prefix``: every key placed, aliases (the
    released S3D's blockN names) equal to the tensor they alias."""
    fn = KEY_MAPS[backbone]
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for k, v in sd.items():
        if not k.startswith(prefix):
            continue
        try:
            ours = fn(k[len(prefix) :])
        except (KeyError, ValueError, IndexError):
            raise ReleasedError(f"{path}: key '{k}' is not a layer of the released {backbone}") from None
        if ours in out:
            if not torch.equal(out[ours], v):
                raise ReleasedError(
                    f"{path}: '{k}' and '{source[ours]}' name one layer but hold different values"
                )
            continue
        out[ours], source[ours] = v, k
    return out


def _head(sd: dict[str, Any], prefix: str, path: Path) -> dict[str, torch.Tensor] | None:
    """``<prefix>2`` / ``<prefix>4`` (Conv3d 1x1x1 with bias) -> ProjectionHead ``fc1`` / ``fc2`` (Linear)."""
    names = {"fc1": f"{prefix}2.", "fc2": f"{prefix}4."}
    if f"{names['fc1']}weight" not in sd:
        return None
    out = {}
    for ours, theirs in names.items():
        w = sd[f"{theirs}weight"]
        if w.dim() != 5 or tuple(w.shape[2:]) != (1, 1, 1):
            raise ReleasedError(
                f"{path}: '{theirs}weight' has shape {tuple(w.shape)}, not [out, in, 1, 1, 1]"
            )
        out[f"{ours}.weight"] = w.reshape(w.shape[0], w.shape[1])
        out[f"{ours}.bias"] = sd[f"{theirs}bias"]
    return out


# what the released files hold that our modules do not take, and why
_LEFT_OUT = (
    (
        re.compile(r"^(queue|queue_ptr|queue_second|queue_vname|queue_label)$"),
        "queue (the released code refills it)",
    ),
    (
        re.compile(r"^encoder_k\."),
        "CoCLR's momentum copy of encoder_q (its key encoder restarts from encoder_q)",
    ),
    (
        re.compile(r"^(final_bn|final_fc)\."),
        "the classifier's head (a probe/finetune result, not the encoder)",
    ),
    (
        re.compile(r"^prototypes_second\."),
        "the frozen stream's prototypes (unused by the released cross stage)",
    ),
)


def read(path: str | Path) -> Released:
    """The released checkpoint at ``path``, mapped to our module keys (refused safely if not plain tensors)."""
    p = Path(path)
    state = ckpt.read_state(p)
    if not is_released(state):
        raise ReleasedError(f"{p}: not a released ViCC/CoCLR checkpoint (no 'state_dict')")
    return from_state_dict(state["state_dict"], p)


def from_state_dict(state_dict: dict[str, Any], path: str | Path = "<state_dict>") -> Released:
    """Map a released ``state_dict`` (any of the layouts in the module docstring) to our keys."""
    p = Path(path)
    sd = _strip_module(dict(state_dict))
    if any(k.startswith("encoder_q.0.") for k in sd):
        kind, main_prefix = "pretrain", "encoder_q."
    elif any(k.startswith("backbone.") for k in sd):
        kind, main_prefix = "classifier", ""
    else:
        raise ReleasedError(f"{p}: no 'encoder_q.0.*', 'backbone.*' or 'module.*' keys: not a released model")
    bb_prefix = "encoder_q.0." if kind == "pretrain" else "backbone."
    backbone = _backbone_of(sd, bb_prefix, p)
    used: set[str] = set()

    def stream(prefix: str, bb: str) -> StreamWeights:
        enc = map_backbone(sd, bb, backbone, p)
        head = _head(sd, prefix, p) if prefix else None
        used.update(
            k for k in sd if k.startswith(bb) or (prefix and re.match(rf"^{re.escape(prefix)}[24]\.", k))
        )
        return StreamWeights(enc, head)

    main = stream(main_prefix, bb_prefix)
    if "prototypes.weight" in sd:
        main.prototypes = sd["prototypes.weight"]
        used.add("prototypes.weight")
    other = None
    for name in ("second.", "sampler."):
        if any(k.startswith(f"{name}0.") for k in sd):
            other = stream(name, f"{name}0.")
    left_out: dict[str, str] = {}
    for k in sd:
        if k in used:
            continue
        why = next((w for rx, w in _LEFT_OUT if rx.search(k)), None)
        if why is None:
            raise ReleasedError(f"{p}: key '{k}' has no place in our modules (not a known released layer)")
        left_out[k] = why
    return Released(p, backbone, kind, main, other, left_out)


# --------------------------------------------------------------------------------------------- our modules
def model_overrides(rel: Released) -> list[str]:
    """``model.*`` settings our modules need to take these weights (backbone, head width, prototypes)."""
    out = [f"model.backbone={rel.backbone}", "model.resnet=paper", "model.s3d_init=released"]
    if rel.main.head is not None:
        out += [
            f"model.proj_hidden={rel.main.head['fc1.weight'].shape[0]}",
            f"model.proj_dim={rel.main.head['fc2.weight'].shape[0]}",
        ]
    if rel.main.prototypes is not None:
        out.append(f"model.num_prototypes={rel.main.prototypes.shape[0]}")
    return out


def load_encoder_weights(encoder: nn.Module, weights: StreamWeights, path: str | Path) -> None:
    """Strictly load a released encoder into one of ours: a missing or unexpected key is an error."""
    try:
        encoder.load_state_dict(weights.encoder, strict=True)
    except RuntimeError as exc:
        raise ReleasedError(f"{path}: {str(exc).splitlines()[0]} ({str(exc).splitlines()[1:2]})") from None


def base_config(backbone: str, overrides: list[str] | tuple[str, ...] = ()) -> C.Config:
    """The paper's UCF101 config of the backbone (configs/ucf101_<backbone>.yaml: the protocol a released
    checkpoint is measured with) with ``overrides`` (data.root, ... and :func:`model_overrides`)."""
    cfg_path = Path(__file__).resolve().parent.parent / "configs" / f"ucf101_{backbone}.yaml"
    return C.load(cfg_path if cfg_path.is_file() else C.DEFAULT_CONFIG, list(overrides))


def place(method: Any, stream: Stream, weights: StreamWeights, path: str | Path) -> None:
    """Released weights into ``method``'s ``stream``: encoder (strict), and head and prototypes where the file
    has them and the method keeps them (ViCC: ``nets[s].head``, ``protos[s]``)."""
    load_encoder_weights(method.encoders()[stream], weights, path)
    nets = getattr(method, "nets", None)
    if weights.head is not None and nets is not None:
        nets[stream.value].head.load_state_dict(weights.head, strict=True)
    protos = getattr(method, "protos", None)
    if weights.prototypes is not None and protos is not None:
        with torch.no_grad():
            protos[stream.value].layer.weight.copy_(weights.prototypes)


def build_method(rel: Released, stream: Stream, cfg: C.Config) -> Any:
    """The method of ``cfg`` with ``rel.main`` in ``stream`` and ``rel.other`` (cross-stream files) in the
    other stream. cfg must carry :func:`model_overrides`."""
    from vicc_fast.methods import build_method as build

    method = build(cfg)
    place(method, stream, rel.main, rel.path)
    if rel.other is not None:
        place(method, Stream.flow if stream is Stream.rgb else Stream.rgb, rel.other, rel.path)
    return method


def convert(
    rgb: str | Path, flow: str | Path, out_dir: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[Path, list[str]]:
    """A run folder whose stage 1 is a released single-stream pair (as ``main_cross.py --pretrain RGB FLOW``):
    writes ``<out_dir>/checkpoints/{<stage-1 phases>,last}.pt``, so training with ``train.resume=auto`` goes on
    with the cross-stream stage. Returns (last.pt, the ``model.*`` overrides the training config must carry)."""
    from vicc_fast.methods import build_method as build

    r, f = read(rgb), read(flow)
    if r.backbone != f.backbone or model_overrides(r) != model_overrides(f):
        raise ReleasedError(f"{rgb} and {flow} are not the same kind of model ({r.backbone}, {f.backbone})")
    mo = model_overrides(r)
    cfg = base_config(r.backbone, [*mo, *overrides, f"train.out_dir={out_dir}"])
    method = build(cfg)
    place(method, Stream.rgb, r.main, rgb)
    place(method, Stream.flow, f.main, flow)
    stage1 = [p.name for p in method.phases() if p.frozen_stream is None]
    if not stage1:
        raise ReleasedError(f"method.name={cfg.method.name.value} has no single-stream stage to start from")
    state = {
        "config": C.to_dict(cfg),
        "method": method.state_dict(),
        "phase": stage1[-1],
        "epoch": 0,
        "step": 0,
        "optimizer": {},
        "scaler": {},
        "rng": {},
        "completed": stage1,
        "global_step": 0,
    }  # fmt: skip  (no RNG state: the cross-stream phases draw every step's RNG from seed, rank, phase, step)
    for name in (*stage1, "last"):
        ckpt.save(ckpt.ckpt_dir(out_dir) / f"{name}.pt", state)
    return ckpt.latest_path(out_dir), mo


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m vicc_fast.released",
        description="Start a run from the released single-stream checkpoints (ViCC-RGB-1 / ViCC-Flow-1, "
        "CoCLR's InfoNCE pair): writes RUN/checkpoints/last.pt with stage 1 done, so "
        "'python -m vicc_fast.train --config CFG train.out_dir=RUN <model overrides>' trains the cross-stream "
        "stage from them. (Evaluating a released file needs no conversion: python -m vicc_fast.eval retrieval "
        "--ckpt FILE --stream rgb data.root=...)",
    )
    ap.add_argument("--rgb", required=True, help="released RGB checkpoint (.pth.tar)")
    ap.add_argument("--flow", required=True, help="released flow checkpoint (.pth.tar)")
    ap.add_argument("--out-dir", required=True, help="run folder to create (its checkpoints/ is written)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides on the paper config")
    args = ap.parse_args(argv)
    try:
        last, mo = convert(args.rgb, args.flow, args.out_dir, args.overrides)
    except (ckpt.CheckpointError, C.ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {last}; train with: train.out_dir={args.out_dir} {' '.join(mo)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
