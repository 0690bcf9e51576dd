"""VP9/WebM encoding and decoding of RGB clips and quantised optical flow (PyAV, libvpx-vp9).

Why these choices (see docs/shard_format.md for the measurements):

- VP9 because DALI's CPU video decoder cannot decode H.264, and NVDEC decodes VP9 on the GPU.
- yuv420p, keyframe every ``GOP`` frames: random clip access seeks back to the previous keyframe, so the
  interval bounds the wasted decoding per clip.
- ``deadline=realtime`` with a high ``cpu-used`` and ``row-mt``: encoding speed dominates the build time,
  and ``lag-in-frames=0`` keeps every frame a shown frame (no alt-ref reordering), so frame counts are exact.
- Flow: x and y are stacked vertically into the LUMA plane of one (2H) x W video (chroma held at the
  neutral 128), so neither channel is chroma-subsampled. The stream is tagged FULL range (pc/JPEG): DALI's
  CPU decoder then converts Y -> R = G = B = Y with no [16, 235] expansion (measured; a limited-range tag
  stretches v by 255/219 and clips), and with neutral chroma the colour matrix does not matter. So channel
  0 of DALI's RGB output of a flow video equals the stored v up to codec error only. DALI's NVDEC path reads
  the same tag (``video_full_range_flag`` in its frames_decoder_gpu.cc; not measured here, no GPU).

Measured flow round-trip bound (``FLOW_ROUNDTRIP_BOUND``, tests/data_prep/test_codec.py): on realistic
flow (smooth fields plus sharp motion boundaries) at ``FLOW_CRF``, max |decoded - v| over all pixels, PyAV
and DALI CPU decode alike. See the constants below for the numbers.

Odd frame sizes (the usual 128 x 171) are accepted by libvpx-vp9 and decoded at the exact size by PyAV
and DALI's CPU decoder (tested); chroma planes are ceil(W/2) wide.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np

GOP = 8
"""Keyframe interval in frames (random access decodes at most GOP - 1 frames it throws away)."""

RGB_CRF = 20
"""Constant-quality level of RGB videos (0 best .. 63 worst). Measured on a panning smooth texture with a
sharp coloured disc (48 x 128 x 171): 59 kB, PSNR 34.2 dB through DALI; crf 16: 65 kB, 34.4 dB;
crf 28: 46 kB, 33.5 dB (the 4:2:0 colour conversion alone limits this clip to 33-34 dB)."""

FLOW_CRF = 3
"""Constant-quality level of flow videos: low, because flow is a measurement, not a picture.
Measured on TV-L1 flow of 5 synthetic videos (48 x 128 x 171): crf 3 max error 4-5, 43 kB per video;
crf 4 max 4-10, 38 kB; crf 6 max 5-12, 33 kB; crf 1 max 3-5, 71 kB (crf 0 is lossless, ~4x larger)."""

FLOW_ROUNDTRIP_BOUND = 8
"""Max |decoded - stored| of a flow value v in [0, 255] (1 step = 40/255 = 0.157 px). Measured max 6 on
synthetic flow with sharp motion boundaries and 0.3 px noise, 5 on TV-L1 flow; it occurs only at motion
boundaries (99.99th percentile 2-3). PyAV and DALI CPU decode give identical values."""

FLOW_ROUNDTRIP_MEAN_BOUND = 1.0
"""Mean |decoded - stored| of a flow value. Measured 0.08 (TV-L1 flow) to 0.66 (0.3 px noise)."""

CPU_USED = 8
"""libvpx speed preset for realtime mode (higher = faster). Measured: cpu-used 8 encodes a 48-frame
128 x 171 RGB clip in 0.03-0.05 s vs 0.06-0.09 s at cpu-used 5, at the same size and PSNR."""

NEUTRAL_CHROMA = 128


class CodecError(ValueError):
    """A video that cannot be encoded or decoded; the message says why."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    height: int
    width: int
    fps: float


def _vp9_stream(container: av.container.OutputContainer, width: int, height: int, fps: float, crf: int):
    rate = Fraction(fps).limit_denominator(1001)
    stream = container.add_stream("libvpx-vp9", rate=rate)
    stream.width = width
    stream.height = height
    stream.pix_fmt = "yuv420p"
    stream.codec_context.gop_size = GOP
    stream.options = {
        "deadline": "realtime",
        "cpu-used": str(CPU_USED),
        "row-mt": "1",
        "lag-in-frames": "0",
        "crf": str(crf),
        "b:v": "0",  # pure constant-quality mode
        "keyint_min": str(GOP),
        "threads": "1",  # parallelism comes from the process pool over videos
    }
    return stream


