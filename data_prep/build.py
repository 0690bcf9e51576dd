"""Videos -> resized RGB + optical flow -> VP9 -> WebDataset shards + manifest (docs/shard_format.md).

    python -m data_prep.build --source ucf101 --root ~/data/UCF101 --out data/ucf101_s1

Stages:
1. per video (process pool, progress bar): decode (PyAV), resize to --height x --width, flow
   (data_prep.flow; with --flow-at source computed between the source frames, optionally capped at
   --flow-short-side, then resized to the stored size with its vectors scaled, as the released pipelines do),
   quantise, encode both streams (data_prep.codec), and cache the result under
   ``<out>/.work/``. A rerun skips every video whose cached outputs still match their recorded sha256 and
   settings (resumable: an interrupted build loses at most the videos in flight).
2. pack: samples in split-list order into ``{split}-{NNNNNN}.tar`` + DALI ``.idx``, then manifest.json.

Bad input stops the build with one error naming the file; with --skip-bad the video is rejected instead,
recorded with its reason in manifest.json["rejected"], and the count is printed.

Nothing is lost silently: a video whose decoded frames stop early in time (truncated, cut mid-packet) or
whose decoder reports an error mid-stream is either rejected (bad input, as above) or kept with a warning
naming both numbers, printed and recorded in manifest.json["warnings"]. Completeness is judged by the decoded
time span against the declared duration, not by counting frames: a variable-frame-rate file, or an old AVI
whose repeated frames are empty chunks (68 frames decode, their timestamps run the whole 444 declared), is
complete. It is rejected when its frames cover less than MIN_DECODED_SHARE of the declared duration, and
under --strict on any shortfall or error. ``--fps R`` samples every video to R frames/s by timestamps
(nearest frame per tick, as Kinetics pipelines and ffmpeg's fps filter do); recorded in the manifest.

Kinetics scale (``--source kinetics``; docs/cluster.md): ``--part I/N`` (or SLURM_ARRAY_TASK_ID /
SLURM_ARRAY_TASK_COUNT, or torchrun's RANK / WORLD_SIZE) processes the I-th of N deterministic shares of the
videos into the shared cache and packs nothing; ``pack`` (or ``--pack``) then writes shards and manifest,
byte-identical to a single build, only when every video is done, else names the missing videos and parts.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from tqdm import tqdm

from data_prep import codec, shards
from data_prep.sources import DataSourceError, Record, Source, class_names, load_records
from vicc_fast.atomic import write_bytes, write_error, write_text
from vicc_fast.config import FlowMethod, SyntheticConfig
from vicc_fast.owner import exit_with_owner

WORK_DIR = ".work"
CACHE_VERSION = 2
"""Bump when the per-video processing changes in a way the settings below do not capture (2: meta.json
records the decode check, so entries cached before it existed are decoded again)."""
MIN_FRAMES = 2
"""Flow needs a pair of frames."""
MIN_DECODED_SHARE = 0.9
"""Below this share of the frames its container declares, a video is rejected (not kept shortened): a
video missing a tenth of its frames has lost the end of the action, not a damaged trailing packet.
Between this share and 100 % it is kept with a warning (both numbers in the build output and the manifest)."""
DURATION_SLACK_FRAMES = 1
"""Frame durations the decoded time span may fall short of the declared duration (compared when the
container stores no frame count, e.g. Matroska/WebM) before the video counts as short: the last frame's
own duration is not known exactly."""
DEFAULT_SHARD_SIZE = 100


class FlowAt(str, Enum):
    """Where optical flow is computed (``--flow-at``)."""

    stored = "stored"
    """between the frames resized to --height x --width (cheap; the demo's default)"""
    source = "source"
    """between the source frames (shorter side capped at --flow-short-side), then the flow field is resized
    to --height x --width with x scaled by width / source width and y by height / source height: the
    released ViCC / CoCLR recipe (TV-L1 at UCF101's 320x240)"""


class BuildError(RuntimeError):
    """A build that cannot finish; the message names the video or file and the reason."""


class VideoError(ValueError):
    """A source video that cannot be used (unreadable, empty, too short)."""


@dataclass(frozen=True)
class VideoSettings:
    """Everything that determines a video's cached outputs (a change invalidates the cache)."""

    height: int
    width: int
    flow_method: str
    flow_bound: float = 20.0
    rgb_crf: int = codec.RGB_CRF
    flow_crf: int = codec.FLOW_CRF
    gop: int = codec.GOP
    cpu_used: int = codec.CPU_USED
    cache_version: int = CACHE_VERSION
    flow_at: str = FlowAt.stored.value
    flow_short_side: int | None = None
    """with flow_at source: cap on the shorter side of the frames flow is computed at (None: the source size)"""
    fps: float | None = None
    """--fps: every video sampled to this constant rate by timestamps (None: the frames as decoded)"""

    def key(self) -> dict[str, Any]:
        """The cache key: every field, except that flow at the stored size (the only recipe before flow_at
        existed) leaves flow_at and flow_short_side out, and no --fps leaves fps out, so caches built before
        them stay valid."""
        d = self.recorded()
        if self.flow_at == FlowAt.stored.value:
            del d["flow_at"], d["flow_short_side"]
        return d

    def recorded(self) -> dict[str, Any]:
        """The fields as the manifest records them: fps only when set (so a build without --fps writes the
        manifest it wrote before the option existed)."""
        d = dataclasses.asdict(self)
        if self.fps is None:
            del d["fps"]
        return d


@dataclass
class BuildReport:
    """What a build did: the manifest, and how many videos were processed, reused from cache, rejected."""

    manifest: Path | None
    """None after a part (--part): the pack step writes it"""
    processed: int = 0
    reused: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


# ------------------------------------------------------------------------------------ per-video work
@dataclass(frozen=True)
class DecodeCheck:
    """What decoding a source found, compared with what its container declares.

    declared: the frame count the container stores (AVI, MP4), else None. declared_seconds: its declared
    duration. The decoded time span (first to last frame, plus one frame) is compared with that duration
    whenever both are known (variable frame rate, AVIs whose repeated frames are empty chunks: fewer frames
    than declared, but all of the time); the frame counts only when the container declares no duration.
    decoded: frames decoded; decoded_seconds: their time span. errors: packets the decoder refused (skipped; decoding goes on after
    them) or a demuxer error that ended the file early; first_error: the first of them. corrupt: frames the
    decoder flagged as corrupt (kept: concealed by the decoder, but reported).
    """

    decoded: int
    declared: int | None = None
    declared_seconds: float | None = None
    decoded_seconds: float | None = None
    frame_seconds: float = 0.04
    errors: int = 0
    first_error: str | None = None
    corrupt: int = 0

    @property
    def by_time(self) -> bool:
        """Whether completeness is judged by time span (both durations known and nothing failed to decode),
        else by frame count: after a decode error the missing frames are a loss (damaged packets), not a
        variable frame rate."""
        if self.declared and self.errors:
            return False
        return bool(self.declared_seconds) and self.decoded_seconds is not None

    @property
    def share(self) -> float | None:
        """Decoded share of what the container declares (duration, else frames), None when it declares neither."""
        if self.by_time:
            return min(self.decoded_seconds / self.declared_seconds, 1.0)
        if self.declared:
            return self.decoded / self.declared
        return None

    @property
    def short(self) -> bool:
        if self.by_time:
            slack = DURATION_SLACK_FRAMES * self.frame_seconds + 1e-3
            return self.decoded_seconds < self.declared_seconds - slack
        if self.declared:
            return self.decoded < self.declared
        return False

    def message(self) -> str | None:
        """One line saying what is wrong (both numbers), or None when nothing is."""
        parts = []
        if self.short and self.declared:
            span = (
                f", covering {self.decoded_seconds:.2f} s of {self.declared_seconds:.2f} s"
                if self.by_time
                else ""
            )
            parts.append(
                f"decoded {self.decoded} of the {self.declared} frames its container declares "
                f"({100 * (self.share or 0):.0f}%{span})"
            )
        elif self.short:
            parts.append(
                f"decoded {self.decoded} frames covering {self.decoded_seconds:.2f} s of the "
                f"{self.declared_seconds:.2f} s its container declares ({100 * (self.share or 0):.0f}%)"
            )
        if self.errors:
            parts.append(f"{self.errors} decode error(s), the first {self.first_error}")
        if self.corrupt:
            parts.append(f"{self.corrupt} frame(s) flagged corrupt by the decoder")
        return "; ".join(parts) or None

    def problem(self, strict: bool) -> str | None:
        """Why the video must be rejected, or None when it is kept (perhaps with a warning)."""
        msg = self.message()
        if msg is None:
            return None
        if strict:
            return f"{msg} (rejected under --strict)"
        if self.short and (self.share or 0) < MIN_DECODED_SHARE:
            return f"{msg}: below the {100 * MIN_DECODED_SHARE:.0f}% floor, truncated or damaged"
        return None


def _declared(container, stream) -> tuple[int | None, float | None]:
    """(stored frame count or None, declared duration in seconds or None).

    With a frame count and a rate, the duration is at least count / rate: an AVI cut before its index
    reports only the duration of the chunks the demuxer found, while the header's count (empty chunks of
    repeated frames included) still holds the length the file was written with."""
    frames = int(stream.frames) if stream.frames and stream.frames > 0 else None
    seconds = 0.0
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / 1_000_000  # AV_TIME_BASE
    if frames and stream.average_rate:
        seconds = max(seconds, frames / float(stream.average_rate))
    return frames, (seconds if seconds > 0 else None)


class _Resampler:
    """Frames at a constant rate from timestamped frames: tick k (time t0 + k / fps) shows the decoded frame
    whose timestamp is nearest (the earlier on a tie), as ffmpeg's fps filter does; ticks run to the end of
    the last frame (its timestamp plus one source frame), so a 25 fps file sampled at 25 comes out unchanged."""

    def __init__(self, fps: float) -> None:
        self.step = 1.0 / fps
        self.k = 0
        self.t0: float | None = None
        self.prev: np.ndarray | None = None
        self.prev_t = 0.0

    def _tick(self) -> float:
        return self.t0 + self.k * self.step

    def push(self, t: float, frame: np.ndarray) -> Iterator[np.ndarray]:
        if self.prev is None:
            self.t0, self.prev, self.prev_t = t, frame, t
            return
        if t <= self.prev_t:  # a repeated timestamp: the first frame shown at that time stays
            return
        mid = (self.prev_t + t) / 2
        while self._tick() <= mid + 1e-9:
            yield self.prev
            self.k += 1
        self.prev, self.prev_t = frame, t

    def finish(self, end: float) -> Iterator[np.ndarray]:
        while self.prev is not None and self._tick() < end - 1e-9:
            yield self.prev
            self.k += 1


def read_video(
    path: str | Path, height: int | None = None, width: int | None = None, fps: float | None = None
) -> tuple[np.ndarray, float, DecodeCheck]:
    """All frames of a video file -> ([T, H, W, 3] uint8 RGB, fps, decode check). Raises VideoError saying why
    not.

    With height and width, each frame is resized as it is decoded (a long source video is never held at
    its full resolution). Grayscale and high-bit-depth sources are converted to 8-bit RGB; a rotation in
    the container's display matrix is applied (the frames come out upright, as a player shows them).

    A packet the decoder refuses (a damaged tail, common in UCF101/HMDB51 .avi files, or a bad sector) is
    skipped and decoding goes on; the returned DecodeCheck says what happened, and the caller decides
    (DecodeCheck.problem). With fps, the frames are sampled to that constant rate by their timestamps
    (see _Resampler) and fps is returned; the DecodeCheck describes the decoded source frames.
    """
    info: dict[str, Any] = {}
    frames = list(iter_video(path, height, width, info, fps))
    return np.stack(frames), info["fps"], info["check"]


def iter_video(
    path: str | Path,
    height: int | None,
    width: int | None,
    info: dict[str, Any],
    fps: float | None = None,
) -> Iterator[np.ndarray]:
    """The frames of read_video one at a time (a long video is never held whole). ``info["fps"]`` is set
    before the first frame (the output rate: fps when given); ``info["check"]`` (DecodeCheck) once all are
    yielded. Raises VideoError as read_video does, a too-short video after its last frame."""
    p = Path(path)
    if not p.is_file():
        raise VideoError("file not found")
    if p.stat().st_size == 0:
        raise VideoError("zero-length file")
    n = 0
    errors: list[str] = []
    corrupt = 0
    first_time = last_time = None
    try:
        with av.open(str(p), "r") as c:
            if not c.streams.video:
                raise VideoError("no video stream (audio-only or data file)")
            s = c.streams.video[0]
            src_fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
            info["fps"] = fps or src_fps
            resampler = _Resampler(fps) if fps else None
            declared, declared_seconds = _declared(c, s)
            packets = c.demux(s)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as e:  # the container itself is damaged: nothing after it is read
                    errors.append(f"after {n} frames: {e}")
                    break
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as e:
                    # one damaged packet (a bad sector, a cut): skip it and go on, as players do; reported
                    errors.append(f"after {n} frames: {e}")
                    continue
                for f in decoded:
                    corrupt += bool(f.is_corrupt)
                    if f.time is not None:
                        first_time = f.time if first_time is None else min(first_time, f.time)
                        last_time = f.time if last_time is None else max(last_time, f.time)
                    rgb = f.to_ndarray(format="rgb24")
                    if k := round((f.rotation or 0) / 90) % 4:
                        # phone videos store the picture sideways plus a display matrix; players turn it upright
                        rgb = np.ascontiguousarray(np.rot90(rgb, k))  # counter-clockwise, as frame.rotation
                    n += 1
                    out = rgb if height is None else _resize(rgb, height, width or rgb.shape[1])
                    if resampler is None:
                        yield out
                    else:  # a frame without a timestamp follows the one before it at the declared rate
                        t = f.time if f.time is not None else resampler.prev_t + 1 / src_fps
                        yield from resampler.push(t, out)
            if resampler is not None:
                yield from resampler.finish(resampler.prev_t + 1 / src_fps)
    except av.error.FFmpegError as e:
        raise VideoError(f"unreadable video: {e}") from e
    if not n and errors:
        raise VideoError(
            f"unreadable video: no frame decodes ({len(errors)} decode error(s), first {errors[0]})"
        )
    span = (
        (last_time - first_time + 1 / src_fps) if first_time is not None and last_time is not None else None
    )
    check = DecodeCheck(
        decoded=n,
        declared=declared,
        declared_seconds=declared_seconds,
        decoded_seconds=span,
        frame_seconds=1 / src_fps,
        errors=len(errors),
        first_error=errors[0] if errors else None,
        corrupt=corrupt,
    )
    if n < MIN_FRAMES:
        detail = f" ({check.message()})" if check.message() else ""
        raise VideoError(f"too short: {n} decodable frame(s), need at least {MIN_FRAMES}{detail}")
    info["check"] = check


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    interp = cv2.INTER_AREA if height <= h and width <= w else cv2.INTER_LINEAR
    return cv2.resize(frame, (width, height), interpolation=interp)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """[T, h, w, 3] -> [T, height, width, 3] uint8 (area averaging when shrinking, so no aliasing)."""
    return np.stack([_resize(f, height, width) for f in frames])


def _cache_dir(work: Path, video_id: str) -> Path:
    digest = hashlib.sha1(video_id.encode()).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(video_id).name)[:60]
    return work / f"{safe}-{digest}"


