"""WebDataset shard writer, DALI index files and manifest.json (format: docs/shard_format.md).

Every file is written atomically (temp file beside it, fsync, rename: vicc_fast/atomic.py), and the
manifest is written last: a shard folder without manifest.json is an unfinished build, and a manifest
names the sha256 of every shard it lists, so a half-written or altered shard is detected by verify.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vicc_fast.atomic import atomic_write, write_error, write_text

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "test")
DALI_INDEX_VERSION = "v1.2"
"""The index format of DALI's tools/wds2idx.py that fn.readers.webdataset reads."""

# Member suffixes of one sample (the key is the member name up to its first dot).
RGB_EXT = "rgb.webm"
FLOW_EXT = "flow.webm"
LABEL_EXT = "lbl"
JSON_EXT = "json"
EXTENSIONS = (RGB_EXT, FLOW_EXT, LABEL_EXT, JSON_EXT)
"""Order of the members of a sample inside a shard."""


class ShardFormatError(ValueError):
    """A shard folder, manifest or sample that does not follow the shard format; the message names it."""


class ShardWriteError(OSError):
    """A shard, index or manifest that could not be written (disk full, quota, size limit); the message says
    what happened and where. The file's previous version, if any, is untouched (atomic writes)."""


def sample_key(split: str, index: int) -> str:
    """Key of the index-th sample of a split, e.g. ``train000042`` (no dots: WebDataset splits on them)."""
    return f"{split}{index:06d}"


def shard_name(split: str, number: int) -> str:
    """File stem of a shard, e.g. ``train-000003``."""
    return f"{split}-{number:06d}"


def encode_label(label: int, index: int) -> bytes:
    """The ``.lbl`` member: 16 bytes, little-endian int64 ``[label, index]``."""
    return np.array([label, index], dtype="<i8").tobytes()


def decode_label(data: bytes) -> tuple[int, int]:
    if len(data) != 16:
        raise ShardFormatError(f".lbl member has {len(data)} bytes, expected 16")
    label, index = np.frombuffer(data, dtype="<i8")
    return int(label), int(index)


@dataclass
class Sample:
    """One video as stored in a shard. ``meta`` is the ``.json`` member (docs/shard_format.md lists its keys)."""

    key: str
    rgb: bytes
    flow: bytes
    label: int
    index: int
    meta: dict[str, Any]

    def members(self) -> list[tuple[str, bytes]]:
        meta = json.dumps(self.meta, sort_keys=True).encode()
        return [
            (f"{self.key}.{RGB_EXT}", self.rgb),
            (f"{self.key}.{FLOW_EXT}", self.flow),
            (f"{self.key}.{LABEL_EXT}", encode_label(self.label, self.index)),
            (f"{self.key}.{JSON_EXT}", meta),
        ]


@dataclass
class ShardInfo:
    """One shard's entry in manifest.json."""

    tar: str
    index: str
    sha256: str
    num_samples: int
    keys: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tar": self.tar,
            "index": self.index,
            "sha256": self.sha256,
            "num_samples": self.num_samples,
            "keys": list(self.keys),
        }


