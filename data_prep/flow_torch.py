"""TV-L1 optical flow in batched PyTorch: OpenCV-contrib's ``DualTVL1OpticalFlow`` on any device, many pairs a call.

The algorithm is the Zach-Pock-Bischof duality scheme (Sanchez, Meinhardt-Llopis, Facciolo, IPOL 2013) exactly as
``modules/optflow/src/tvl1flow.cpp`` runs it, with its parameters and defaults (:class:`TVL1Params`):

- pyramid: each level is the one above resized by ``scale_step`` (OpenCV ``resize`` INTER_LINEAR: half-pixel
  centres, no anti-aliasing, size rounded to nearest); levels below 16 px are dropped; the flow of a coarse
  level is resized (INTER_LINEAR) to the next level and scaled by ``1 / scale_step``;
- per level: centred gradient of I1 (OpenCV's border rule: half the one-sided difference), dual variables reset
  to 0, then ``warps`` times: bicubic warp (A = -0.75, zero outside, like ``remap``) of I1 and its gradient
  by the current flow, then up to ``outer_iterations`` x (5x5 median of the flow, up to ``inner_iterations``
  x (threshold step, primal step, dual step)), stopping as soon as the sum of squared flow changes of one
  inner step is <= epsilon^2 * level area.

Batching: every tensor carries the pair index first. The stopping rule is per pair (a pair that has converged
is frozen by a mask while the others go on), so a batch gives the same flow as its pairs one by one.

Public functions are pure (no state, no in-place change of their inputs):

- :func:`tvl1` ([N, H, W] grey I0, I1 -> [N, H, W, 2] flow), the whole method;
- :func:`rgb_to_grey` (OpenCV's fixed-point RGB2GRAY, so frames give the grey levels OpenCV's path sees);
- :func:`compute_flow_torch`: the drop-in for :func:`data_prep.flow.compute_flow` (numpy [T, H, W, 3] uint8 in,
  [T, H, W, 2] float32 out), batching the pairs of one video on `device`;
- the building blocks (:func:`pyramid_sizes`, :func:`resize_linear`, :func:`centered_gradient`,
  :func:`warp_bicubic`, :func:`median_blur`, :func:`forward_gradient`, :func:`divergence`, :func:`tv_step`).

Differences from OpenCV, each below 1e-4 px a step: float rounding order (OpenCV sums the stopping error
sequentially in float32, we sum pairwise), and the threshold step at pixels whose squared gradient is in
(0, FLT_EPSILON], where a step of at most lambda * theta * sqrt(FLT_EPSILON) ~ 2e-5 px is taken or not. Over
thousands of steps they add up to a mean EPE of 0.002-0.007 px between the two flows (docs/optical_flow.md).
``gamma != 0`` (the illumination term) and an initial flow are not implemented (OpenCV's defaults do not use them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MIN_LEVEL_SIZE = 16
"""OpenCV drops pyramid levels narrower or lower than this."""
_FLT_EPSILON = float(np.finfo(np.float32).eps)
_GPU_CHECK_EVERY = 5
_COMPACT_AT = 0.75  # shrink a warp's run once a quarter of its rows have stopped
_NETWORKS: dict = {}  # ksize -> median_network(ksize)


@dataclass(frozen=True)
class TVL1Params:
    """``cv2.optflow.DualTVL1OpticalFlow`` parameters, OpenCV's defaults (tvl1flow.cpp, constructor)."""

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 5

    def validate(self) -> None:
        """Raise ValueError naming the first unusable parameter."""
        if self.gamma != 0:
            raise ValueError("gamma != 0 (illumination term) is not implemented; OpenCV's default is 0")
        if not 0 < self.scale_step < 1:
            raise ValueError(f"scale_step must be in (0, 1), got {self.scale_step}")
        for name in ("nscales", "warps", "inner_iterations", "outer_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.median_filtering > 1 and self.median_filtering % 2 == 0:
            raise ValueError(f"median_filtering must be odd (or <= 1: off), got {self.median_filtering}")
        if self.tau <= 0 or self.theta <= 0 or self.lambda_ <= 0 or self.epsilon < 0:
            raise ValueError("tau, theta and lambda_ must be > 0 and epsilon >= 0")


# ------------------------------------------------------------------------------------------- helpers
def rgb_to_grey(frames: torch.Tensor) -> torch.Tensor:
    """[..., 3] uint8 RGB -> [...] uint8 grey, bit-exact with ``cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)``.

    OpenCV uses 15-bit fixed-point weights (0.299, 0.587, 0.114 rounded) with rounding; float weights flip
    some grey levels by one and so change the flow. Checked equal on all 2^24 colours.
    """
    c = frames.to(torch.int32)
    y = (c[..., 0] * 9798 + c[..., 1] * 19235 + c[..., 2] * 3735 + (1 << 14)) >> 15
    return y.to(torch.uint8)


def pyramid_sizes(
    height: int, width: int, nscales: int = 5, scale_step: float = 0.8
) -> list[tuple[int, int]]:
    """Level sizes, finest first: each is the previous times scale_step rounded (OpenCV's ``resize`` with fx,
    fy), stopping before the first level under 16 px in either direction (OpenCV lowers nscales the same way).
    """
    sizes = [(height, width)]
    for _ in range(1, nscales):
        h, w = sizes[-1]
        # Python's round is half-to-even like OpenCV's cvRound
        nh, nw = round(h * scale_step), round(w * scale_step)
        if nh < MIN_LEVEL_SIZE or nw < MIN_LEVEL_SIZE:
            break
        sizes.append((nh, nw))
    return sizes


def _linear_matrix(src: int, dst: int, scale: float, device: torch.device) -> torch.Tensor:
    """[dst, src] float32 interpolation weights of OpenCV INTER_LINEAR: source x = (d + 0.5) * scale - 0.5,
    clamped to [0, src - 1]."""
    x = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32).astype(np.float64)
    x = np.clip(x, 0, src - 1)
    x0 = np.floor(x).astype(np.int64)
    frac = x - x0
    x1 = np.minimum(x0 + 1, src - 1)
    m = np.zeros((dst, src), np.float64)
    rows = np.arange(dst)
    np.add.at(m, (rows, x0), 1 - frac)
    np.add.at(m, (rows, x1), frac)
    return torch.from_numpy(m.astype(np.float32)).to(device)