def _source_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _check_of(meta: dict[str, Any]) -> DecodeCheck:
    return DecodeCheck(**meta["decode"])


def cached_meta(rec: Record, work: Path, settings: VideoSettings) -> dict[str, Any] | None:
    """The cached per-video result when it is complete and still valid, else None."""
    d = _cache_dir(work, rec.video_id)
    try:
        meta = json.loads((d / "meta.json").read_text())
        if (
            meta.get("settings") != settings.key()
            or meta.get("video_id") != rec.video_id
            or meta.get("source_stamp") != _source_stamp(rec.path)
        ):
            return None
        for name in ("rgb", "flow"):
            if shards.sha256_file(d / f"{name}.webm") != meta[f"{name}_sha256"]:
                return None
        _check_of(meta)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


@dataclass(frozen=True)
class FlowDevice:
    """Where and how ``tvl1-torch`` runs (not part of the cache key: devices agree to float rounding)."""

    device: str = field(default_factory=lambda: _default_device())  # cuda when visible, else cpu
    compile: bool = True
    devices: tuple[str, ...] = ()
    """with device cuda: the GPUs the pool's workers take in turn (--devices; empty: every visible GPU)"""

    def default(self) -> str:
        """The device of a process given no GPU of its own (the serial build): the first of --devices with cuda."""
        return self.devices[0] if self.devices and self.device == "cuda" else self.device