def _open_webm(buf: io.BytesIO) -> av.container.OutputContainer:
    # bitexact: without it the Matroska muxer writes a random segment UID (and the encoder's version), so the
    # same frames gave different bytes, shard hashes and manifests on every build
    return av.open(buf, "w", format="webm", options={"fflags": "+bitexact"})


def _finish(container, stream, buf: io.BytesIO) -> bytes:
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return buf.getvalue()


class RGBWriter:
    """Encode RGB frames one at a time (a long video is never held whole): ``add`` each [H, W, 3] uint8 frame,
    then ``finish`` -> VP9 WebM bytes. encode_rgb is this writer over an array (identical bytes)."""

    def __init__(self, fps: float = 25.0, crf: int = RGB_CRF) -> None:
        self.fps, self.crf = fps, crf
        self.buf = io.BytesIO()
        self.container = _open_webm(self.buf)
        self.stream = None

    def _open(self, h: int, w: int) -> None:
        self.stream = _vp9_stream(self.container, w, h, self.fps, self.crf)

    def _frame(self, frame: np.ndarray):
        return av.VideoFrame.from_ndarray(frame, format="rgb24")

    def add(self, frame: np.ndarray) -> None:
        if self.stream is None:
            self._open(*frame.shape[:2])
        for packet in self.stream.encode(self._frame(frame)):
            self.container.mux(packet)

    def finish(self) -> bytes:
        if self.stream is None:
            raise CodecError("no frames to encode")
        return _finish(self.container, self.stream, self.buf)


