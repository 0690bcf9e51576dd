"""Check a shard folder against its manifest: ``python -m data_prep.verify DIR``.

Re-hashes every shard, checks its DALI index, decodes every sample's RGB and flow video (PyAV) and checks
frame counts (RGB == flow == json), frame sizes, labels and keys. Prints one line per problem naming the
shard and sample, and exits 1 when there is any (2 when DIR is not a shard folder at all).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep import codec, shards


def _check_sample(key: str, members: dict[str, bytes], pos: int, m: dict[str, Any], split: str) -> list[str]:
    """Problems of one sample (empty list when fine)."""
    missing = [e for e in shards.EXTENSIONS if e not in members]
    if missing:
        return [f"missing member(s) {', '.join(missing)}"]
    problems = []
    try:
        meta = json.loads(members[shards.JSON_EXT])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"unreadable .json: {e}"]
    try:
        label, index = shards.decode_label(members[shards.LABEL_EXT])
    except shards.ShardFormatError as e:
        return [str(e)]
    if index != pos:
        problems.append(f".lbl index {index} != position {pos} in the {split} split")
    if not 0 <= label < len(m["classes"]):
        problems.append(f"label {label} outside 0..{len(m['classes']) - 1}")
    if meta.get("label") != label or meta.get("index") != index or meta.get("key") != key:
        problems.append(f".json (key/label/index) disagrees with the sample ({key}, {label}, {index})")
    h, w = m["video"]["height"], m["video"]["width"]
    infos = {}
    for ext in (shards.RGB_EXT, shards.FLOW_EXT):
        try:
            infos[ext] = codec.probe(members[ext])
        except codec.CodecError as e:
            problems.append(f".{ext} does not decode: {e}")
    if len(infos) < 2:
        return problems
    rgb, flow = infos[shards.RGB_EXT], infos[shards.FLOW_EXT]
    if rgb.frames != flow.frames:
        problems.append(f"RGB has {rgb.frames} frames but flow has {flow.frames}")
    if (meta.get("frames"), meta.get("flow_frames")) != (rgb.frames, flow.frames):
        problems.append(
            f".json says {meta.get('frames')}/{meta.get('flow_frames')} frames, decoded {rgb.frames}/{flow.frames}"
        )
    if (rgb.height, rgb.width) != (h, w):
        problems.append(f"RGB frames are {rgb.height}x{rgb.width}, manifest says {h}x{w}")
    if (flow.height, flow.width) != (2 * h, w):
        problems.append(f"flow frames are {flow.height}x{flow.width}, expected {2 * h}x{w}")
    return problems


def verify(out_dir: str | Path, progress: bool = True, report: Callable[[str], None] = print) -> int:
    """Check the folder; report() each problem line; return the number of problems."""
    out = Path(out_dir)
    try:
        m = shards.load_manifest(out)
    except shards.ShardFormatError as e:
        report(f"{e}")
        return 1
    n_problems = 0

    def problem(where: str, what: str) -> None:
        nonlocal n_problems
        n_problems += 1
        report(f"{where}: {what}")

    total = sum(sp.get("num_samples", 0) for sp in m["splits"].values())
    bar = tqdm(total=total, desc="verify", unit="sample", disable=not progress, file=sys.stderr)
    try:
        for split, sp in m["splits"].items():
            pos = 0
            listed = sum(s["num_samples"] for s in sp["shards"])
            if listed != sp["num_samples"]:
                problem(f"manifest {split}", f"num_samples {sp['num_samples']} != sum over shards {listed}")
            for s in sp["shards"]:
                tar, idx = out / s["tar"], out / s["index"]
                if not tar.is_file():
                    problem(str(tar), "shard missing")
                    pos += s["num_samples"]
                    bar.update(s["num_samples"])
                    continue
                if shards.sha256_file(tar) != s["sha256"]:
                    problem(str(tar), "sha256 differs from the manifest (corrupted or replaced shard)")
                try:
                    if not idx.is_file():
                        problem(str(idx), "DALI index missing")
                    elif idx.read_text() != shards.dali_index_of_tar(tar):
                        problem(str(idx), "DALI index does not match the tar's members/offsets")
                    keys = []
                    for key, members in shards.iter_tar_samples(tar):
                        keys.append(key)
                        for what in _check_sample(key, members, pos, m, split):
                            problem(f"{tar.name} {key}", what)
                        pos += 1
                        bar.update(1)
                except (tarfile.TarError, OSError, EOFError, shards.ShardFormatError) as e:
                    problem(str(tar), f"unreadable tar: {e}")
                    continue
                if keys != s["keys"]:
                    problem(
                        str(tar), f"sample keys {keys[:3]}... differ from the manifest's {s['keys'][:3]}..."
                    )
    finally:
        bar.close()
    return n_problems


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.verify",
        description="Re-hash every shard against manifest.json, decode every sample and check frame counts. "
        "Prints one line per problem; exit status 1 when there is any.",
    )
    p.add_argument("dir", help="shard folder (holds manifest.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    try:
        shards.load_manifest(Path(a.dir))
    except shards.ShardFormatError as e:  # not a shard folder at all: nothing to check
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = verify(a.dir, progress=not a.no_progress)
    if n:
        print(f"error: {n} problem(s) in {a.dir} (one line each above)", file=sys.stderr)
        return 1
    print(f"{a.dir}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
