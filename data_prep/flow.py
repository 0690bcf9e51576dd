"""Optical flow of RGB frames, and the papers' flow preprocessing.

- :func:`compute_flow`: frames [T, H, W, 3] uint8 RGB -> flow [T, H, W, 2] float32, pixel displacement from
  frame i to i+1 (x right, y down); the last flow frame repeats the one before, so a flow video has as many
  frames as its RGB video.
- Methods (:class:`vicc_fast.config.FlowMethod`): ``tvl1`` (OpenCV-contrib DualTVL1 with OpenCV's defaults, the
  TV-L1 of ViCC / CoCLR; 0.16-0.19 s per 128x171 pair on one core here), ``tvl1-torch`` (the same algorithm and
  defaults in batched PyTorch, :mod:`data_prep.flow_torch`, on the CPU or a GPU), ``dis`` (DIS, medium preset,
  60-100x faster than ``tvl1`` per core here; figures: docs/optical_flow.md) and ``farneback`` (dense polynomial
  expansion). All run on the grey-level image, as the usual TV-L1 extraction
  tools do.
- :func:`quantize_flow` / :func:`dequantize_flow`: truncate to [-bound, bound] (bound 20 as in the papers), map
  linearly to [0, 255] uint8 with rounding; the round trip errs by at most half a step (bound / 255) inside the
  bound. The third, constant channel is added at load time, not stored (``data.flow_layout``).
- :func:`endpoint_error`: mean end-point error, the score against the synthetic ground truth.
- :func:`flow_size` / :func:`resize_flow`: the "flow at the source resolution, then resize" recipe of the
  released ViCC / CoCLR pipelines (``data_prep.build --flow-at source``): the size flow is computed at, and the
  resampling of a flow field to the stored size with its vectors scaled to the new pixel units.

OpenCV flow objects are built once per process (:func:`estimator` caches them) and pool workers should call
:func:`worker_init` so OpenCV does not start its own threads on top of the process pool.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from data_prep.frames import FlowError, check_frames
from vicc_fast.config import FlowMethod

FLOW_BOUND = 20.0  # pixels; ViCC / CoCLR truncate flow to [-20, 20]


def worker_init() -> None:
    """Initializer for process-pool workers: one OpenCV thread per process (the pool already uses the cores)."""
    cv2.setNumThreads(1)


class FlowEstimator:
    """One OpenCV flow object for `method`; call it on a pair of grey frames [H, W] uint8 -> [H, W, 2] float32."""

    def __init__(self, method: FlowMethod | str) -> None:
        self.method = parse_method(method)
        if self.method is FlowMethod.tvl1_torch:
            raise FlowError("tvl1-torch has no OpenCV object: use compute_flow or data_prep.flow_torch")
        self._impl = None  # Farneback is a plain function in OpenCV
        self._reset: tuple = ()
        if self.method is FlowMethod.tvl1:
            self._impl = cv2.optflow.DualTVL1OpticalFlow_create()
            self._reset = (self._impl.setScalesNumber, self._impl.getScalesNumber())
        elif self.method is FlowMethod.dis:
            self._impl = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
            self._reset = (self._impl.setFinestScale, self._impl.getFinestScale())

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if self._impl is None:
            # pyramid scale 0.5, 3 levels, window 15, 3 iterations, poly_n 5, sigma 1.2: OpenCV's sample values
            return cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        # OpenCV lowers the pyramid depth of TV-L1 (scales) and DIS (finest scale) *in the object* when a small
        # image does not fit it, and keeps the lowered value: without this reset one tiny video would change
        # the flow of every later video computed by the same process.
        setter, value = self._reset
        setter(value)
        return self._impl.calc(prev, nxt, None)


def parse_method(method: FlowMethod | str) -> FlowMethod:
    try:
        return FlowMethod(method)
    except ValueError:
        choices = ", ".join(m.value for m in FlowMethod)
        raise FlowError(f"unknown flow method {method!r}; choose one of {choices}") from None


@functools.cache
def estimator(method: FlowMethod) -> FlowEstimator:
    """The process's flow object for `method`, created on first use (TV-L1 allocates its buffers once)."""
    return FlowEstimator(method)


def compute_flow(
    frames: np.ndarray,
    method: FlowMethod | str = FlowMethod.tvl1,
    *,
    device: str | None = None,
    compile: bool = False,
) -> np.ndarray:
    """Dense flow between consecutive frames.

    frames: [T, H, W, 3] uint8 RGB, T >= 2 -> [T, H, W, 2] float32, flow[i] = displacement i -> i+1 in pixels
    (x right, y down); flow[T-1] = flow[T-2].
    device, compile: for ``tvl1-torch`` only (see :func:`data_prep.flow_torch.tvl1`); device None = "cuda"
    when available, else "cpu".
    """
    check_frames(frames)
    method = parse_method(method)
    if method is FlowMethod.tvl1_torch:
        from data_prep import flow_torch  # torch is imported only by the processes that use it

        if frames.shape[1] < flow_torch.MIN_LEVEL_SIZE or frames.shape[2] < flow_torch.MIN_LEVEL_SIZE:
            raise FlowError(
                f"frames of {frames.shape[1]}x{frames.shape[2]} are too small for TV-L1 (< 16 px)"
            )
        return flow_torch.compute_flow_torch(frames, device or flow_torch.default_device(), compile=compile)
    est = estimator(method)
    grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    t, h, w, _ = frames.shape
    out = np.empty((t, h, w, 2), dtype=np.float32)
    for i in range(t - 1):
        out[i] = est(grey[i], grey[i + 1])
    out[-1] = out[-2]
    return out


