"""Read and validate a shard folder's ``manifest.json``; per-sample metadata; which samples each rank reads.

The shard format (docs/shard_format.md; docs/architecture.md, Contracts: Shards): one WebDataset sample per video with members
``{key}.rgb.webm``, ``{key}.flow.webm``, ``{key}.lbl`` (int64 ``[label, index]``) and ``{key}.json``, and
beside each tar a DALI index (``wds2idx`` format). Everything here is plain Python: no DALI, no torch.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MEMBERS = ("rgb.webm", "flow.webm", "lbl", "json")


class DataError(RuntimeError):
    """A problem with the data on disk, phrased as one line that names the file (and sample)."""


class BadSampleError(DataError):
    """One sample that cannot be used: names its shard and key."""

    def __init__(self, shard: str | Path, key: str, reason: str) -> None:
        super().__init__(f"bad sample '{key}' in shard {shard}: {reason}")
        self.shard = str(shard)
        self.key = key
        self.reason = reason

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.shard, self.key, self.reason))


@dataclass
class Shard:
    """One tar file of a split. ``index`` is None when the DALI index file is absent."""

    tar: Path
    index: Path | None
    num_samples: int
    keys: list[str]
    sha256: str = ""


@dataclass
class Split:
    name: str
    shards: list[Shard]
    num_samples: int
    # filled by load_sample_meta(): per sample in index order
    frames: np.ndarray | None = None  # [N] int64 frame count of each video
    labels: np.ndarray | None = None  # [N] int64
    sources: np.ndarray | None = None  # [N] int64 source-video id (source_group; the group's first index)

    @property
    def keys(self) -> list[str]:
        return [k for s in self.shards for k in s.keys]

    def locate(self, index: int) -> tuple[Shard, str]:
        """The shard and key of the sample at ``index`` (its position in manifest order)."""
        i = int(index)
        for s in self.shards:
            if i < s.num_samples:
                return s, s.keys[i]
            i -= s.num_samples
        raise IndexError(f"sample index {index} out of range for split '{self.name}' ({self.num_samples})")


@dataclass
class Manifest:
    root: Path
    classes: list[str]
    splits: dict[str, Split]
    video: dict[str, Any] = field(default_factory=dict)
    flow: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # the build's settings (data_prep.build)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(
                f"{self.root / 'manifest.json'}: no split '{name}' (has: {', '.join(self.splits) or 'none'})"
            )
        return self.splits[name]


def load_manifest(root: str | Path) -> Manifest:
    """Parse and check ``root/manifest.json``: version, shard files present, counts consistent."""
    root = Path(root)
    path = root / "manifest.json"
    if not path.is_file():
        raise DataError(f"manifest not found: {path} (build shards with `python -m data_prep`)")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from None
    if raw.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {raw.get('format_version')!r}, expected {FORMAT_VERSION}")
    try:
        splits: dict[str, Split] = {}
        for name, sp in raw["splits"].items():
            shards = []
            for sh in sp["shards"]:
                tar = root / sh["tar"]
                if not tar.is_file():
                    raise DataError(f"{path}: shard file missing: {tar}")
                idx = root / sh["index"] if sh.get("index") else None
                if idx is not None and not idx.is_file():
                    idx = None  # DALI rebuilds the index from the tar (slower start, same result)
                keys = list(sh["keys"])
                if len(keys) != int(sh["num_samples"]):
                    raise DataError(
                        f"{path}: shard {sh['tar']} lists {len(keys)} keys, num_samples {sh['num_samples']}"
                    )
                shards.append(Shard(tar, idx, len(keys), keys, sh.get("sha256", "")))
            n = sum(s.num_samples for s in shards)
            if n != int(sp["num_samples"]):
                raise DataError(
                    f"{path}: split '{name}' shards hold {n} samples, num_samples says {sp['num_samples']}"
                )
            splits[name] = Split(name, shards, n)
        return Manifest(
            root,
            list(raw["classes"]),
            splits,
            dict(raw.get("video", {})),
            dict(raw.get("flow", {})),
            dict(raw.get("settings", {})),
        )
    except KeyError as exc:
        raise DataError(f"{path}: missing field {exc}") from None


# The data the released code trained on (ViCC src/process_data/src/extract_ff.py, convert_video_to_lmdb.py):
# UCF101's frames as decoded (320x240, never resized) and TV-L1 flow between them, bound 20.
RELEASED_RECIPE = {"height": 240, "width": 320, "flow_at": "source", "flow_method": "tvl1", "flow_bound": 20}


def recipe_mismatches(m: Manifest) -> list[str]:
    """How the build of ``m`` differs from :data:`RELEASED_RECIPE`, one phrase each (empty: it matches).
    Flow by TV-L1 in PyTorch (``tvl1-torch``) is the same algorithm and counts as TV-L1; a cap on the
    shorter side of the flow frames counts as source resolution when it is at least the stored height."""
    got = {
        "height": m.video.get("height", m.settings.get("height")),
        "width": m.video.get("width", m.settings.get("width")),
        "flow_at": m.settings.get("flow_at", "stored"),
        "flow_method": m.flow.get("method", m.settings.get("flow_method")),
        "flow_bound": m.flow.get("bound", m.settings.get("flow_bound")),
    }
    out = []
    if (got["height"], got["width"]) != (RELEASED_RECIPE["height"], RELEASED_RECIPE["width"]):
        out.append(f"frames stored at {got['height']}x{got['width']}, released 240x320")
    if got["flow_at"] != RELEASED_RECIPE["flow_at"]:
        out.append(f"flow computed at the {got['flow_at']} size, released at the source resolution")
    else:
        cap = m.settings.get("flow_short_side")
        if cap is not None and int(cap) < RELEASED_RECIPE["height"]:
            out.append(
                f"flow computed with the shorter side capped at {cap}, released at the source resolution"
            )
    method = str(got["flow_method"])
    if method not in ("tvl1", "tvl1-torch"):
        out.append(f"flow method {method}, released tvl1")
    if got["flow_bound"] is not None and float(got["flow_bound"]) != RELEASED_RECIPE["flow_bound"]:
        out.append(f"flow bound {got['flow_bound']}, released 20")
    return out


def check_recipe(m: Manifest, required: str) -> None:
    """``data.require_recipe``: ``released`` refuses a build other than :data:`RELEASED_RECIPE` with one error
    naming the manifest and every mismatch; ``none`` accepts any."""
    if required != "released":
        return
    bad = recipe_mismatches(m)
    if bad:
        raise DataError(
            f"{m.root / 'manifest.json'}: not the released data recipe ({'; '.join(bad)}); build it with "
            "`python -m data_prep ... --height 240 --width 320 --flow-at source`, or accept this build with "
            "data.require_recipe=none"
        )


# ------------------------------------------------------------------------------------------- DALI index
def read_index(path: Path) -> list[dict[str, tuple[int, int, str]]]:
    """Parse a DALI ``wds2idx`` file: per sample, ``{ext: (offset, size, member name)}``."""
    lines = path.read_text().splitlines()
    if not lines or not lines[0].startswith("v1"):
        raise DataError(f"{path}: not a DALI webdataset index (bad header)")
    samples = []
    for ln, line in enumerate(lines[1:], start=2):
        tok = line.split()
        if len(tok) % 4:
            raise DataError(f"{path}:{ln}: malformed index line")
        samples.append(
            {tok[i]: (int(tok[i + 1]), int(tok[i + 2]), tok[i + 3]) for i in range(0, len(tok), 4)}
        )
    return samples


def write_index(path: Path, samples: list[dict[str, tuple[int, int, str]]], version: str = "v1.2") -> None:
    """Write a DALI index listing ``samples`` (a subset of a tar's samples: the reader skips the rest)."""
    from vicc_fast.atomic import write_text

    body = [f"{version} {len(samples)}"]
    for s in samples:
        body.append(" ".join(f"{ext} {off} {size} {name}" for ext, (off, size, name) in s.items()))
    write_text(path, "\n".join(body) + "\n")


def _key_of(member: str) -> str:
    return member.split(".", 1)[0]


def _shard_json(shard: Shard) -> dict[str, bytes]:
    """``{key: json bytes}`` of one shard, through its DALI index when present (a few small reads)."""
    out: dict[str, bytes] = {}
    if shard.index is not None:
        with open(shard.tar, "rb") as f:
            for s in read_index(shard.index):
                if "json" in s:
                    off, size, name = s["json"]
                    f.seek(off)
                    out[_key_of(name)] = f.read(size)
        return out
    with tarfile.open(shard.tar) as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".json"):
                fo = tf.extractfile(m)
                out[_key_of(Path(m.name).name)] = fo.read() if fo else b""
    return out