def parse_devices(spec: str | None, visible: int) -> tuple[str, ...]:
    """``--devices``: "0,2" or "cuda:0,cuda:2" -> ("cuda:0", "cuda:2"); None -> every visible GPU. A GPU
    that is not visible, or one named twice, is one BuildError naming it."""
    if spec is None:
        if visible < 1:
            raise BuildError("--device cuda: no GPU is visible (CUDA_VISIBLE_DEVICES, driver)")
        return tuple(f"cuda:{i}" for i in range(visible))
    out: list[str] = []
    for item in (x.strip() for x in spec.split(",")):
        index = item.removeprefix("cuda:")
        if not index.isdigit():
            raise BuildError(f"--devices: expected GPU indices like 0,1 or cuda:0,cuda:1, got {item!r}")
        if int(index) >= visible:
            raise BuildError(f"--devices: cuda:{index} is not visible ({visible} GPU(s) visible)")
        if f"cuda:{int(index)}" in out:
            raise BuildError(f"--devices: cuda:{int(index)} is named twice")
        out.append(f"cuda:{int(index)}")
    if not out:
        raise BuildError("--devices: no GPU named")
    return tuple(out)


def worker_device(index: int, devices: Sequence[str]) -> str:
    """The GPU of pool worker ``index`` (in start order): the devices in turn, so --workers k x GPUs puts k
    workers on each GPU (one decodes/encodes on the CPU while another's flow runs on the GPU)."""
    return devices[index % len(devices)]


class _FlowStream:
    """The flow stream of one video: consecutive frames (at the flow size) in, their optical flow quantised at
    the stored size out to a FlowWriter, the last flow frame repeating the one before (flow.compute_flow).

    OpenCV's methods take the frames pair by pair. tvl1-torch computes many pairs per call (what makes it
    fast): frames wait in ``pending`` until a chunk is full; the chunk's last frame starts the next one, so every
    consecutive pair is computed exactly once and memory stays bounded by the chunk. Pairs are independent, so
    chunking does not change the flow."""

    def __init__(self, settings: VideoSettings, device: str, compile: bool) -> None:
        from data_prep import flow  # imported here: worker processes import it on first use

        self._flow = flow
        self.method = flow.parse_method(settings.flow_method)
        self.batched = self.method is FlowMethod.tvl1_torch
        self.estimate = None if self.batched else flow.estimator(self.method)
        self.chunk = 0
        if self.batched:
            from data_prep import flow_torch

            self.chunk = flow_torch.default_batch(device)
        self.device, self.compile = device, compile
        self.bound = settings.flow_bound
        self.stored = (settings.height, settings.width)
        self.at_source = FlowAt(settings.flow_at) is FlowAt.source
        self.writer: codec.FlowWriter | None = None
        self.pending: list[np.ndarray] = []
        self.prev_grey: np.ndarray | None = None
        self.last_q: np.ndarray | None = None
        self.frames = 0
        """flow frames written"""

    def _to_stored(self, raw: np.ndarray) -> np.ndarray:
        """[N, fh, fw, 2] flow at the flow size -> [N, H, W, 2] at the stored size, vectors scaled."""
        return self._flow.resize_flow(raw, *self.stored) if self.at_source else raw

    def _write(self, q: np.ndarray) -> None:
        self.writer.add(q)
        self.frames += 1
        self.last_q = q

    def add(self, frame: np.ndarray) -> None:
        if self.batched:
            self.pending.append(frame)
            if len(self.pending) > self.chunk:
                self.flush()
            return
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if self.prev_grey is not None:
            self._write(
                self._flow.quantize_flow(
                    self._to_stored(self.estimate(self.prev_grey, grey)[None])[0], self.bound
                )
            )
        self.prev_grey = grey

    def flush(self) -> None:
        """tvl1-torch: the flow of the pending frames (a full chunk, or the last frames of the video)."""
        if not self.batched or len(self.pending) < 2:
            return
        raw = self._flow.compute_flow(
            np.stack(self.pending), self.method, device=self.device, compile=self.compile
        )
        for q in self._flow.quantize_flow(self._to_stored(raw[:-1]), self.bound):
            self._write(q)
        self.pending = self.pending[-1:]

    def repeat_last(self) -> None:
        """The last flow frame: the one before, repeated."""
        self.writer.add(self.last_q)
        self.frames += 1


class _VideoEncoder:
    """One video's RGB and flow streams, fed frame by frame as decoded: memory stays flat in the video's length (a
    20x longer video holds no more frames), and the outputs are byte-identical to encode_rgb / encode_flow of the
    whole arrays (the same encoder calls in the same order).

    With flow_at source the decoder hands over full-size frames: each is resized for the RGB stream and,
    separately, to the flow size, fixed by the first frame (a rare mid-stream size change is resized to it, so
    every pair matches); the flow is resized to the stored size."""

    def __init__(self, settings: VideoSettings, device: str, compile: bool) -> None:
        self.settings = settings
        self.stored = (settings.height, settings.width)
        self.at_source = FlowAt(settings.flow_at) is FlowAt.source
        self.flow_hw: tuple[int, int] | None = None if self.at_source else self.stored
        self.flow = _FlowStream(settings, device, compile)
        self.rgb: codec.RGBWriter | None = None
        self.frames = 0

    @property
    def decode_size(self) -> tuple[int | None, int | None]:
        """What iter_video resizes each frame to: the stored size, or (None, None) for the source frames."""
        return (None, None) if self.at_source else self.stored

    def add(self, decoded: np.ndarray, fps: float) -> None:
        from data_prep import flow

        if self.rgb is None:
            self.rgb = codec.RGBWriter(fps=fps, crf=self.settings.rgb_crf)
            self.flow.writer = codec.FlowWriter(fps=fps, crf=self.settings.flow_crf)
        if self.flow_hw is None:
            self.flow_hw = flow.flow_size(*decoded.shape[:2], self.settings.flow_short_side)
            if min(self.flow_hw) < 8:
                raise flow.FlowError(
                    f"source frames of {self.flow_hw[0]}x{self.flow_hw[1]} are too small for optical flow"
                )
        frame = _resize(decoded, *self.stored) if self.at_source else decoded
        flow_frame = _resize(decoded, *self.flow_hw) if self.at_source else decoded
        self.rgb.add(frame)
        self.frames += 1
        self.flow.add(flow_frame)

    def finish(self) -> tuple[bytes, bytes]:
        """(RGB, flow) WebM bytes."""
        self.flow.repeat_last()
        return self.rgb.finish(), self.flow.writer.finish()


