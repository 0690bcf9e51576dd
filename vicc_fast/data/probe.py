"""Find the sample behind a pipeline failure that does not name one.

DALI names the sample when a video cannot be opened, but a truncated video that opens and then ends early
fails later ("start frame out of bounds for sample #0"), with only its position in the batch. The loader
then scans the split here: first a fast pass that counts packets (one per frame in our VP9 WebM files),
then, if that finds nothing, a full decode. Only on the failure path; never during normal reading.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

from vicc_fast.config import Stream
from vicc_fast.data.manifest import BadSampleError, Split, read_index


def _members(split: Split, exts: list[str]) -> Iterator[tuple[Path, str, int, dict[str, bytes]]]:
    """(tar, key, index, {ext: bytes}) of every sample of ``split`` in manifest order."""
    i = 0
    for shard in split.shards:
        with open(shard.tar, "rb") as f:
            if shard.index is not None:
                for entry in read_index(shard.index):
                    key = next(iter(entry.values()))[2].split(".", 1)[0]
                    data = {}
                    for ext in exts:
                        if ext in entry:
                            off, size, _ = entry[ext]
                            f.seek(off)
                            data[ext] = f.read(size)
                    yield shard.tar, key, i, data
                    i += 1
                continue
        with tarfile.open(shard.tar) as tf:
            by_key: dict[str, dict[str, bytes]] = {}
            for m in tf:
                if m.isfile():
                    key, _, ext = Path(m.name).name.partition(".")
                    fo = tf.extractfile(m)
                    if ext in exts and fo is not None:
                        by_key.setdefault(key, {})[ext] = fo.read()
            for key in shard.keys:
                yield shard.tar, key, i, by_key.get(key, {})
                i += 1


def _count(data: bytes, decode: bool) -> int:
    import av

    with av.open(io.BytesIO(data), "r") as c:
        s = c.streams.video[0]
        if decode:
            return sum(1 for _ in c.decode(s))
        return sum(1 for p in c.demux(s) if p.size > 0)


def find_bad_samples(
    split: Split, streams: tuple[Stream, ...], skip_keys: set[str] | dict[str, str]
) -> list[BadSampleError]:
    """Samples whose videos cannot be opened or hold fewer frames than their ``.json`` says."""
    exts = [f"{s.value}.webm" for s in streams]
    assert split.frames is not None
    for decode in (False, True):
        bad = []
        for tar, key, i, data in _members(split, exts):
            if key in skip_keys:
                continue
            for ext in exts:
                if ext not in data:
                    bad.append(BadSampleError(tar, key, f"no {ext} member"))
                    break
                try:
                    n = _count(data[ext], decode)
                except Exception as exc:  # any container/codec failure is this sample's fault
                    bad.append(BadSampleError(tar, key, f"{ext} fails to decode ({exc})"))
                    break
                if n < int(split.frames[i]):
                    bad.append(
                        BadSampleError(
                            tar, key, f"{ext} holds {n} frames, its .json says {int(split.frames[i])}"
                        )
                    )
                    break
        if bad:
            return bad
    return []