def resize_linear(
    x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float] | None = None
) -> torch.Tensor:
    """[..., H, W] float -> [..., h, w] by OpenCV's INTER_LINEAR ``resize`` (no anti-aliasing).

    scale: source pixels per output pixel (y, x); None = H / h, W / w (``resize`` given a size). OpenCV's
    ``resize(src, Size(), f, f)`` maps with exactly 1 / f, not with the ratio of the rounded sizes.
    """
    h, w = size
    sy, sx = scale if scale is not None else (x.shape[-2] / h, x.shape[-1] / w)
    my = _linear_matrix(x.shape[-2], h, sy, x.device)
    mx = _linear_matrix(x.shape[-1], w, sx, x.device)
    return my @ x @ mx.T


def centered_gradient(img: torch.Tensor) -> torch.Tensor:
    """[N, H, W] -> [N, 2, H, W] (d/dx, d/dy): central differences / 2 inside, half the one-sided difference on
    the border (OpenCV's ``centeredGradient`` in tvl1flow.cpp)."""
    padded_x = F.pad(img, (1, 1), mode="replicate")
    dx = 0.5 * (padded_x[..., 2:] - padded_x[..., :-2])
    padded_y = F.pad(img.unsqueeze(1), (0, 0, 1, 1), mode="replicate").squeeze(1)
    dy = 0.5 * (padded_y[..., 2:, :] - padded_y[..., :-2, :])
    return torch.stack((dx, dy), 1)


def warp_bicubic(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """img [N, C, H, W] sampled at (x + flow_x, y + flow_y) -> [N, C, H, W]; flow [N, 2, H, W] in pixels.

    As OpenCV's ``remap(INTER_CUBIC, BORDER_CONSTANT 0)``: Keys cubic with A = -0.75, taps outside the image
    count as 0. OpenCV 5 samples at the exact float coordinates (checked: within 2e-3 grey levels of
    ``cv2.remap``); OpenCV 4 rounded them to 1/32 px first.
    """
    n, _, h, w = img.shape
    ys = torch.arange(h, device=img.device, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, device=img.device, dtype=torch.float32).view(1, 1, w)
    mx = xs + flow[:, 0]
    my = ys + flow[:, 1]
    grid = torch.stack((mx * (2.0 / (w - 1)) - 1.0, my * (2.0 / (h - 1)) - 1.0), -1)
    return F.grid_sample(img, grid, mode="bicubic", padding_mode="zeros", align_corners=True)


def _batcher(n: int) -> list[tuple[int, int]]:
    """Comparators (a, b), a < b, of Batcher's odd-even merge sort of n wires (the network for the next power
    of two without the comparators that touch the absent, +inf, wires)."""
    size = 1
    while size < n:
        size *= 2
    net = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        net.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return net


MedianNetwork = tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int, bool, bool], ...], int]


