"""What an evaluation starts from, checked before any compute: the checkpoint and the shard set.

- :func:`load_checkpoint`: the trained method from a checkpoint (a truncated or foreign file, or one whose
  weights do not fit the backbone its config names, is a :class:`~vicc_fast.checkpoint.CheckpointError`
  naming the file), the config it was trained with plus the caller's ``key=value`` overrides (``model.*``
  cannot be overridden: the weights fix the architecture), and which table row each stream's encoder belongs
  to (RGB-1 after ``rgb1``, RGB-2 after the cross-stream stage, ...).
- :func:`check_dataset`: the shard folder has a manifest, a train and a test split, every shard it lists exists,
  and the classes present in train and test are the same (read from the 16-byte ``.lbl`` members, no decoding).
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from vicc_fast import checkpoint as ckpt
from vicc_fast import config as C
from vicc_fast import released
from vicc_fast.config import Stream
from vicc_fast.methods.base import STREAM_LABEL


class EvalInputError(ValueError):
    """Unusable evaluation input (data set, overrides); the message names the file or key."""


# --------------------------------------------------------------------------------------------- checkpoint
@dataclass
class LoadedCheckpoint:
    path: Path
    cfg: C.Config
    method: Any  # vicc_fast.methods.base.Method
    encoders: dict[Stream, nn.Module]
    labels: dict[str, str]  # "rgb" -> "RGB-2", "flow" -> "Flow-2", "rf" -> "R+F-2"; untrained streams absent
    phase: str
    trained_phases: list[str]
    sha256: str

    @property
    def trained_streams(self) -> list[Stream]:
        return [s for s in Stream if s.value in self.labels]


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def apply_overrides(cfg: C.Config, overrides: list[str] | tuple[str, ...]) -> C.Config:
    """``cfg`` with ``key=value`` overrides, validated; ``model.*`` keys that change the model are refused."""
    base = OmegaConf.structured(cfg)
    layers = [base]
    for item in overrides:
        if "=" not in item:
            raise C.ConfigError(f"override '{item}' is not key=value")
        key = item.split("=", 1)[0]
        if key.lstrip("+~") in C.MOVED:
            raise C._moved_error(key.lstrip("+~"), f"override '{item}'")
        try:
            layers.append(OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise C.ConfigError(f"override '{key}': {str(exc).splitlines()[0]}") from None
    try:
        out = OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as exc:
        raise C.ConfigError(C._one_line(exc)) from None
    assert isinstance(out, C.Config)
    C.validate(out)
    if C.to_dict(out)["model"] != C.to_dict(cfg)["model"]:
        changed = [k for k, v in C.to_dict(out)["model"].items() if C.to_dict(cfg)["model"][k] != v]
        raise C.ConfigError(
            f"config key 'model.{changed[0]}': the checkpoint was trained with "
            f"model.{changed[0]}={C.to_dict(cfg)['model'][changed[0]]}; its weights fix the model"
        )
    return out


def stream_labels(phases: list[Any], trained: list[str]) -> dict[str, str]:
    """Table row of each stream's encoder, from the last trained phase that optimised it.

    phases: the method's PhaseSpec list; trained: names of phases whose training the weights include. The label
    is the phase's row label (``PhaseSpec.row_labels``: "RGB-1", "Flow-2", "RGB-joint", ...) or, for a phase
    without one (an earlier cross-stream cycle), "RGB-2 (cross_rgb_c1)". With no trained phase at all (an
    initial checkpoint), "RGB-0"/"Flow-0".
    """
    out: dict[str, str] = {}
    done = [p for p in phases if p.name in set(trained)]
    for s in Stream:
        last = [p for p in done if s in p.trained_streams]
        if last:
            p = last[-1]
            stage = 2 if p.frozen_stream is not None else 1
            out[s.value] = p.row_labels().get(s) or f"{STREAM_LABEL[s]}-{stage} ({p.name})"
    if not done:
        out = {s.value: f"{STREAM_LABEL[s]}-0" for s in Stream}
    if len(out) == 2:
        r, f = out["rgb"].removeprefix("RGB-"), out["flow"].removeprefix("Flow-")
        out["rf"] = f"R+F-{r}" if r == f and " " not in r else "R+F"
    return out


def encoder_sha256(encoder: nn.Module) -> str:
    """Hash of an encoder's weights and buffers (the same encoder in two checkpoints hashes equal)."""
    h = hashlib.sha256()
    for k, v in sorted(encoder.state_dict().items()):
        h.update(k.encode())
        if hasattr(v, "detach"):
            t = v.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(v).encode())
    return h.hexdigest()