_UCF_CLIP = re.compile(r"^(v_.+_g\d+)_c\d+$")


def source_group(video_id: str) -> str:
    """The source video of a sample: UCF101's ``v_<Class>_g<NN>_c<MM>`` clips of one group were cut from one
    long video (the CoCLR code's video_source.json groups them), so ``.../v_X_g08_c03`` -> ``v_X_g08``; any
    other id is its own source."""
    stem = video_id.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    m = _UCF_CLIP.match(stem)
    return m.group(1) if m else video_id


def load_sample_meta(split: Split, size: tuple[int, int] | None = None) -> Split:
    """Fill ``split.frames`` and ``split.labels`` from each sample's ``.json`` (index order); with ``size``
    (the manifest's (height, width)) a sample of another size is a BadSampleError (the pipelines draw crop
    windows from the manifest size)."""
    frames = np.zeros(split.num_samples, np.int64)
    labels = np.zeros(split.num_samples, np.int64)
    sources = np.arange(split.num_samples, dtype=np.int64)  # ids: first index of each source group
    first: dict[str, int] = {}
    i = 0
    for shard in split.shards:
        try:
            metas = _shard_json(shard)
        except (OSError, tarfile.TarError) as exc:
            raise DataError(f"shard {shard.tar}: unreadable ({exc})") from None
        for key in shard.keys:
            if key not in metas:
                raise BadSampleError(shard.tar, key, "no .json member")
            try:
                meta = json.load(io.BytesIO(metas[key]))
                frames[i] = int(meta["frames"])
                labels[i] = int(meta["label"])
            except (ValueError, KeyError, TypeError) as exc:
                raise BadSampleError(shard.tar, key, f"unreadable .json ({exc})") from None
            if size is not None and "height" in meta and (int(meta["height"]), int(meta["width"])) != size:
                raise BadSampleError(
                    shard.tar,
                    key,
                    f"{meta['height']}x{meta['width']} frames, the manifest says {size[0]}x{size[1]}",
                )
            if int(meta.get("index", i)) != i:
                raise BadSampleError(shard.tar, key, f".json index {meta.get('index')} != position {i}")
            sources[i] = first.setdefault(source_group(str(meta.get("video_id", key))), i)
            i += 1
    split.frames, split.labels, split.sources = frames, labels, sources
    return split


# ------------------------------------------------------------------------------------------ rank split
def rank_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Samples ``[start, stop)`` of ``n`` that rank ``rank`` of ``world`` reads (DALI's shard_id split)."""
    return (n * rank) // world, (n * (rank + 1)) // world


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order in which the tar files are read in ``epoch``: a permutation drawn from (seed, epoch),
    identical on every rank so that the per-rank sample ranges stay disjoint and cover the split."""
    if not shuffle:
        return list(range(num_shards))
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    return [int(i) for i in rng.permutation(num_shards)]


def clip_span(num_frames: int, stride: int) -> int:
    """Frames a clip of ``num_frames`` at ``stride`` covers: (T - 1) * s + 1."""
    return (num_frames - 1) * stride + 1