def median_network(ksize: int) -> MedianNetwork:
    """The min / max steps of a ksize x ksize median (ksize odd): (column_sort, window_steps, out_wire).

    1. column_sort sorts each pixel's column of ksize values, once per pixel (windows side by side share it).
    2. A window then holds ksize sorted columns: wire r * ksize + c is rank r of column c. window_steps sort
       every rank across the columns (after which rows and columns are both sorted), then select among the
       wires that can still be the median: with rows and columns sorted, (r, c) is at least (r+1)(c+1)
       values and at most (k-r)(k-c) values from the bottom, which rules out all but 13 of 25 (5x5).
       Each step is (a, b, min_needed, max_needed): wire a gets min, wire b max, each only where a later
       step or the result reads it (backward pruning). The median ends on out_wire.

    5x5: 9 column comparators + 138 min / max operations per pixel, against 202 for a pruned network on
    the 25 values: 10.1 against 24.5 ms per call compiled on the CPU (bench flow --profile records in
    benchmarks/results/flow_torch_cpu.json); exact (tests compare with cv2.medianBlur).
    """
    if ksize in _NETWORKS:  # a plain dict, not functools.cache, which torch.compile warns about
        return _NETWORKS[ksize]
    k, m = ksize, ksize * ksize // 2
    rows = [(r * k + a, r * k + b) for r in range(k) for a, b in _batcher(k)]
    below = [(r, c) for r in range(k) for c in range(k) if (k - r) * (k - c) > k * k - m]
    cands = [
        r * k + c for r in range(k) for c in range(k) if (r, c) not in below and (r + 1) * (c + 1) <= m + 1
    ]
    select = [(cands[a], cands[b]) for a, b in _batcher(len(cands))]
    out = cands[m - len(below)]
    needed, steps = {out}, []
    for a, b in reversed(rows + select):
        if a in needed or b in needed:
            steps.append((a, b, a in needed, b in needed))
            needed |= {a, b}
    _NETWORKS[ksize] = (tuple(_batcher(k)), tuple(reversed(steps)), out)
    return _NETWORKS[ksize]


def median_blur(x: torch.Tensor, ksize: int = 5) -> torch.Tensor:
    """[..., H, W] -> [..., H, W]: median of each ksize x ksize window, border replicated (``cv2.medianBlur``).

    Elementwise min / max over shifted images (:func:`median_network`): under ``torch.compile`` it fuses into
    a couple of passes, where sorting unfolded windows does not.
    """
    r = ksize // 2
    h, w = x.shape[-2:]
    flat = x.reshape(-1, 1, h, w)
    padded = F.pad(flat, (r, r, r, r), mode="replicate")
    column_sort, window_steps, out = median_network(ksize)
    col = [padded[..., dy : dy + h, :] for dy in range(ksize)]
    for a, b in column_sort:
        col[a], col[b] = torch.minimum(col[a], col[b]), torch.maximum(col[a], col[b])
    v: list[torch.Tensor | None] = [col[i][..., j : j + w] for i in range(ksize) for j in range(ksize)]
    for a, b, need_min, need_max in window_steps:
        lo = torch.minimum(v[a], v[b]) if need_min else None
        hi = torch.maximum(v[a], v[b]) if need_max else None
        v[a], v[b] = lo, hi
    return v[out].reshape(x.shape)


def median_blur_sort(x: torch.Tensor, ksize: int = 5) -> torch.Tensor:
    """The same as :func:`median_blur` by sorting unfolded windows: ~4x faster than the network in eager mode,
    not fusable by ``torch.compile``. [..., H, W] -> [..., H, W]."""
    r = ksize // 2
    h, w = x.shape[-2:]
    padded = F.pad(x.reshape(-1, 1, h, w), (r, r, r, r), mode="replicate")
    windows = padded.unfold(2, ksize, 1).unfold(3, ksize, 1)  # [B, 1, H, W, k, k], a view
    return windows.reshape(*windows.shape[:4], ksize * ksize).median(-1).values.reshape(x.shape)