def process_video(
    rec: Record,
    work: Path,
    settings: VideoSettings,
    strict: bool = False,
    flow_device: FlowDevice | None = None,
    *,
    device: str | None = None,
) -> dict[str, Any]:
    """Decode, resize, flow, encode one video into its cache folder; returns its meta (also cached).

    device: where tvl1-torch runs (a pool worker's GPU: VideoJob.device); None: ``flow_device.default()``.
    Raises VideoError (bad input, including a decode check that fails: DecodeCheck.problem) or flow/codec
    errors; the caller turns those into rejects or a BuildError.
    """
    from data_prep import flow

    # One pass, frame by frame: decode, resize, encode RGB, flow of each pair, encode flow (_VideoEncoder).
    if min(settings.height, settings.width) < 8:
        raise flow.FlowError(f"frames of {settings.height}x{settings.width} are too small for optical flow")
    info: dict[str, Any] = {}
    fd = flow_device or FlowDevice()
    encoder = _VideoEncoder(settings, device or fd.default(), fd.compile)
    for decoded in iter_video(rec.path, *encoder.decode_size, info, settings.fps):
        encoder.add(decoded, info["fps"])
    encoder.flow.flush()
    check: DecodeCheck = info["check"]
    if (problem := check.problem(strict)) is not None:
        raise VideoError(problem)
    rgb, fl = encoder.finish()
    meta = {
        "video_id": rec.video_id,
        "source": str(rec.path),
        "source_stamp": _source_stamp(rec.path),
        "settings": settings.key(),
        "fps": info["fps"],
        "frames": encoder.frames,
        "flow_frames": encoder.flow.frames,
        "height": settings.height,
        "width": settings.width,
        "rgb_sha256": hashlib.sha256(rgb).hexdigest(),
        "flow_sha256": hashlib.sha256(fl).hexdigest(),
        "rgb_bytes": len(rgb),
        "flow_bytes": len(fl),
        "decode": dataclasses.asdict(check),
    }
    _write_cache(_cache_dir(work, rec.video_id), rgb, fl, meta)
    return meta


def _write_cache(d: Path, rgb: bytes, fl: bytes, meta: dict[str, Any]) -> None:
    """A video's cache entry: both streams, then meta.json (last: it marks the entry complete)."""
    target = d / "rgb.webm"
    try:
        write_bytes(target, rgb)
        write_bytes(target := d / "flow.webm", fl)
        write_text(target := d / "meta.json", json.dumps(meta, indent=1))
    except OSError as exc:
        raise shards.ShardWriteError(exc.errno, write_error(target, exc, "build cache file")) from exc


_EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    VideoError,
    codec.CodecError,
    av.error.FFmpegError,
    cv2.error,
)


@dataclass(frozen=True)
class VideoJob:
    """What processing a video needs besides the video: the serial build calls it, each pool worker gets it once
    through the pool's initializer (_worker_init), with the GPU that worker was given."""

    work: Path
    settings: VideoSettings
    strict: bool
    flow_device: FlowDevice
    device: str | None = None
    """this pool worker's GPU (cuda:<k>), or None: flow_device.default()"""

    def __call__(self, rec: Record) -> tuple[str, dict[str, Any] | str]:
        """("ok", meta) or ("bad", reason). Unexpected exceptions (bugs) propagate."""
        from data_prep.flow import FlowError

        try:
            return "ok", process_video(
                rec, self.work, self.settings, self.strict, self.flow_device, device=self.device
            )
        except (*_EXPECTED_ERRORS, FlowError) as e:
            return "bad", str(e) or type(e).__name__


_worker_job: VideoJob | None = None
"""In a pool worker: the job its initializer was given (with the worker's GPU); read by _pool_task only."""


def _worker_init(owner: int, job: VideoJob, counter: Any = None) -> None:
    """Pool initializer. counter (tvl1-torch only): a shared count that gives each worker its index, so with
    cuda the workers take the GPUs in turn."""
    global _worker_job
    from data_prep import flow

    exit_with_owner(owner)  # a SIGKILLed build would leave its pool waiting on the task queue for ever
    flow.worker_init()
    _worker_job = job
    if counter is None:
        return
    import torch

    if job.flow_device.device == "cuda":
        # workers take the visible GPUs in turn, so one build with --workers k x GPUs uses them all
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        visible = job.flow_device.devices or tuple(
            f"cuda:{i}" for i in range(max(torch.cuda.device_count(), 1))
        )
        _worker_job = dataclasses.replace(job, device=worker_device(index, visible))
    else:
        torch.set_num_threads(1)  # the pool already uses the cores, as for OpenCV


def _pool_task(rec: Record) -> tuple[str, dict[str, Any] | str]:
    return _worker_job(rec)


def _run_videos(
    todo: Sequence[Record], job: VideoJob, workers: int, gpu_counter: bool, collect: Callable[..., None]
) -> None:
    """Process every video of ``todo``, in a spawn pool of ``workers`` processes when there are several, handing
    each result to ``collect(rec, status, value)`` as it arrives; an exception from collect cancels the rest.
    gpu_counter (tvl1-torch): the workers count themselves in, to take the GPUs in turn."""
    if workers == 1 or len(todo) <= 1:
        for rec in todo:
            collect(rec, *job(rec))
        return
    ctx = mp.get_context("spawn")  # no fork of a process that may hold threads (OpenCV, DALI)
    init_args = (os.getpid(), job, ctx.Value("i", 0) if gpu_counter else None)
    with cf.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_worker_init, initargs=init_args
    ) as pool:
        futs = {pool.submit(_pool_task, rec): rec for rec in todo}
        try:
            for fut in cf.as_completed(futs):
                collect(futs[fut], *fut.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# ------------------------------------------------------------------------------------ parts and pack
PARTS_DIR = "parts"
"""Under the cache (<out>/.work/parts/): one status file per part of a build in parts."""


def parse_part(spec: str) -> tuple[int, int]:
    """``"I/N"`` (0 <= I < N) -> (I, N); a bad value is one BuildError naming it."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise BuildError(f"--part must be I/N with 0 <= I < N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise BuildError(f"--part must be I/N with 0 <= I < N (e.g. 0/4), got {spec!r}")
    return i, n


def part_from_env(env: dict[str, str]) -> tuple[int, int] | None:
    """The part a scheduler gave this process: a Slurm array task (SLURM_ARRAY_TASK_ID counted from
    SLURM_ARRAY_TASK_MIN, of SLURM_ARRAY_TASK_COUNT) or a torchrun rank (RANK of WORLD_SIZE > 1); else None."""
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return parse_part(f"{int(env['SLURM_ARRAY_TASK_ID']) - first}/{env['SLURM_ARRAY_TASK_COUNT']}")
    if "RANK" in env and int(env.get("WORLD_SIZE", "1")) > 1:
        return parse_part(f"{env['RANK']}/{env['WORLD_SIZE']}")
    return None


def part_share(records: Sequence[Record], part: tuple[int, int]) -> list[Record]:
    """Part I of N: every N-th video of the build's list from the I-th (balanced across classes and splits;
    the same list gives the same shares on every node)."""
    i, n = part
    return list(records[i::n])


def _host() -> str:
    """Where a part runs: the Slurm node name when under Slurm (several nodes may share a host), else the host."""
    return os.environ.get("SLURMD_NODENAME") or os.uname().nodename


def _part_file(work: Path, part: tuple[int, int]) -> Path:
    return work / PARTS_DIR / f"part-{part[0]:05d}-of-{part[1]:05d}.json"


def _write_part(work: Path, part: tuple[int, int], status: dict[str, Any]) -> None:
    path = _part_file(work, part)
    try:
        write_text(path, json.dumps({"part": part[0], "parts": part[1], **status}, indent=1))
    except OSError as exc:
        raise shards.ShardWriteError(exc.errno, write_error(path, exc, "part status file")) from exc


def _read_parts(work: Path) -> dict[int, dict[str, Any]]:
    """Status of every part that has started, by index; parts of one build agree on N."""
    found: dict[int, dict[str, Any]] = {}
    counts = set()
    for p in sorted((work / PARTS_DIR).glob("part-*-of-*.json")):
        try:
            st = json.loads(p.read_text())
            counts.add(int(st["parts"]))
            found[int(st["part"])] = st
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BuildError(f"{p}: unreadable part status ({e}); delete it and rerun that part") from e
    if len(counts) > 1:
        raise BuildError(
            f"{work / PARTS_DIR}: part files of builds in {sorted(counts)} parts; delete the folder and rerun "
            "the parts of one build"
        )
    return found


_REJECTED = "rejected.json"
"""In a video's cache folder: why a part rejected it (so that reruns and the pack need not decode it again)."""