class _HashingWriter:
    """File wrapper that hashes what is written and counts the offset (all tarfile needs in mode "w")."""

    def __init__(self, f) -> None:
        self._f = f
        self._pos = 0
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._f.write(data)
        self.sha256.update(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos


def format_dali_index(entries: list[list[tuple[str, int, int, str]]]) -> str:
    """DALI wds2idx v1.2 index text.

    entries: per sample, its members as (extension, data offset in bytes, size, member name). The first
    line is ``v1.2 <num samples>``, then one line per sample: ``ext offset size name`` repeated.
    """
    lines = [f"{DALI_INDEX_VERSION} {len(entries)}"]
    for members in entries:
        lines.append(" ".join(f"{ext} {off} {size} {name}" for ext, off, size, name in members))
    return "\n".join(lines) + "\n"


def _split_member_name(name: str) -> tuple[str, str]:
    """``train000001.rgb.webm`` -> (``train000001``, ``rgb.webm``): split at the first dot, as DALI does."""
    base = name.rsplit("/", 1)[-1]
    dot = base.find(".")
    if dot <= 0:
        raise ShardFormatError(f"member {name!r} has no extension")
    prefix = name[: len(name) - len(base)]
    return prefix + base[:dot], base[dot + 1 :]


def dali_index_of_tar(tar_path: str | Path) -> str:
    """Index text for an existing tar (what wds2idx writes), used by verify to check the stored index."""
    entries: list[list[tuple[str, int, int, str]]] = []
    last = None
    with tarfile.open(tar_path, "r:") as tf:
        for m in tf:
            if not m.isreg():
                continue
            key, ext = _split_member_name(m.name)
            if key != last:
                entries.append([])
                last = key
            entries[-1].append((ext, m.offset_data, m.size, m.name))
    if not entries:
        raise ShardFormatError(f"{tar_path}: empty tar")
    return format_dali_index(entries)


def write_shard(tar_path: Path, samples: Iterable[Sample]) -> ShardInfo:
    """Write one tar shard and its DALI index beside it, both atomically; returns the manifest entry.

    The tar is deterministic (mtime 0, no owner names), so a rebuild from the same inputs has the same
    sha256. The index goes first: a tar without its index is not listed anywhere until the manifest is
    written, and a tar never appears without a complete index beside it.
    """
    tar_path = Path(tar_path)
    idx_path = tar_path.with_suffix(".idx")
    entries: list[list[tuple[str, int, int, str]]] = []
    keys: list[str] = []
    buf = io.BytesIO()
    hw = _HashingWriter(buf)
    with tarfile.open(fileobj=hw, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for sample in samples:
            if "." in sample.key or "/" in sample.key:
                raise ShardFormatError(f"sample key {sample.key!r} must not contain '.' or '/'")
            keys.append(sample.key)
            entries.append([])
            for name, data in sample.members():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o444
                header_len = len(info.tobuf(tf.format, tf.encoding, tf.errors))
                entries[-1].append((name.split(".", 1)[1], tf.offset + header_len, len(data), name))
                tf.addfile(info, io.BytesIO(data))
    if not keys:
        raise ShardFormatError(f"{tar_path}: refusing to write an empty shard")
    target = idx_path
    try:
        write_text(idx_path, format_dali_index(entries))
        target = tar_path
        with atomic_write(tar_path, "wb") as f:
            f.write(buf.getbuffer())
    except OSError as exc:
        raise ShardWriteError(exc.errno, write_error(target, exc, "shard file")) from exc
    _readable(idx_path, tar_path)
    return ShardInfo(
        tar=tar_path.name, index=idx_path.name, sha256=hw.sha256.hexdigest(), num_samples=len(keys), keys=keys
    )


def _chunks(items: list[Sample] | Iterator[Sample], size: int) -> Iterator[list[Sample]]:
    chunk: list[Sample] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_split(
    out_dir: str | Path, split: str, samples: Iterable[Sample], shard_size: int
) -> list[ShardInfo]:
    """Write the samples of one split into ``{split}-{NNNNNN}.tar`` shards of at most shard_size samples.

    Samples are consumed lazily: at most one shard is held in memory.
    """
    if split not in SPLITS:
        raise ShardFormatError(f"unknown split {split!r}; expected one of {SPLITS}")
    if shard_size < 1:
        raise ShardFormatError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        write_shard(out / f"{shard_name(split, n)}.tar", chunk)
        for n, chunk in enumerate(_chunks(iter(samples), shard_size))
    ]


def make_manifest(
    *,
    classes: list[str],
    splits: dict[str, list[ShardInfo]],
    video: dict[str, Any],
    flow: dict[str, Any],
    settings: dict[str, Any],
    rejected: list[dict[str, str]],
    warnings: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """The manifest.json document (docs/shard_format.md, manifest.json), plus ``warnings``: videos kept with a
    caveat (e.g. a damaged tail cut off), each {"video", "warning"}."""
    return {
        "format_version": FORMAT_VERSION,
        "classes": list(classes),
        "splits": {
            split: {
                "num_samples": sum(s.num_samples for s in shards),
                "shards": [s.to_dict() for s in shards],
            }
            for split, shards in splits.items()
        },
        "video": dict(video),
        "flow": dict(flow),
        "settings": dict(settings),
        "rejected": list(rejected),
        "warnings": list(warnings or []),
    }


def write_manifest(out_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json atomically (call it last: its presence marks a finished build)."""
    path = Path(out_dir) / MANIFEST
    try:
        write_text(path, json.dumps(manifest, indent=1, sort_keys=False) + "\n")
    except OSError as exc:
        raise ShardWriteError(exc.errno, write_error(path, exc, "manifest")) from exc
    _readable(path)
    return path


def _readable(*paths: Path) -> None:
    """Shards are data for other users and containers too: the atomic temp files are created 0600."""
    for p in paths:
        os.chmod(p, 0o644)


def load_manifest(out_dir_or_file: str | Path) -> dict[str, Any]:
    """Read and minimally check a manifest; a missing or malformed one is a ShardFormatError naming it."""
    p = Path(out_dir_or_file)
    if p.is_dir():
        p = p / MANIFEST
    if not p.is_file():
        raise ShardFormatError(f"{p}: no manifest (not a shard folder, or its build did not finish)")
    try:
        m = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardFormatError(f"{p}: unreadable manifest: {e}") from e
    if not isinstance(m, dict) or m.get("format_version") != FORMAT_VERSION:
        raise ShardFormatError(f"{p}: format_version is not {FORMAT_VERSION}")
    for k in ("classes", "splits", "video", "flow"):
        if k not in m:
            raise ShardFormatError(f"{p}: manifest lacks {k!r}")
    return m


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def iter_tar_samples(tar_path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {extension: bytes}) per sample of a shard, in tar order (members grouped by key)."""
    key, members = None, {}
    with tarfile.open(tar_path, "r:") as tf:
        for m in tf:
            if not m.isreg():
                continue
            k, ext = _split_member_name(m.name)
            if k != key:
                if key is not None:
                    yield key, members
                key, members = k, {}
            f = tf.extractfile(m)
            members[ext] = f.read() if f is not None else b""
    if key is not None:
        yield key, members