def forward_gradient(u: torch.Tensor) -> torch.Tensor:
    """[..., H, W] -> [..., 2, H, W] (d/dx, d/dy): forward differences, 0 on the last column / row."""
    gx = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1))
    gy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return torch.stack((gx, gy), -3)


def divergence(p: torch.Tensor) -> torch.Tensor:
    """[..., 2, H, W] (x, y components) -> [..., H, W]: backward differences, the negative adjoint of
    :func:`forward_gradient` (OpenCV's ``divergence``: the missing neighbour before row / column 0 is 0)."""
    px, py = p[..., 0, :, :], p[..., 1, :, :]
    return px - F.pad(px[..., :, :-1], (1, 0)) + py - F.pad(py[..., :-1, :], (0, 0, 1, 0))


def tv_step(
    u: torch.Tensor,
    p: torch.Tensor,
    iw: torch.Tensor,
    rho_c: torch.Tensor,
    lt_grad: torch.Tensor,
    inv_grad: torch.Tensor,
    lt: float,
    theta: float,
    taut: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One inner iteration (estimateV, divergence, estimateU, forwardGradient, estimateDualVariables).

    u [N, 2, H, W] flow; p [N, 2, 2, H, W] dual variables (flow component, x/y); iw [N, 2, H, W] warped
    gradient of I1; rho_c, lt_grad (= lambda theta |grad|^2), inv_grad (1 / |grad|^2, 0 where
    |grad|^2 <= FLT_EPSILON) [N, H, W]. Returns (u', p', error [N]), error = sum of squared changes of u.
    """
    rho = rho_c + (iw * u).sum(1)
    # OpenCV's three cases of the thresholding operator; the middle one is -rho / |grad|^2
    fi = torch.where(rho < -lt_grad, lt, torch.where(rho > lt_grad, -lt, -rho * inv_grad))
    u_new = u + fi.unsqueeze(1) * iw + theta * divergence(p)
    error = (u_new - u).square().sum((1, 2, 3))
    g = forward_gradient(u_new)
    norm = 1.0 + taut * torch.linalg.vector_norm(g, dim=2, keepdim=True)
    return u_new, (p + taut * g) / norm, error


# ------------------------------------------------------------------------------------------ the method
def masked_tv_step(
    u: torch.Tensor,
    p: torch.Tensor,
    active: torch.Tensor,
    iw: torch.Tensor,
    rho_c: torch.Tensor,
    lt_grad: torch.Tensor,
    inv_grad: torch.Tensor,
    eps2: float,
    lt: float,
    theta: float,
    taut: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`tv_step` for the pairs where active [N] (bool) is set; the others keep u and p.

    Returns (u', p', active'): a pair goes inactive once its step changed u by <= eps2 * H * W in squared
    sum (OpenCV's stopping rule, epsilon^2 times the level's area).
    """
    u_new, p_new, error = tv_step(u, p, iw, rho_c, lt_grad, inv_grad, lt, theta, taut)
    keep = active.view(-1, 1, 1, 1)
    u = torch.where(keep, u_new, u)
    p = torch.where(keep.unsqueeze(1), p_new, p)
    return u, p, active & (error > eps2 * u.shape[-2] * u.shape[-1])


def masked_median(u: torch.Tensor, active: torch.Tensor, ksize: int) -> torch.Tensor:
    """u [N, C, H, W] -> :func:`median_blur` of u for the pairs where active [N] is set, u elsewhere."""
    return torch.where(active.view(-1, 1, 1, 1), median_blur(u, ksize), u)


def _masked_median_eager(u: torch.Tensor, active: torch.Tensor, ksize: int) -> torch.Tensor:
    return torch.where(active.view(-1, 1, 1, 1), median_blur_sort(u, ksize), u)


@functools.cache
def _compiled(fn: Callable) -> Callable:
    """fn through torch.compile with dynamic shapes: one graph for every pyramid level and batch size (the
    default recompile limit is 8). Duck sizing is off while it runs: it would tie a batch of 2 to the
    flow's two components and recompile for every other batch size."""
    compiled = torch.compile(fn, dynamic=True)

    @functools.wraps(fn)
    def run(*args):
        with torch.fx.experimental._config.patch(use_duck_shape=False):
            return compiled(*args)

    return run


def _one_level(
    i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor, prm: TVL1Params, compile: bool, compact: bool
) -> torch.Tensor:
    """procOneScale: i0, i1 [N, H, W] float32, u [N, 2, H, W] initial flow -> refined flow [N, 2, H, W]."""
    n, h, w = i0.shape
    lt, theta, taut = prm.lambda_ * prm.theta, prm.theta, prm.tau / prm.theta
    eps2 = prm.epsilon * prm.epsilon
    if prm.median_filtering > 1:
        median_network(prm.median_filtering)  # a cached constant before torch.compile traces the median
    step = _compiled(masked_tv_step) if compile else masked_tv_step
    median = _compiled(masked_median) if compile else _masked_median_eager
    # Asking how many pairs are still active waits for the device; on a GPU that stalls the launch queue,
    # so it is asked every few steps there. Inactive pairs are frozen, so this changes time, not results.
    check_every = 1 if u.device.type == "cpu" else _GPU_CHECK_EVERY
    i1_and_grad = torch.cat((i1.unsqueeze(1), centered_gradient(i1)), 1)  # [N, 3, H, W]
    p = torch.zeros(n, 2, 2, h, w, dtype=u.dtype, device=u.device)
    for _ in range(prm.warps):
        warped = warp_bicubic(i1_and_grad, u)
        # contiguous like its compacted copies (_Run.compact): a strided slice would compile a second graph
        i1w, iw = warped[:, 0], warped[:, 1:].contiguous()
        grad = iw.square().sum(1)
        rho_c = i1w - (iw * u).sum(1) - i0
        lt_grad = lt * grad
        inv_grad = torch.where(grad > _FLT_EPSILON, 1.0 / grad.clamp_min(_FLT_EPSILON), 0.0)
        # Each pair stops (for this warp) on its own, as it would alone; see masked_tv_step. The run holds
        # the batch rows `rows` (all at first); see _Run.compact for why it shrinks.
        run = _Run(torch.arange(n, device=u.device), u, p, torch.ones(n, dtype=torch.bool, device=u.device),
                   (iw, rho_c, lt_grad, inv_grad))  # fmt: skip
        for _ in range(prm.outer_iterations):
            if prm.median_filtering > 1:
                run.u = median(run.u, run.active, prm.median_filtering)
            for k in range(prm.inner_iterations):
                run.u, run.p, run.active = step(run.u, run.p, run.active, *run.data, eps2, lt, theta, taut)
                if (k + 1) % check_every == 0:
                    left = int(run.active.sum())
                    if left == 0:
                        break
                    if compact and len(run.rows) > 2 and left <= _COMPACT_AT * len(run.rows):
                        u, p = run.store(u, p)
                        run = run.compact()
            if not bool(run.active.any()):
                break
        u, p = run.store(u, p)
    return u


@dataclass
class _Run:
    """The batch rows a warp's inner loop still runs: rows [R] (indices into the level's batch), their flow u
    [R, 2, H, W], dual variables p [R, 2, 2, H, W], active [R] mask and per-pixel data (iw, rho_c, lt_grad,
    inv_grad) of the warp."""

    rows: torch.Tensor
    u: torch.Tensor
    p: torch.Tensor
    active: torch.Tensor
    data: tuple[torch.Tensor, ...]

    def store(self, u: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The level's u [N, 2, H, W] and p [N, 2, 2, H, W] with this run's rows written in (new tensors)."""
        if len(self.rows) == u.shape[0]:
            return self.u, self.p
        return u.index_copy(0, self.rows, self.u), p.index_copy(0, self.rows, self.p)

    def compact(self) -> _Run:
        """The run of the still-active rows only.

        A batch's step costs the same for a pair that has stopped (it is frozen by the mask, but computed), so
        a batch would otherwise run as long as its slowest pair at full size: on the synthetic set at 320x240
        only 59 % of a 64-pair batch's step work is for active pairs (benchmarks/results/flow_compact_cpu.json).
        At least two rows are kept (a stopped one fills in): torch.compile would specialise a batch of one.
        """
        keep = torch.nonzero(self.active).squeeze(1)
        if len(keep) < 2:
            stopped = torch.nonzero(~self.active).squeeze(1)
            keep = torch.cat((keep, stopped[: 2 - len(keep)])).sort().values
        return _Run(
            self.rows[keep],
            self.u[keep],
            self.p[keep],
            self.active[keep],
            tuple(x[keep] for x in self.data),
        )


def tvl1(
    i0: torch.Tensor,
    i1: torch.Tensor,
    params: TVL1Params | None = None,
    compile: bool = False,
    compact: bool = True,
) -> torch.Tensor:
    """TV-L1 flow from I0 to I1 for a batch of grey pairs.

    i0, i1: [N, H, W] (uint8, or float in [0, 255]) on any device, H, W >= 16 -> [N, H, W, 2] float32 flow on
    that device, x right then y down, in pixels: I0(x) ~ I1(x + flow(x)).

    compile: run the inner iteration and the median through ``torch.compile`` (one fused kernel per step
    instead of ~25 elementwise launches: on the CPU the step measured 17x, a whole pass 9x faster; Triton on a GPU);
    the first call of a process compiles for tens of seconds (cached on disk for later processes). Results
    agree with the eager path to float rounding.

    compact: once a quarter of a warp's pairs have stopped, run only the others (see ``_Run.compact``); the
    flow is the same either way (a stopped pair is frozen), only the work differs.
    """
    prm = params or TVL1Params()
    prm.validate()
    if i0.shape != i1.shape or i0.dim() != 3:
        raise ValueError(f"i0 and i1 must both be [N, H, W], got {list(i0.shape)} and {list(i1.shape)}")
    n, h, w = i0.shape
    if min(h, w) < MIN_LEVEL_SIZE:
        raise ValueError(f"frames of {h}x{w} are too small for TV-L1 (need >= {MIN_LEVEL_SIZE} px)")
    if compile and n == 1:
        # torch.compile specialises size 1 (a second compile of tens of seconds); the pair twice costs less
        return tvl1(i0.expand(2, h, w), i1.expand(2, h, w), prm, compile, compact)[:1]
    sizes = pyramid_sizes(h, w, prm.nscales, prm.scale_step)
    step = 1.0 / prm.scale_step
    levels = [(i0.to(torch.float32), i1.to(torch.float32))]
    for size in sizes[1:]:
        levels.append(tuple(resize_linear(x, size, (step, step)) for x in levels[-1]))
    u = torch.zeros(n, 2, *sizes[-1], dtype=torch.float32, device=i0.device)
    for s in range(len(sizes) - 1, -1, -1):
        u = _one_level(*levels[s], u, prm, compile, compact)
        if s > 0:
            u = resize_linear(u, sizes[s - 1]) * step
    return u.permute(0, 2, 3, 1).contiguous()


def default_device() -> str:
    """The default device: cuda when a GPU is visible, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_batch(device: str | torch.device) -> int:
    """Pairs per call: 8 on the CPU, where a batch that outgrows the caches is slower per pair (1 thread,
    compiled, before the separable median: 0.75x / 0.60x OpenCV's speed at 128x171 / 240x320 with 8 pairs,
    0.25x / 0.34x with 64; benchmarks/results/flow_torch_cpu.json); 256 on a GPU, which needs many pairs per
    launch to fill."""
    return 8 if torch.device(device).type == "cpu" else 256


def compute_flow_torch(
    frames: np.ndarray,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    params: TVL1Params | None = None,
    compile: bool = False,
) -> np.ndarray:
    """Drop-in for ``data_prep.flow.compute_flow(frames, "tvl1")`` computed by :func:`tvl1` on `device`.

    frames: [T, H, W, 3] uint8 RGB, T >= 2 -> [T, H, W, 2] float32 numpy, flow[i] = displacement i -> i+1,
    flow[T-1] = flow[T-2]. Pairs are processed batch_size at a time (default :func:`default_batch`).
    """
    from data_prep.frames import check_frames

    check_frames(frames)
    dev = torch.device(device)
    batch_size = batch_size or default_batch(dev)
    grey = rgb_to_grey(torch.from_numpy(np.ascontiguousarray(frames)).to(dev))
    t = grey.shape[0]
    out = np.empty((t, *grey.shape[1:], 2), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, t - 1, batch_size):
            stop = min(start + batch_size, t - 1)
            out[start:stop] = (
                tvl1(grey[start:stop], grey[start + 1 : stop + 1], params, compile).cpu().numpy()
            )
    out[-1] = out[-2]
    return out


__all__ = [
    "MIN_LEVEL_SIZE",
    "TVL1Params",
    "centered_gradient",
    "compute_flow_torch",
    "default_batch",
    "default_device",
    "divergence",
    "forward_gradient",
    "median_blur",
    "median_blur_sort",
    "median_network",
    "pyramid_sizes",
    "resize_linear",
    "rgb_to_grey",
    "tv_step",
    "tvl1",
    "warp_bicubic",
]