def stage_checkpoints(run_dir: str | Path) -> list[Path]:
    """The checkpoints that give a run's table rows: the end of stage 1 and the end of stage 2 (when present).

    Reads ``<run>/checkpoints/<phase>.pt`` (the engine keeps one per finished phase) and picks, for each stage,
    the latest phase whose checkpoint exists; falls back to ``last.pt`` when no phase checkpoint exists.
    """
    from vicc_fast.methods import build_method

    folder = Path(run_dir) / "checkpoints"
    files = {p.stem: p for p in folder.glob("*.pt")} if folder.is_dir() else {}
    if not files:
        raise EvalInputError(f"{folder}: no checkpoints (train first, or pass a checkpoint file)")
    any_file = files.get("last") or next(iter(files.values()))
    cfg = ckpt.load_config(any_file)
    phases = build_method(cfg).phases()
    picked: list[Path] = []
    for stage_single in (True, False):
        have = [p for p in phases if (p.frozen_stream is None) == stage_single and p.name in files]
        if have:
            picked.append(files[have[-1].name])
    if picked:
        return picked
    if "last" in files:
        return [files["last"]]
    raise EvalInputError(f"{folder}: no phase checkpoint or last.pt")


def load_checkpoint(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), released_stream: str | None = None
) -> LoadedCheckpoint:
    """The method stored in checkpoint ``path`` (CPU, eval mode) with its config and stream labels.

    A released ViCC/CoCLR file (``vicc_fast/released.py``) is read too: its trained encoder goes to
    ``released_stream`` (rgb | flow: the file does not say which), on the paper config of its backbone."""
    from vicc_fast.methods import build_method

    p = Path(path)
    raw = ckpt.read_state(p, "cpu")
    if released.is_released(raw):
        return _load_released(p, raw, overrides, released_stream)
    state = ckpt.check(raw, p)
    trained_cfg = ckpt.stored_config(state, p)
    cfg = apply_overrides(trained_cfg, overrides)
    method = build_method(trained_cfg)
    ckpt.load_method_state(method, state["method"], p)  # strict: another backbone is a CheckpointError
    method.eval()
    phases = method.phases()
    names = [q.name for q in phases]
    completed = [n for n in state.get("completed", []) if n in names]
    current = str(state["phase"])
    trained = list(completed)
    if current in names and current not in trained and (int(state["epoch"]) > 0 or int(state["step"]) > 0):
        trained.append(current)  # a mid-phase checkpoint: its stream has partly trained weights
    labels = stream_labels(phases, trained)
    return LoadedCheckpoint(
        path=p,
        cfg=cfg,
        method=method,
        encoders=method.encoders(),
        labels=labels,
        phase=current,
        trained_phases=trained,
        sha256=file_sha256(p),
    )


def _load_released(
    p: Path, raw: dict[str, Any], overrides: list[str] | tuple[str, ...], stream: str | None
) -> LoadedCheckpoint:
    """A released checkpoint as a LoadedCheckpoint: one trained stream, labelled by its stage (a cross-stream
    file: "RGB-2"; single-stream: "RGB-1"; a classifier's backbone: "RGB (classifier)")."""
    if stream not in ("rgb", "flow"):
        raise EvalInputError(
            f"{p} is a released ViCC/CoCLR checkpoint: name the stream its encoder was trained on with "
            "--stream rgb or --stream flow (ViCC-RGB-*: rgb, ViCC-Flow-*: flow)"
        )
    rel = released.from_state_dict(raw["state_dict"], p)
    s = Stream(stream)
    model = released.model_overrides(rel)
    if any(o.split("=", 1)[0].startswith("model.") for o in overrides):
        raise C.ConfigError(f"config key 'model': fixed by the released weights of {p} ({' '.join(model)})")
    cfg = released.base_config(rel.backbone, [*model, *overrides])
    method = released.build_method(rel, s, cfg)
    method.eval()
    stage = "classifier" if rel.kind == "classifier" else ("2" if rel.other is not None else "1")
    label = f"{STREAM_LABEL[s]} (classifier)" if stage == "classifier" else f"{STREAM_LABEL[s]}-{stage}"
    return LoadedCheckpoint(
        path=p,
        cfg=cfg,
        method=method,
        encoders=method.encoders(),
        labels={s.value: label},
        phase="released",
        trained_phases=[],
        sha256=file_sha256(p),
    )


# --------------------------------------------------------------------------------------------- data set
@dataclass
class DatasetInfo:
    root: Path
    classes: list[str]
    num_samples: dict[str, int]
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # split -> [N] labels in index order
    keys: dict[str, list[tuple[str, str]]] = field(
        default_factory=dict
    )  # split -> [(tar path, key)] by index
    manifest_sha256: str = ""
    # what the set is, from its build settings (e.g. "synthetic", "ucf101 split 1"), never a path
    name: str = ""