def quantize_flow(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """[..., 2] float flow -> [..., 2] uint8: v = round((clip(f, -bound, bound) + bound) * 255 / (2 bound))."""
    flow = np.asarray(flow)
    if not np.issubdtype(flow.dtype, np.floating):
        raise FlowError(f"flow must be floating point, got dtype {flow.dtype}")
    if flow.ndim < 1 or flow.shape[-1] != 2:
        raise FlowError(f"flow must have a last axis of size 2 (x, y), got shape {list(flow.shape)}")
    if bound <= 0:
        raise FlowError(f"bound must be > 0, got {bound}")
    scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2 * bound))
    return np.rint(scaled).astype(np.uint8)


def dequantize_flow(q: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """[..., 2] uint8 -> [..., 2] float32 pixels, the inverse map of :func:`quantize_flow`."""
    q = np.asarray(q)
    if q.dtype != np.uint8:
        raise FlowError(f"quantized flow must be uint8, got dtype {q.dtype}")
    if bound <= 0:
        raise FlowError(f"bound must be > 0, got {bound}")
    return (q.astype(np.float32) * np.float32(2 * bound / 255.0) - np.float32(bound)).astype(np.float32)


def endpoint_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean end-point error: mean over pixels of ||pred - gt||_2. pred, gt: [..., 2] of the same shape."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.shape[-1:] != (2,):
        raise FlowError(
            f"endpoint_error needs two [..., 2] arrays of one shape, got {list(pred.shape)} and {list(gt.shape)}"
        )
    d = pred.astype(np.float32) - gt.astype(np.float32)
    return float(np.sqrt((d * d).sum(-1)).mean())


def flow_size(height: int, width: int, short_side: int | None = None) -> tuple[int, int]:
    """Size (h, w) flow is computed at for a source of height x width: the source itself, or, when its shorter
    side exceeds `short_side`, the source scaled (aspect kept, rounded) so that its shorter side is `short_side`
    (the released pipelines' cap: frames are extracted with the shorter side 240)."""
    if height < 1 or width < 1:
        raise FlowError(f"source size must be positive, got {height}x{width}")
    if short_side is None or min(height, width) <= short_side:
        return height, width
    if short_side < 8:
        raise FlowError(f"short_side must be >= 8 px (or None: no cap), got {short_side}")
    scale = short_side / min(height, width)
    # the shorter side is exactly short_side (no rounding drift); the other keeps the aspect ratio
    if height <= width:
        return short_side, max(short_side, round(width * scale))
    return max(short_side, round(height * scale)), short_side


def resize_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resample flow fields to height x width and scale the vectors to the new pixel units.

    flow: [..., h, w, 2] float (x right, y down, in pixels of the h x w grid) -> [..., height, width, 2]
    float32, x multiplied by width / w and y by height / h: a displacement of d source pixels is d * width / w
    stored pixels. Shrinking averages over each target pixel's area (cv2.INTER_AREA, as the frames are
    shrunk: no aliasing of motion boundaries), enlarging interpolates bilinearly.
    """
    flow = np.asarray(flow)
    if not np.issubdtype(flow.dtype, np.floating):
        raise FlowError(f"flow must be floating point, got dtype {flow.dtype}")
    if flow.ndim < 3 or flow.shape[-1] != 2:
        raise FlowError(f"flow must have shape [..., H, W, 2], got {list(flow.shape)}")
    if height < 1 or width < 1:
        raise FlowError(f"target size must be positive, got {height}x{width}")
    h, w = flow.shape[-3:-1]
    scale = np.array([width / w, height / h], dtype=np.float32)
    lead = flow.shape[:-3]
    fields = flow.reshape(-1, h, w, 2).astype(np.float32, copy=False)
    if (h, w) == (height, width):
        return (fields * scale).reshape(*lead, height, width, 2)
    interp = cv2.INTER_AREA if height <= h and width <= w else cv2.INTER_LINEAR
    out = np.stack([cv2.resize(f, (width, height), interpolation=interp) for f in fields])
    return (out * scale).reshape(*lead, height, width, 2)


__all__ = [
    "FLOW_BOUND",
    "FlowError",
    "FlowEstimator",
    "compute_flow",
    "dequantize_flow",
    "endpoint_error",
    "estimator",
    "flow_size",
    "parse_method",
    "quantize_flow",
    "resize_flow",
    "worker_init",
]
