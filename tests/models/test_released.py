"""Released ViCC / CoCLR checkpoints (by key names and shapes) load into our encoders with every tensor placed,
and give the forward of the released layer order.

tests/models/released/*.json: the state-dict keys, shapes and dtypes the released modules produce, and which
keys alias one tensor (the released S3D registers each layer twice: ``Conv_1a`` and ``block1.0``). They were
read off the released definitions (martinetoering/ViCC src/backbone/{s3dg,r21d}.py, src/model/{pretrain,
classifier}.py; TengdaHan/CoCLR model/pretrain.py, model/classifier.py) by instantiating each module and listing
``state_dict()``; each file's ``source`` names the commit and the constructor call. The reference forwards
below are written from those definitions' ``forward`` methods as plain functional ops over the released keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vicc_fast import released
from vicc_fast.config import Stream
from vicc_fast.models.backbones import S3D, PaperResNet

FACTS = Path(__file__).parent / "released"


def facts(name: str) -> dict:
    return json.loads((FACTS / f"{name}.json").read_text())


def random_state(name: str, seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    """A random tensor per released key, with the released shapes and dtypes; aliases share their tensor."""
    g = torch.Generator().manual_seed(seed)
    d = facts(name)
    out: dict[str, torch.Tensor] = {}
    for k, (shape, dtype) in d["keys"].items():
        if k in d["alias_of"]:
            out[prefix + k] = out[prefix + d["alias_of"][k]]
        elif dtype == "int64":
            out[prefix + k] = torch.randint(0, 100, shape, generator=g)
        elif k.endswith("running_var"):
            out[prefix + k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[prefix + k] = torch.randn(shape, generator=g) * 0.1
    return out


# -------------------------------------------------------------------------- reference forwards (released)
def _bn(sd, p, x, eps=1e-5):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
                        False, 0.0, eps)  # fmt: skip


def _basic(sd, p, x):  # s3dg.BasicConv3d: conv (no padding, 1x1x1 here) -> bn -> relu
    return F.relu(_bn(sd, p + "bn.", F.conv3d(x, sd[p + "conv.weight"])))


def _st(sd, p, x, k, s, pad):  # s3dg.STConv3d: (1,k,k) conv -> bn1 -> relu -> (k,1,1) conv -> bn2 -> relu
    ts, ss = s if isinstance(s, tuple) else (s, s)
    x = F.relu(_bn(sd, p + "bn1.", F.conv3d(x, sd[p + "conv1.weight"], None, (1, ss, ss), (0, pad, pad))))
    return F.relu(_bn(sd, p + "bn2.", F.conv3d(x, sd[p + "conv2.weight"], None, (ts, 1, 1), (pad, 0, 0))))


def _inception(sd, p, x):  # s3dg.SepInception without gating
    b0 = _basic(sd, p + "branch0.0.", x)
    b1 = _st(sd, p + "branch1.1.", _basic(sd, p + "branch1.0.", x), 3, 1, 1)
    b2 = _st(sd, p + "branch2.1.", _basic(sd, p + "branch2.0.", x), 3, 1, 1)
    b3 = _basic(sd, p + "branch3.1.", F.max_pool3d(x, 3, 1, 1))
    return torch.cat([b0, b1, b2, b3], 1)


def released_s3d(sd: dict[str, torch.Tensor], p: str, x: torch.Tensor) -> torch.Tensor:
    """s3dg.S3D.forward (block1..block5), globally average pooled -> [B, 1024]."""
    x = _st(sd, p + "Conv_1a.", x, 7, 2, 3)
    x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    x = _st(sd, p + "Conv_2c.", _basic(sd, p + "Conv_2b.", x), 3, 1, 1)
    x = F.max_pool3d(x, (1, 3, 3), (1, 2, 2), (0, 1, 1))
    x = _inception(sd, p + "Mixed_3c.", _inception(sd, p + "Mixed_3b.", x))
    x = F.max_pool3d(x, 3, 2, 1)
    for m in ("4b", "4c", "4d", "4e", "4f"):
        x = _inception(sd, p + f"Mixed_{m}.", x)
    x = F.max_pool3d(x, 2, 2, 0)
    x = _inception(sd, p + "Mixed_5c.", _inception(sd, p + "Mixed_5b.", x))
    return x.mean(dim=(2, 3, 4))


def _stconv(sd, p, x, k, s, pad):  # r21d.SpatioTemporalConv: spatial -> bn -> relu -> temporal
    x = F.conv3d(x, sd[p + "spatial_conv.weight"], None, (1, s[1], s[2]), (0, pad[1], pad[2]))
    x = F.relu(_bn(sd, p + "bn.", x))
    return F.conv3d(x, sd[p + "temporal_conv.weight"], None, (s[0], 1, 1), (pad[0], 0, 0))


def released_r21d(sd: dict[str, torch.Tensor], p: str, x: torch.Tensor) -> torch.Tensor:
    """r21d.R2Plus1DNet((1, 1, 1, 1)).forward -> [B, 512]."""
    x = F.relu(_bn(sd, p + "bn1.", _stconv(sd, p + "conv1.", x, None, (1, 2, 2), (1, 3, 3))))
    for stage in (2, 3, 4, 5):
        b = p + f"conv{stage}.block1."
        s = (2, 2, 2) if stage > 2 else (1, 1, 1)
        res = F.relu(_bn(sd, b + "bn1.", _stconv(sd, b + "conv1.", x, None, s, (1, 1, 1))))
        res = _bn(sd, b + "bn2.", _stconv(sd, b + "conv2.", res, None, (1, 1, 1), (1, 1, 1)))
        if stage > 2:
            x = _bn(sd, b + "downsamplebn.", _stconv(sd, b + "downsampleconv.", x, None, s, (0, 0, 0)))
        x = F.relu(x + res)
    return x.mean(dim=(2, 3, 4))


def released_head(sd: dict[str, torch.Tensor], p: str, f: torch.Tensor) -> torch.Tensor:
    """encoder_q.2 (1x1x1 conv) -> ReLU -> encoder_q.4, as the pooled [B, F] feature sees them."""
    w2, w4 = sd[p + "2.weight"].flatten(1), sd[p + "4.weight"].flatten(1)
    return F.linear(F.relu(F.linear(f, w2, sd[p + "2.bias"])), w4, sd[p + "4.bias"])


REFERENCE = {"s3d": released_s3d, "r21d": released_r21d}
OURS = {"s3d": lambda: S3D("released"), "r21d": lambda: PaperResNet("r21d")}


# -------------------------------------------------------------------------------------------- the tests
CASES = [
    ("vicc_s3d_single", "encoder_q.0.", None),
    ("vicc_s3d_cross", "encoder_q.0.", "second.0."),
    ("vicc_s3d_classifier", "backbone.", None),
    ("vicc_r21d_single", "encoder_q.0.", None),
    ("vicc_r21d_cross", "encoder_q.0.", "second.0."),
    ("vicc_r21d_classifier", "backbone.", None),
    ("coclr_s3d_infonce", "encoder_q.0.", None),
    ("coclr_s3d_cotrain", "encoder_q.0.", "sampler.0."),
    ("coclr_s3d_classifier", "backbone.", None),
]


@pytest.mark.parametrize("wrap", ["", "module."])
@pytest.mark.parametrize("name,main,other", CASES)
def test_released_state_dicts_place_every_tensor(name: str, main: str, other: str | None, wrap: str) -> None:
    """Every released key is placed in our encoder (each of our tensors receives exactly the released one it
    maps from) or named as left out for a stated reason; nothing missing, nothing left over."""
    sd = random_state(name, prefix=wrap)
    rel = released.from_state_dict(sd, name)
    backbone = "r21d" if "r21d" in name else "s3d"
    assert rel.backbone == backbone and rel.kind == ("classifier" if main == "backbone." else "pretrain")
    plain = {k.removeprefix(wrap): v for k, v in sd.items()}
    fn = released.KEY_MAPS[backbone]
    for prefix, weights in ((main, rel.main), (other, rel.other)):
        if prefix is None:
            assert weights is None
            continue
        enc = OURS[backbone]()
        released.load_encoder_weights(enc, weights, name)  # strict: a missing or unexpected key raises
        ours = enc.state_dict()
        theirs = {k[len(prefix) :]: v for k, v in plain.items() if k.startswith(prefix)}
        placed = {fn(k) for k in theirs}
        assert placed == set(ours)
        for k, v in theirs.items():
            assert torch.equal(ours[fn(k)], v), k
    head_prefixes = tuple(p[:-2] for p in (main, other) if p and p != "backbone.")
    used = {k for k in plain if k.startswith((main, *(p for p in (other,) if p)))}
    used |= {k for k in plain if k.startswith(head_prefixes) and k.split(".")[1] in ("2", "4")}
    used |= {"prototypes.weight"} & set(plain)
    assert set(rel.left_out) == set(plain) - used
    expect_left = {k.split(".")[0] for k in rel.left_out}
    assert expect_left <= {"queue", "queue_ptr", "queue_second", "queue_vname", "queue_label", "encoder_k",
                           "final_bn", "final_fc"}  # fmt: skip


@pytest.mark.parametrize(
    "name,prefix", [("vicc_s3d_cross", "encoder_q."), ("vicc_r21d_single", "encoder_q.")]
)
def test_released_weights_give_the_released_forward(name: str, prefix: str) -> None:
    """Our encoder and head with released weights compute what the released layer order computes (eval mode),
    in the method the evaluation builds (model overrides from the file, paper config)."""
    sd = random_state(name, seed=1)
    rel = released.from_state_dict(sd, name)
    cfg = released.base_config(rel.backbone, released.model_overrides(rel))
    method = released.build_method(rel, Stream.rgb, cfg).eval()
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(2))
    want = REFERENCE[rel.backbone](sd, prefix + "0.", x)
    with torch.no_grad():
        got = method.encoders()[Stream.rgb](x)
        z = method.nets["rgb"].head(got)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z, F.normalize(released_head(sd, prefix, want), dim=1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(method.protos["rgb"].weight, sd["prototypes.weight"])
    if rel.other is not None:  # the frozen stream of a cross-stream file goes to the other stream
        with torch.no_grad():
            torch.testing.assert_close(method.encoders()[Stream.flow](x), REFERENCE[rel.backbone](sd, "second.0.", x),
                                       rtol=1e-4, atol=1e-5)  # fmt: skip


def test_s3d_init_is_what_makes_the_forward_equal() -> None:
    """torchvision's BatchNorm eps (1e-3) does not reproduce the released S3D (eps 1e-5): the switch matters."""
    sd = random_state("vicc_s3d_single", seed=3)
    for k, v in sd.items():
        if k.endswith("running_var") and k.startswith("encoder_q.0.Mixed_"):
            v.mul_(1e-3)  # small variances, as trained BN layers have: eps then matters
    rel = released.from_state_dict(sd, "f")
    x = torch.randn(1, 3, 8, 32, 32)
    want = released_s3d(sd, "encoder_q.0.", x)
    outs = {}
    for norm in ("torchvision", "released"):
        enc = S3D(init=norm).eval()
        enc.load_state_dict(rel.main.encoder)
        with torch.no_grad():
            outs[norm] = ((enc(x) - want).norm() / want.norm()).item()
    assert outs["released"] < 1e-5 and outs["torchvision"] > 1e-3


def test_unknown_and_inconsistent_keys_are_errors() -> None:
    sd = random_state("vicc_r21d_single")
    bad = {**sd, "encoder_q.0.conv2.blocks.0.bn1.weight": torch.zeros(64)}
    with pytest.raises(released.ReleasedError, match="conv2.blocks.0.bn1.weight"):
        released.from_state_dict(bad, "x.pth.tar")
    sd = random_state("vicc_s3d_single")
    sd["encoder_q.0.block1.0.conv1.weight"] = sd["encoder_q.0.block1.0.conv1.weight"] + 1
    with pytest.raises(released.ReleasedError, match="hold different values"):
        released.from_state_dict(sd, "x.pth.tar")
    with pytest.raises(released.ReleasedError, match="not a released model"):
        released.from_state_dict({"foo.weight": torch.zeros(1)}, "x.pth.tar")