def dataset_name(settings: dict[str, Any], num_classes: int) -> str:
    """A data set's name from its manifest's build settings: ``synthetic``, ``ucf101 split 1``, ...; its class
    count when the settings do not say (a set built by hand)."""
    if settings.get("synthetic"):
        name = "synthetic"
    elif settings.get("source"):
        split = settings.get("split_id")
        name = f"{settings['source']} split {split}" if split else str(settings["source"])
    else:
        name = "data set"
    return f"{name} ({num_classes} classes)"


def _read_labels(tar_path: Path, split: str, n: int, labels: np.ndarray, where: list[tuple[str, str]]) -> int:
    """Fill labels[index] from the ``.lbl`` members of one shard; returns how many it held."""
    count = 0
    try:
        with tarfile.open(tar_path, "r:") as tf:
            for m in tf:
                if not m.isreg() or not m.name.endswith(".lbl"):
                    continue
                f = tf.extractfile(m)
                data = f.read() if f is not None else b""
                if len(data) != 16:
                    raise EvalInputError(f"{tar_path}: member {m.name} has {len(data)} bytes, expected 16")
                label, index = (int(v) for v in np.frombuffer(data, dtype="<i8"))
                if not 0 <= index < n:
                    raise EvalInputError(
                        f"{tar_path}: {m.name} has index {index} outside the {split} split [0, {n})"
                    )
                labels[index] = label
                where[index] = (str(tar_path), m.name.split(".", 1)[0])
                count += 1
    except (tarfile.TarError, OSError) as exc:
        raise EvalInputError(f"{tar_path}: unreadable shard ({exc})") from None
    return count


def check_dataset(root: str | Path, require_recipe: str = "none") -> DatasetInfo:
    """Validate a shard folder for evaluation; every problem is one EvalInputError naming the file.
    ``require_recipe``: data.require_recipe (released: a build other than the released recipe is refused)."""
    from vicc_fast.data.manifest import DataError, check_recipe, load_manifest

    r = Path(root)
    mpath = r / "manifest.json"
    try:
        m = load_manifest(r)  # the loader's own checks: version, shard files present, counts
        check_recipe(m, require_recipe)
    except DataError as exc:
        raise EvalInputError(str(exc)) from None
    classes = m.classes
    for split in ("train", "test"):
        if split not in m.splits or m.splits[split].num_samples <= 0:
            raise EvalInputError(
                f"{mpath}: the data set has no {split} split (retrieval queries test videos against train videos)"
            )
    info = DatasetInfo(
        root=r,
        classes=classes,
        num_samples={s: m.splits[s].num_samples for s in ("train", "test")},
        manifest_sha256=file_sha256(mpath),
        name=dataset_name(m.settings, len(classes)),
    )
    for split in ("train", "test"):
        n = info.num_samples[split]
        labels = np.full(n, -1, dtype=np.int64)
        where: list[tuple[str, str]] = [("", "")] * n
        for shard in m.splits[split].shards:
            _read_labels(shard.tar, split, n, labels, where)
        if (labels < 0).any():
            raise EvalInputError(
                f"{r}: {int((labels < 0).sum())} of {n} {split} videos have no label in the shards"
            )
        if labels.max() >= len(classes):
            raise EvalInputError(
                f"{r}: {split} label {int(labels.max())} >= the {len(classes)} manifest classes"
            )
        info.labels[split], info.keys[split] = labels, where
    tr, te = set(info.labels["train"].tolist()), set(info.labels["test"].tolist())
    if tr != te:
        only_tr = [classes[i] for i in sorted(tr - te)]
        only_te = [classes[i] for i in sorted(te - tr)]
        raise EvalInputError(
            f"{r}: classes differ between train and test (train only: {only_tr[:5]}, test only: {only_te[:5]})"
        )
    return info


def thumbnail(info: DatasetInfo, split: str, index: int, size: int = 96) -> np.ndarray:
    """The middle frame of a video's RGB clip as ``[H, W, 3]`` uint8, scaled to ``size`` pixels high."""
    import io

    import av

    tar_path, key = info.keys[split][index]
    try:
        with tarfile.open(tar_path, "r:") as tf:
            f = tf.extractfile(f"{key}.rgb.webm")
            data = f.read() if f is not None else b""
        with av.open(io.BytesIO(data)) as container:
            frames = [fr for fr in container.decode(video=0)]
    except (KeyError, tarfile.TarError, OSError, av.error.FFmpegError) as exc:
        raise EvalInputError(f"{tar_path}: cannot read the RGB video of {key} ({exc})") from None
    if not frames:
        raise EvalInputError(f"{tar_path}: the RGB video of {key} has no frames")
    frame = frames[len(frames) // 2]
    h = size
    w = max(1, round(frame.width * size / frame.height))
    return frame.to_ndarray(format="rgb24", width=w, height=h)