def _write_rejected(rec: Record, work: Path, settings: VideoSettings, strict: bool, reason: str) -> None:
    d = _cache_dir(work, rec.video_id)
    body = {
        "video_id": rec.video_id,
        "source_stamp": _source_stamp(rec.path),
        "settings": settings.key(),
        "strict": strict,
        "reason": reason,
    }
    try:
        write_text(d / _REJECTED, json.dumps(body, indent=1))
    except OSError as exc:
        raise shards.ShardWriteError(exc.errno, write_error(d / _REJECTED, exc, "build cache file")) from exc


def cached_rejection(rec: Record, work: Path, settings: VideoSettings, strict: bool) -> str | None:
    """The reason a part recorded for rejecting this video, when it still applies (same file and settings)."""
    try:
        body = json.loads((_cache_dir(work, rec.video_id) / _REJECTED).read_text())
        if (
            body["video_id"] == rec.video_id
            and body["settings"] == settings.key()
            and body["strict"] == strict
            and body["source_stamp"] == _source_stamp(rec.path)
        ):
            return str(body["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def reason_counts(rejected: Sequence[dict[str, str]]) -> dict[str, int]:
    """Rejections by kind (the reason up to its first ':' or '('), most frequent first: the summary line."""
    counts: dict[str, int] = {}
    for r in rejected:
        kind = r["reason"].split(":")[0].split(" (")[0].strip()
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _rejected_line(rejected: Sequence[dict[str, str]], where: str) -> str:
    kinds = ", ".join(f"{n} {k}" for k, n in reason_counts(rejected).items())
    return f"rejected {len(rejected)} video(s) ({kinds}); reasons in {where}"


# ----------------------------------------------------------------------------------------- the build
def _samples(split: str, accepted: list[tuple[Record, dict]], work: Path) -> Iterator[shards.Sample]:
    for index, (rec, meta) in enumerate(accepted):
        d = _cache_dir(work, rec.video_id)
        key = shards.sample_key(split, index)
        info = {
            "key": key,
            "video_id": rec.video_id,
            "label": rec.label,
            "class_name": rec.class_name,
            "split": split,
            "index": index,
            "fps": meta["fps"],
            "frames": meta["frames"],
            "flow_frames": meta["flow_frames"],
            "height": meta["height"],
            "width": meta["width"],
            # relative to the data set's videos folder (manifest settings name the root): an absolute path
            # would make the shard bytes, and their hashes, depend on where the source folder lies
            "source": f"{rec.video_id}{rec.path.suffix}",
        }
        rgb, fl = (d / "rgb.webm").read_bytes(), (d / "flow.webm").read_bytes()
        if (
            hashlib.sha256(rgb).hexdigest() != meta["rgb_sha256"]
            or hashlib.sha256(fl).hexdigest() != meta["flow_sha256"]
        ):
            raise BuildError(f"{d}: cached outputs changed during the build; rerun to recompute them")
        yield shards.Sample(key=key, rgb=rgb, flow=fl, label=rec.label, index=index, meta=info)


def _remove_stale(out: Path, keep: set[str]) -> None:
    for split in shards.SPLITS:
        for p in list(out.glob(f"{split}-*.tar")) + list(out.glob(f"{split}-*.idx")):
            if p.name not in keep:
                p.unlink()


def _subset(records: Sequence[Record], limit: int | None) -> list[Record]:
    """At most `limit` records per split, evenly spread over each split's list (so all classes show)."""
    if not limit:
        return list(records)
    out = []
    for split in shards.SPLITS:
        rs = [r for r in records if r.split == split]
        if len(rs) > limit:
            rs = [rs[i] for i in np.linspace(0, len(rs) - 1, limit).round().astype(int)]
        out.extend(rs)
    return out


def _check_options(
    *,
    height: int,
    width: int,
    shard_size: int,
    workers: int,
    fps: float | None,
    part: tuple[int, int] | None,
    pack_only: bool,
    flow_at: FlowAt | str,
    flow_short_side: int | None,
) -> FlowAt:
    """The options' own checks, before anything is read: one BuildError naming the option. Returns flow_at."""
    if height < 2 or width < 2:
        raise BuildError(f"--height/--width must be >= 2, got {height} x {width}")
    if shard_size < 1:
        raise BuildError(f"--shard-size must be >= 1, got {shard_size}")
    if workers < 1:
        raise BuildError(f"--workers must be >= 1, got {workers}")
    if fps is not None and not fps > 0:
        raise BuildError(f"--fps must be > 0, got {fps}")
    if part is not None and pack_only:
        raise BuildError("--pack packs the whole build: give it without --part")
    if part is not None:
        parse_part(f"{part[0]}/{part[1]}")
    try:
        at = FlowAt(flow_at)
    except ValueError:
        raise BuildError(f"--flow-at must be one of {[a.value for a in FlowAt]}, got {flow_at!r}") from None
    if flow_short_side is not None and at is not FlowAt.source:
        raise BuildError(
            "--flow-short-side applies to --flow-at source only (stored flow is at --height x --width)"
        )
    if flow_short_side is not None and flow_short_side < 16:
        raise BuildError(
            f"--flow-short-side must be >= 16 px (TV-L1's smallest pyramid level), got {flow_short_side}"
        )
    return at


@dataclass(frozen=True)
class _Plan:
    """One build after its options are checked: what every stage reads."""

    records: list[Record]
    """the build's videos (after --limit), in split-list order"""
    share: list[Record]
    """the videos this process handles: its part's share (--part), else all"""
    classes: list[str]
    out: Path
    settings: VideoSettings
    shard_size: int
    skip_bad: bool
    strict: bool
    limit: int | None
    extra_settings: dict[str, Any] | None
    part: tuple[int, int] | None
    log: Callable[[str], Any]
    t0: float
    """when the build started (perf_counter)"""

    @property
    def work(self) -> Path:
        return self.out / WORK_DIR

    @property
    def tag(self) -> str:
        """The prefix of a part's log lines."""
        return f"part {self.part[0]}/{self.part[1]}: " if self.part is not None else ""


@dataclass
class _Tally:
    """Where the videos of a build stand, and what processing them did."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    """meta of each video done, by id"""
    bad: dict[str, str] = field(default_factory=dict)
    """reason of each video rejected, by id"""
    todo: list[Record] = field(default_factory=list)
    reused: int = 0
    processed: int = 0
    pairs: int = 0
    """frame pairs of the processed videos: the flow's unit of work"""
    processing: float = 0.0
    """seconds spent processing"""


def build(
    records: Sequence[Record],
    out_dir: str | Path,
    *,
    flow_method: FlowMethod | str = FlowMethod.tvl1,
    height: int = 128,
    width: int = 171,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    skip_bad: bool = False,
    limit: int | None = None,
    extra_settings: dict[str, Any] | None = None,
    progress: bool = True,
    log=print,
    strict: bool = False,
    flow_device: FlowDevice | None = None,
    flow_at: FlowAt | str = FlowAt.stored,
    flow_short_side: int | None = None,
    fps: float | None = None,
    part: tuple[int, int] | None = None,
    pack_only: bool = False,
) -> BuildReport:
    """Build shards + manifest from records (sources.load_records) into out_dir; see the module docstring.

    strict: reject every video whose decode check finds anything (a shortfall against its declared duration, a
    decode error, corrupt frames) instead of keeping it with a warning.
    flow_device: device and torch.compile switch of ``tvl1-torch`` (default: cuda when visible, compiled).
    flow_at: FlowAt.stored (flow between the resized frames) or FlowAt.source (between the source frames, the
    shorter side capped at flow_short_side when given, then resized to height x width; see FlowAt). Part of
    the cache key: a rebuild under the other setting recomputes every video.
    fps: sample every video to this constant frame rate by timestamps (part of the cache key; None: as decoded).
    part: (I, N): process only share I of N (part_share) into the cache and pack nothing; the report's
    manifest is None. pack_only: process nothing; pack from the cache when every video is done (by any
    number of parts or builds), else a BuildError naming the missing videos and parts.
    """
    t0 = time.perf_counter()
    method = FlowMethod(flow_method)
    flow_device = flow_device or FlowDevice()
    at = _check_options(
        height=height, width=width, shard_size=shard_size, workers=workers, fps=fps, part=part,
        pack_only=pack_only, flow_at=flow_at, flow_short_side=flow_short_side,
    )  # fmt: skip
    classes = class_names(records)  # before subsetting: the full class list
    records = _subset(records, limit)
    ids = [r.video_id for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise BuildError(f"video {dup!r} is listed twice")
    out = Path(out_dir)
    (out / WORK_DIR).mkdir(parents=True, exist_ok=True)
    settings = VideoSettings(
        height=height,
        width=width,
        flow_method=method.value,
        flow_at=at.value,
        flow_short_side=flow_short_side,
        fps=fps,
    )
    plan = _Plan(
        records=records, share=part_share(records, part) if part is not None else records, classes=classes,
        out=out, settings=settings, shard_size=shard_size, skip_bad=skip_bad, strict=strict, limit=limit,
        extra_settings=extra_settings, part=part, log=log, t0=t0,
    )  # fmt: skip
    tally = _triage(plan, reuse_rejections=part is not None or pack_only)
    if tally.bad and not skip_bad:
        rec = next(r for r in plan.share if r.video_id in tally.bad)
        raise BuildError(
            f"{rec.path}: {tally.bad[rec.video_id]} (use --skip-bad to reject such videos instead)"
        )
    if pack_only:
        parts_status = _read_parts(plan.work)
        if tally.todo:
            raise BuildError(_missing_message(records, tally.todo, parts_status))
        return _pack(plan, tally, parts_status)
    log(
        f"{plan.tag}{len(plan.share)} videos: {tally.reused} already done (cached), {len(tally.todo)} to process, "
        f"{len(tally.bad)} rejected"
    )
    if part is not None:
        _write_part(plan.work, part, {"state": "running", "videos": len(plan.share), "host": _host()})
    job = VideoJob(plan.work, settings, strict, flow_device)
    _process(plan, tally, job, workers, progress, gpu_counter=method is FlowMethod.tvl1_torch)
    if part is not None:
        return _finish_part(plan, tally)
    return _pack(plan, tally, None)


def _triage(plan: _Plan, reuse_rejections: bool) -> _Tally:
    """Each video of this process's share: rejected by its source, done (a valid cache entry), rejected before by
    a part (with reuse_rejections: not decoded again), or still to process."""
    tally = _Tally()
    for rec in plan.share:
        if rec.problem is not None:
            tally.bad[rec.video_id] = rec.problem
        elif (meta := cached_meta(rec, plan.work, plan.settings)) is not None:
            # the decode check is judged again: a rerun with --strict rejects what a lenient build kept
            if (problem := _check_of(meta).problem(plan.strict)) is not None:
                tally.bad[rec.video_id] = problem
            else:
                tally.results[rec.video_id] = meta
        elif (
            reuse_rejections
            and (reason := cached_rejection(rec, plan.work, plan.settings, plan.strict)) is not None
        ):
            tally.bad[rec.video_id] = reason  # a part rejected it before: not decoded again
        else:
            tally.todo.append(rec)
    tally.reused = len(tally.results)
    return tally


def _process(
    plan: _Plan, tally: _Tally, job: VideoJob, workers: int, progress: bool, gpu_counter: bool
) -> None:
    """Process the videos still to do under a progress bar; each result lands in the tally as it arrives. A video
    that fails stops the build (BuildError), or with --skip-bad is rejected (and recorded in the cache by a part)."""
    bar = tqdm(
        total=len(tally.todo),
        desc=f"{plan.tag}videos" if plan.tag else "videos",
        unit="video",
        disable=not progress or not tally.todo,
        file=sys.stderr,
    )
    started = time.perf_counter()

    def collect(rec: Record, status: str, value) -> None:
        bar.update(1)
        if status == "ok":
            tally.results[rec.video_id] = value
            tally.pairs += max(int(value["flow_frames"]) - 1, 0)
            bar.set_postfix_str(
                f"{tally.pairs / max(time.perf_counter() - started, 1e-9):.1f} frame pairs/s", refresh=False
            )
            return
        if not plan.skip_bad:
            raise BuildError(f"{rec.path}: {value} (use --skip-bad to reject such videos instead)")
        tally.bad[rec.video_id] = value
        if plan.part is not None:
            _write_rejected(rec, plan.work, plan.settings, plan.strict, value)

    try:
        _run_videos(tally.todo, job, workers, gpu_counter, collect)
    finally:
        bar.close()
    tally.processing = time.perf_counter() - started
    tally.processed = sum(r.video_id in tally.results for r in tally.todo)


def _rejected_list(records: Sequence[Record], bad: dict[str, str]) -> list[dict[str, str]]:
    """The rejections in list order, as the manifest and a part's status record them."""
    by_id = {r.video_id: r for r in records}
    return [
        {"video": str(by_id[v].path), "reason": bad[v]} for v in (r.video_id for r in records) if v in bad
    ]


def _finish_part(plan: _Plan, tally: _Tally) -> BuildReport:
    """A part's end: its status file says complete, with its counts (what pack's summary adds up)."""
    rejected = _rejected_list(plan.share, tally.bad)
    status = {
        "state": "complete",
        "videos": len(plan.share),
        "processed": tally.processed,
        "reused": tally.reused,
        "rejected": len(rejected),
        "rejected_by_reason": reason_counts(rejected),
        "frame_pairs": tally.pairs,
        "processing_seconds": round(tally.processing, 3),
        "seconds": round(time.perf_counter() - plan.t0, 3),
        "host": _host(),
    }
    _write_part(plan.work, plan.part, status)
    rate = (
        f", {tally.pairs} frame pairs at {tally.pairs / max(tally.processing, 1e-9):.1f}/s"
        if tally.pairs
        else ""
    )
    plan.log(
        f"{plan.tag}done in {status['seconds']:.1f} s (processed {tally.processed}{rate}, reused {tally.reused}, "
        f"rejected {len(rejected)}); pack once every part is done"
    )
    return BuildReport(None, tally.processed, tally.reused, rejected, time.perf_counter() - plan.t0)


def _missing_message(
    records: Sequence[Record], todo: Sequence[Record], parts: dict[int, dict[str, Any]]
) -> str:
    """Why pack refuses: how many videos are not done, the first of them with their part, and the parts
    that never finished."""
    shown = ", ".join(r.video_id for r in todo[:5]) + (
        f", ... ({len(todo) - 5} more)" if len(todo) > 5 else ""
    )
    msg = f"pack: {len(todo)} of {len(records)} videos are not done: {shown}"
    if not parts:
        return msg + ". No part has reported (run the build, or its parts with --part I/N, first)"
    n = next(iter(parts.values()))["parts"]
    position = {r.video_id: i for i, r in enumerate(records)}
    owners = sorted({position[r.video_id] % n for r in todo})
    unfinished = [i for i in range(n) if parts.get(i, {}).get("state") != "complete"]
    msg += f". Missing from part(s) {', '.join(f'{i}/{n}' for i in owners)}"
    if unfinished:
        states = ", ".join(
            f"{i}/{n} ({parts[i]['state'] if i in parts else 'never started'})" for i in unfinished
        )
        msg += f"; part(s) not complete: {states}"
    return msg + "; rerun them (each resumes from the cache), then pack again"


def _pack(plan: _Plan, tally: _Tally, parts_status: dict[int, dict[str, Any]] | None) -> BuildReport:
    """Shards in split-list order, then the manifest (the same bytes however the videos were processed)."""
    rejected = _rejected_list(plan.records, tally.bad)
    # The old manifest goes first: from here on the folder is an unfinished build until the new one lands.
    (plan.out / shards.MANIFEST).unlink(missing_ok=True)
    split_infos, accepted = _write_shards(plan, tally.results)
    warnings = _decode_warnings(plan.records, tally.results)
    for w in warnings:
        plan.log(
            f"warning: {w['video']}: {w['warning']} (kept the {w['decoded_frames']} decoded frames; "
            "--strict rejects such videos)"
        )
    manifest = _manifest(plan, split_infos, accepted, rejected, warnings)
    path = shards.write_manifest(plan.out, manifest)
    report = BuildReport(path, tally.processed, tally.reused, rejected, time.perf_counter() - plan.t0)
    _log_pack(plan, tally, report, manifest, parts_status, warnings)
    return report


def _write_shards(
    plan: _Plan, results: dict[str, dict[str, Any]]
) -> tuple[dict[str, list[shards.ShardInfo]], list[dict[str, Any]]]:
    """Every split's shards from the cache, stale shards of an earlier build removed: (shards by split, the metas
    of the accepted videos). No accepted video at all is a BuildError."""
    split_infos: dict[str, list[shards.ShardInfo]] = {}
    accepted_all: list[dict[str, Any]] = []
    for split in shards.SPLITS:
        accepted = [
            (r, results[r.video_id]) for r in plan.records if r.split == split and r.video_id in results
        ]
        accepted_all += [m for _, m in accepted]
        split_infos[split] = shards.write_split(
            plan.out, split, _samples(split, accepted, plan.work), plan.shard_size
        )
    if not accepted_all:
        raise BuildError(f"no usable videos: all {len(plan.records)} were rejected (see the reasons above)")
    _remove_stale(plan.out, {n for infos in split_infos.values() for i in infos for n in (i.tar, i.index)})
    return split_infos, accepted_all


def _decode_warnings(records: Sequence[Record], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The kept videos whose decode check found something (manifest.json["warnings"])."""
    warnings = []
    for r in records:
        if r.video_id in results and (msg := (check := _check_of(results[r.video_id])).message()):
            warnings.append(
                {
                    "video": str(r.path),
                    "warning": msg,
                    "declared_frames": check.declared,
                    "decoded_frames": check.decoded,
                    "declared_seconds": check.declared_seconds,
                    "decoded_seconds": check.decoded_seconds,
                }
            )
    return warnings


def _manifest(
    plan: _Plan,
    split_infos: dict[str, list[shards.ShardInfo]],
    accepted: list[dict[str, Any]],
    rejected: list[dict[str, str]],
    warnings: list[dict[str, Any]],
) -> dict[str, Any]:
    fps_values = [m["fps"] for m in accepted]
    settings = plan.settings
    return shards.make_manifest(
        classes=plan.classes,
        splits=split_infos,
        video={
            "height": settings.height,
            "width": settings.width,
            "fps": statistics.median(fps_values),
            "min_frames": min(m["frames"] for m in accepted),
        },
        flow={"method": settings.flow_method, "bound": int(settings.flow_bound)},
        settings={
            **settings.recorded(),
            "shard_size": plan.shard_size,
            "skip_bad": plan.skip_bad,
            "strict": plan.strict,
            "min_decoded_share": MIN_DECODED_SHARE,
            "limit": plan.limit,
            "fps_values": sorted(set(fps_values)),
            **(plan.extra_settings or {}),
        },
        rejected=rejected,
        warnings=warnings,
    )


def _log_pack(
    plan: _Plan,
    tally: _Tally,
    report: BuildReport,
    manifest: dict[str, Any],
    parts_status: dict[int, dict[str, Any]] | None,
    warnings: list[dict[str, Any]],
) -> None:
    """The pack's summary lines: the parts added up (after --pack), the samples written, rejections, warnings."""
    log, path = plan.log, report.manifest
    n_train, n_test = (manifest["splits"][s]["num_samples"] for s in shards.SPLITS)
    if parts_status:
        # the summary adds the parts up: what each did when it ran, not what this pack found cached
        done = [parts_status[i] for i in sorted(parts_status)]
        total = {
            k: sum(int(p.get(k, 0)) for p in done) for k in ("processed", "reused", "rejected", "frame_pairs")
        }
        longest = max(float(p.get("seconds", 0)) for p in done)
        log(
            f"{len(done)} part(s): processed {total['processed']}, reused {total['reused']}, rejected "
            f"{total['rejected']}, {total['frame_pairs']} frame pairs; longest part {longest:.1f} s, "
            f"{sum(float(p.get('seconds', 0)) for p in done):.1f} s of part time in all"
        )
    pairs = tally.pairs
    rate = f", {pairs} frame pairs at {pairs / max(tally.processing, 1e-9):.1f}/s" if pairs else ""
    log(
        f"wrote {n_train} train + {n_test} test samples to {plan.out} in {report.seconds:.1f} s "
        f"(processed {report.processed}{rate}, reused {tally.reused})"
    )
    if report.rejected:
        log(_rejected_line(report.rejected, f"{path} under 'rejected'"))
    if warnings:
        log(f"kept {len(warnings)} video(s) with a warning; listed in {path} under 'warnings'")


def build_shards(
    records: Sequence[Record],
    out_dir: str | Path,
    *,
    flow_method: FlowMethod | str = FlowMethod.tvl1,
    height: int = 128,
    width: int = 171,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    skip_bad: bool = False,
    **kwargs: Any,
) -> Path:
    """The library entry point (docs/architecture.md, Contracts: Data preparation): build and return the path of
    manifest.json."""
    return build(
        records,
        out_dir,
        flow_method=flow_method,
        height=height,
        width=width,
        shard_size=shard_size,
        workers=workers,
        skip_bad=skip_bad,
        **kwargs,
    ).manifest


def build_synthetic(
    out_dir: str | Path,
    cfg: SyntheticConfig | None = None,
    workers: int = 1,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> Path:
    """Generate the synthetic set into ``out_dir/source`` and build its shards into out_dir.

    Returns the manifest path. A folder whose manifest was built with the same settings is returned as is.
    """
    from data_prep import synthetic

    cfg = cfg or SyntheticConfig()
    out = Path(out_dir)
    syn = {k: (v.value if isinstance(v, FlowMethod) else v) for k, v in dataclasses.asdict(cfg).items()}
    syn["generator_version"] = synthetic.GENERATOR_VERSION  # a changed generator must not reuse old shards
    manifest_path = out / shards.MANIFEST
    if manifest_path.is_file():
        try:
            m = shards.load_manifest(manifest_path)
            listed = [s["tar"] for sp in m["splits"].values() for s in sp["shards"]]
            if m["settings"].get("synthetic") == syn and all((out / t).is_file() for t in listed):
                return manifest_path
        except (shards.ShardFormatError, KeyError, TypeError):
            pass
    src = out / "source"
    # The source folder belongs to this shard folder: other synthetic settings replace it (and the changed
    # videos' size/mtime invalidate their cache entries).
    synthetic.generate(src, cfg, workers=workers, progress=progress, overwrite=True)
    records = load_records(Source.ucf101, src, 1)
    return build(
        records,
        out,
        flow_method=cfg.flow_method,
        height=cfg.height,
        width=cfg.width,
        shard_size=shard_size,
        workers=workers,
        extra_settings={"source": Source.ucf101.value, "root": str(src), "split_id": 1, "synthetic": syn},
        progress=progress,
    ).manifest


# ----------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.build",
        description="Turn a video data set into WebDataset shards of VP9 RGB + optical-flow clips for DALI.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--source", required=True, choices=[s.value for s in Source], help="layout of --root")
    p.add_argument(
        "--root",
        default=None,
        help="data set folder (ucf101: UCF-101/ + ucfTrainTestlist/; hmdb51: class folders + "
        "testTrainMulti_7030_splits/; folder: one sub-folder per class; kinetics: annotations/{train,validate}"
        ".csv + the clips, flat or in per-class folders; missing or broken clips are always rejected with "
        "their reason, as with --skip-bad)",
    )
    p.add_argument("--out", required=True, help="output folder for shards, DALI indexes and manifest.json")
    p.add_argument(
        "--split", type=int, default=1, help="official split 1-3 (folder: fold 1-5 of a 1/5 test split)"
    )
    p.add_argument("--height", type=int, default=128, help="frame height after resizing")
    p.add_argument("--width", type=int, default=171, help="frame width after resizing")
    p.add_argument(
        "--flow",
        default=FlowMethod.tvl1.value,
        choices=[m.value for m in FlowMethod],
        help="optical flow: tvl1 (the papers', OpenCV), tvl1-torch (the same TV-L1 in PyTorch, on --device), "
        "dis (~30x faster), farneback",
    )
    p.add_argument(
        "--device",
        default=None,
        choices=["cuda", "cpu"],
        help="where tvl1-torch runs (default: cuda when a GPU is visible, else cpu); with cuda the --workers "
        "processes take the GPUs of --devices in turn",
    )
    p.add_argument(
        "--devices",
        default=None,
        help="with --device cuda: the GPUs to use, e.g. 0,1,2,3 or cuda:0,cuda:1 (default: every visible GPU); "
        "worker i of the pool runs its flow on GPU i mod len(devices)",
    )
    p.add_argument(
        "--fps",
        type=float,
        default=None,
        help="sample every video to this constant frame rate by its timestamps (nearest frame per tick; "
        "variable-frame-rate sources, as Kinetics pipelines do); recorded in the manifest. Default: the "
        "decoded frames as they are",
    )
    p.add_argument(
        "--part",
        default=None,
        help="I/N (0 <= I < N): process the I-th of N deterministic shares of the videos into the shared cache "
        "and pack nothing (default: from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, or torchrun's "
        "RANK/WORLD_SIZE, when set; else the whole build). Then run the same command with --pack",
    )
    p.add_argument(
        "--pack",
        action="store_true",
        help="write the shards and manifest from the cache once every part is done (else name the missing "
        "videos and parts and exit 2); also `python -m data_prep.build pack ...`",
    )
    p.add_argument(
        "--flow-compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run tvl1-torch's inner iteration through torch.compile (fused kernels, ~10x faster; the first "
        "video of each process compiles for tens of seconds)",
    )
    p.add_argument(
        "--flow-at",
        default=FlowAt.stored.value,
        choices=[a.value for a in FlowAt],
        help="stored: flow between the frames resized to --height x --width (cheaper; the demo's choice); "
        "source: flow between the source frames (e.g. UCF101's 320x240), then the flow field resized to "
        "--height x --width with x scaled by width/source width and y by height/source height (the released "
        "ViCC/CoCLR recipe)",
    )
    p.add_argument(
        "--flow-short-side",
        type=int,
        default=None,
        help="with --flow-at source: shrink sources whose shorter side is longer than this before flow "
        "(aspect kept; 240 is the released pipelines' frame size); default: the source size, uncapped",
    )
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="max videos per tar shard")
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="processes computing flow/encoding"
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="reject unreadable/empty/missing videos (recorded with reasons in manifest.json) instead of stopping",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="treat every video that decodes fewer frames than its container declares, or hits a decode error "
        "or corrupt frame, as bad input (default: kept with a warning unless under "
        f"{100 * MIN_DECODED_SHARE:.0f}%% of its frames decode)",
    )
    p.add_argument(
        "--limit", type=int, default=None, help="at most N videos per split, evenly spread (quick tries)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pack"]:
        argv = [*argv[1:], "--pack"]
    a = parse_args(argv)
    try:
        # Kinetics always lacks some downloads: they are rejections with a reason, never a stop
        skip_bad = a.skip_bad or a.source == "kinetics"
        part = parse_part(a.part) if a.part else (None if a.pack else part_from_env(dict(os.environ)))
        device = a.device or _default_device()
        devices: tuple[str, ...] = ()
        if a.devices is not None or (device == "cuda" and a.flow == FlowMethod.tvl1_torch.value):
            if device != "cuda":
                raise BuildError("--devices applies to --device cuda only")
            import torch

            devices = parse_devices(a.devices, torch.cuda.device_count())
        records = load_records(a.source, a.root, a.split, skip_bad=skip_bad)
        extra = {"source": a.source, "root": str(Path(a.root).resolve()), "split_id": a.split}
        if a.pack and (parts := _read_parts(Path(a.out) / WORK_DIR)):
            extra["parts"] = next(iter(parts.values()))["parts"]
        build(
            records,
            a.out,
            flow_method=a.flow,
            height=a.height,
            width=a.width,
            shard_size=a.shard_size,
            workers=a.workers,
            skip_bad=skip_bad,
            limit=a.limit,
            extra_settings=extra,
            progress=not a.no_progress,
            strict=a.strict,
            flow_device=FlowDevice(device, a.flow_compile, devices),
            flow_at=a.flow_at,
            flow_short_side=a.flow_short_side,
            fps=a.fps,
            part=part,
            pack_only=a.pack,
        )
    except (DataSourceError, BuildError, shards.ShardFormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except shards.ShardWriteError as e:
        print(f"error: {e.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