class FlowWriter(RGBWriter):
    """Encode quantised flow frames [H, W, 2] uint8 one at a time (the encode_flow format)."""

    def __init__(self, fps: float = 25.0, crf: int = FLOW_CRF) -> None:
        super().__init__(fps, crf)

    def _open(self, h: int, w: int) -> None:
        super()._open(2 * h, w)
        # Full range: the decoder maps Y straight to R = G = B (no 16..235 expansion); see module docstring.
        self.stream.codec_context.color_range = av.video.reformatter.ColorRange.JPEG
        self.chroma = np.full(((2 * h + 1) // 2, (w + 1) // 2), NEUTRAL_CHROMA, np.uint8)

    def _frame(self, q: np.ndarray):
        luma = np.concatenate([q[..., 0], q[..., 1]], axis=0)  # flow_to_luma of one frame
        h2, w = luma.shape
        frame = av.VideoFrame(w, h2, "yuv420p")
        frame.color_range = av.video.reformatter.ColorRange.JPEG
        _write_plane(frame.planes[0], luma)
        _write_plane(frame.planes[1], self.chroma)
        _write_plane(frame.planes[2], self.chroma)
        return frame


def encode_rgb(frames: np.ndarray, fps: float = 25.0, crf: int = RGB_CRF) -> bytes:
    """frames: [T, H, W, 3] uint8 RGB -> VP9 WebM bytes (yuv420p, limited range BT.601)."""
    frames = _check_frames(frames, channels=3)
    w = RGBWriter(fps, crf)
    for f in frames:
        w.add(f)
    return w.finish()


def flow_to_luma(q: np.ndarray) -> np.ndarray:
    """q: [T, H, W, 2] uint8 -> [T, 2H, W] uint8: x in rows [0, H), y in rows [H, 2H)."""
    return np.concatenate([q[..., 0], q[..., 1]], axis=1)


def luma_to_flow(y: np.ndarray) -> np.ndarray:
    """y: [T, 2H, W] uint8 -> [T, H, W, 2] uint8 (inverse of flow_to_luma)."""
    h = y.shape[1] // 2
    return np.stack([y[:, :h], y[:, h:]], axis=-1)


def _write_plane(plane, data: np.ndarray) -> None:
    """Copy data [h, w] into a frame plane whose rows are ``line_size`` bytes (padding at the end)."""
    h, w = data.shape
    if plane.line_size == w:
        plane.update(np.ascontiguousarray(data).tobytes())
        return
    padded = np.zeros((h, plane.line_size), np.uint8)
    padded[:, :w] = data
    plane.update(padded.tobytes())


def _read_plane(plane, height: int, width: int) -> np.ndarray:
    """A frame plane -> [height, width] uint8 (drops the row padding)."""
    arr = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
    return arr[:height, :width]


def encode_flow(q: np.ndarray, fps: float = 25.0, crf: int = FLOW_CRF) -> bytes:
    """q: [T, H, W, 2] uint8 quantised flow -> VP9 WebM bytes of (2H) x W luma frames, full range."""
    q = _check_frames(q, channels=2)
    w = FlowWriter(fps, crf)
    for f in q:
        w.add(f)
    return w.finish()


def _check_frames(frames: np.ndarray, channels: int) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != channels or frames.shape[0] == 0:
        raise CodecError(
            f"expected a non-empty uint8 array [T, H, W, {channels}], got {frames.dtype} {frames.shape}"
        )
    return frames


def _open(data: bytes) -> av.container.InputContainer:
    if not data:
        raise CodecError("empty video bytes")
    try:
        return av.open(io.BytesIO(data), "r")
    except av.error.FFmpegError as e:
        raise CodecError(f"cannot open video: {e}") from e


def probe(data: bytes) -> VideoInfo:
    """Frame count (by decoding: WebM headers carry none), size and fps of an encoded video."""
    with _open(data) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 25)
        n = 0
        try:
            for _ in c.decode(s):
                n += 1
        except av.error.FFmpegError as e:
            raise CodecError(f"decode failed after {n} frames: {e}") from e
        return VideoInfo(frames=n, height=s.codec_context.height, width=s.codec_context.width, fps=fps)


def _decode_frames(data: bytes, start: int, count: int | None, stride: int):
    """Yield (index, av.VideoFrame) for frames start, start + stride, ... (count of them, or to the end).

    Seeks to the keyframe at or before ``start`` (keyframes every GOP frames) instead of decoding from frame 0;
    frame indices come from the timestamps (constant frame rate, as this module writes).
    """
    if start < 0 or stride < 1 or (count is not None and count < 0):
        raise CodecError(f"bad frame range start={start} count={count} stride={stride}")
    wanted_last = None if count is None else start + (count - 1) * stride
    with _open(data) as c:
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate
        tb = s.time_base
        seek = start >= GOP and rate is not None and tb is not None
        try:
            if seek:
                c.seek(int(start / rate / tb), stream=s, backward=True, any_frame=False)
            for n, frame in enumerate(c.decode(s)):
                i = round(float(frame.pts * tb * rate)) if seek and frame.pts is not None else n
                if wanted_last is not None and i > wanted_last:
                    return
                if i >= start and (i - start) % stride == 0:
                    yield i, frame
        except av.error.FFmpegError as e:
            raise CodecError(f"decode failed: {e}") from e


def yuv420_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Limited-range BT.601 YUV 4:2:0 -> RGB the way DALI's video decoder does it (bilinear chroma).

    y: [H, W], u, v: [ceil(H/2), ceil(W/2)] uint8 -> [H, W, 3] uint8. Matches DALI's CPU decoder output
    within 1 (measured); swscale's default (PyAV ``to_ndarray("rgb24")``) differs from it by 4 on average,
    up to 111 at sharp colour edges, so the torch baseline would see other pixels than DALI.
    """
    h, w = y.shape
    uu = cv2.resize(u.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) - 128.0
    vv = cv2.resize(v.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) - 128.0
    yy = (y.astype(np.float32) - 16.0) * (255.0 / 219.0)
    uu *= 255.0 / 224.0
    vv *= 255.0 / 224.0
    kr, kb = 0.299, 0.114
    r = yy + 2.0 * (1.0 - kr) * vv
    b = yy + 2.0 * (1.0 - kb) * uu
    g = (yy - kr * r - kb * b) / (1.0 - kr - kb)
    return np.clip(np.rint(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def _frame_to_rgb(frame) -> np.ndarray:
    h, w = frame.height, frame.width
    if frame.format.name != "yuv420p":
        return frame.to_ndarray(format="rgb24")
    ch, cw = (h + 1) // 2, (w + 1) // 2
    return yuv420_to_rgb(
        _read_plane(frame.planes[0], h, w),
        _read_plane(frame.planes[1], ch, cw),
        _read_plane(frame.planes[2], ch, cw),
    )


def decode_rgb(data: bytes, start: int = 0, count: int | None = None, stride: int = 1) -> np.ndarray:
    """VP9 WebM bytes -> [count, H, W, 3] uint8 RGB, frames start, start + stride, ...

    Colour conversion as DALI's decoder (see yuv420_to_rgb). Fewer frames come back when the video ends
    first (the caller checks the length).
    """
    frames = [_frame_to_rgb(f) for _, f in _decode_frames(data, start, count, stride)]
    if not frames:
        raise CodecError(f"no frames decoded from start={start}")
    return np.stack(frames)


def decode_flow(data: bytes, start: int = 0, count: int | None = None, stride: int = 1) -> np.ndarray:
    """Flow WebM bytes -> [count, H, W, 2] uint8 quantised flow (the stored v, up to codec error)."""
    lumas = []
    for _, f in _decode_frames(data, start, count, stride):
        lumas.append(_read_plane(f.planes[0], f.height, f.width).copy())
    if not lumas:
        raise CodecError(f"no frames decoded from start={start}")
    y = np.stack(lumas)
    if y.shape[1] % 2:
        raise CodecError(f"flow video height {y.shape[1]} is odd: not a stacked x/y flow video")
    return luma_to_flow(y)
