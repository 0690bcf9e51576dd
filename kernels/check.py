"""Triton kernels vs their PyTorch references on one device: ``python -m kernels.check``.

    python -m kernels.check [--device cuda|cpu] [--sizes small|paper|both] [--json OUT]

Runs every entry point of ``kernels`` with ``backend="triton"`` and the reference (``kernels.reference``) on the
same inputs and compares them with the tolerances of ``tests/kernels`` (defined here, imported by the tests).
``--device cuda`` checks the *compiled* kernels (TRITON_INTERPRET must be unset: the variable is read when the
``@triton.jit`` functions are defined, so one process runs either compiled or interpreted kernels, never both);
``--device cpu`` runs the Triton interpreter (TRITON_INTERPRET=1), which is what the test suite does.
``small`` = the test shapes (not multiples of the block sizes); ``paper`` = ViCC's shapes (K=300, D=128, B=48 per
view, V=2 and 4, without and with the 1920-row queue per view). Prints one line per comparison and a summary.
Exit status: 0 all ok, 1 any comparison failed (or raised), 2 bad usage. ``--json OUT`` appends one record
(device, versions, every comparison) to the JSON list in OUT atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# ---- tolerances: the single source of tests/kernels/test_triton.py and of this check (kernels/README.md) ----
Q_ATOL = 2e-5  # Q entries are <= 1; fp32 sums inside both backends
Q_ATOL_EXTREME = 1e-4  # logits up to |s|/eps ~ 2e4: x + a + b cancels large fp32 numbers (ulp 2e-3)
Q_ATOL_16BIT_Z = 1e-4  # fused scoring from bf16/fp16 z, C: exact products summed in another order
ROW_SUM_ATOL = 1e-3  # rows of Q sum to 1 (extreme scores: fp32's relative error times |x| ~ 3000)
PRIOR_EQ_ATOL = 1e-6  # sinkhorn_prior(lambda2=0) vs sinkhorn(eps=lambda1), both Triton
SCORES_ATOL = SCORES_RTOL = 1e-5
LOSS_ATOL = LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4
GRAD_ATOL_FP32 = 1e-7
GRAD_ULPS_16BIT = 2**-7  # one bf16 ulp of the largest entry: both backends round the same fp32 value

EPS, TAU, N_ITERS = 0.05, 0.1, 3
LAMBDA1, LAMBDA2 = 0.02, 0.03
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def grad_atol(dtype: torch.dtype, grad_ref: Tensor) -> float:
    """Absolute gradient tolerance: 1e-7 in fp32, one 16-bit ulp (2^-7) of the largest reference entry else."""
    if dtype == torch.float32:
        return GRAD_ATOL_FP32
    return float(grad_ref.float().abs().max()) * GRAD_ULPS_16BIT


# ---- the pure comparison ----
@dataclass(frozen=True)
class Result:
    """One comparison: ``ok`` iff every |got - want| <= atol + rtol * |want| (torch.testing.assert_close's rule,
    NaN never equal); ``error`` is set (and ok False) when the check raised instead."""

    name: str
    dtype: str
    shape: str
    max_abs_err: float
    atol: float
    rtol: float
    ok: bool
    error: str = ""

    def line(self) -> str:
        tol = f"atol {self.atol:.1e}" + (f" rtol {self.rtol:.1e}" if self.rtol else "")
        status = "ok" if self.ok else "FAIL"
        err = f"max abs err {self.max_abs_err:.3e}" if not self.error else f"error: {self.error}"
        return f"{status:4}  {self.name:44} {self.dtype:9} {self.shape:30} {err:24}  {tol}"


def compare(
    name: str, dtype: str, shape: str, got: Tensor, want: Tensor, atol: float, rtol: float = 0.0
) -> Result:
    """Compare ``got`` with ``want`` (any dtype, compared in fp64 on the CPU). A shape mismatch fails."""
    if tuple(got.shape) != tuple(want.shape):
        return Result(
            name, dtype, shape, math.inf, atol, rtol, False,
            f"shape {tuple(got.shape)} != reference {tuple(want.shape)}",
        )  # fmt: skip
    g = got.detach().double().cpu()
    w = want.detach().double().cpu()
    diff = (g - w).abs()
    bad = ~(diff <= atol + rtol * w.abs())  # NaN anywhere -> bad
    max_err = float(diff.max()) if diff.numel() else 0.0
    if diff.numel() and bool(torch.isnan(diff).any()):
        max_err = math.nan
    return Result(name, dtype, shape, max_err, atol, rtol, not bool(bad.any()))


def failed(results: Sequence[Result]) -> list[Result]:
    return [r for r in results if not r.ok]


def exit_code(results: Sequence[Result]) -> int:
    """0 when every comparison passed (and there was at least one), else 1."""
    return 1 if failed(results) or not results else 0


# ---- inputs ----
def unit(*shape: int, seed: int, dtype: torch.dtype, device: str) -> Tensor:
    """Random L2-normalised rows (last dim), made on the CPU so every device gets the same numbers."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1).to(dtype).to(device)


def randn(*shape: int, seed: int, device: str, scale: float = 1.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device)


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _shape(**dims: int) -> str:
    return " ".join(f"{k}={v}" for k, v in dims.items())


@dataclass(frozen=True)
class Sizes:
    """One shape set: V views, N rows to assign (n_batch batch rows first, then queue rows), K, D, B (loss)."""

    tag: str
    V: int
    N: int
    n_batch: int
    K: int
    D: int
    loss_B: int
    queue_L: int
    enqueue_B: int


SMALL = [Sizes("small", V=2, N=70, n_batch=30, K=37, D=20, loss_B=19, queue_L=7, enqueue_B=5)]
PAPER = [
    Sizes(
        f"paper V={v} queue={q}",
        V=v,
        N=48 + q,
        n_batch=48,
        K=300,
        D=128,
        loss_B=48,
        queue_L=1920,
        enqueue_B=48,
    )
    for v in (2, 4)
    for q in (0, 1920)
]


# ---- the checks: each a function of (device, sizes) returning the comparisons it made ----
Check = Callable[[str, Sizes], list[Result]]


def check_prototype_scores(device: str, s: Sizes) -> list[Result]:
    import kernels
    from kernels import reference as R

    out = []
    shape = _shape(V=s.V, N=s.N, K=s.K, D=s.D)
    for dt in DTYPES:
        z, c = (
            unit(s.V, s.N, s.D, seed=1, dtype=dt, device=device),
            unit(s.K, s.D, seed=2, dtype=dt, device=device),
        )
        got = kernels.prototype_scores(z, c, backend="triton")
        want = R.prototype_scores(z, c)
        out.append(compare("prototype_scores", _dt(dt), shape, got, want, SCORES_ATOL, SCORES_RTOL))
    return out


def _scores(device: str, s: Sizes, seed: int) -> Tensor:
    from kernels import reference as R

    z = unit(s.V, s.N, s.D, seed=seed, dtype=torch.float32, device=device)
    return R.prototype_scores(z, unit(s.K, s.D, seed=seed + 1, dtype=torch.float32, device=device))


def check_sinkhorn(device: str, s: Sizes) -> list[Result]:
    from kernels import reference as R
    from kernels import sinkhorn_triton

    out = []
    shape = _shape(V=s.V, N=s.N, K=s.K, n_batch=s.n_batch)
    scores = _scores(device, s, seed=3)
    for fused in (True, False):
        for dt in DTYPES:
            x = scores.to(dt)
            got = sinkhorn_triton.sinkhorn(x, 1 / EPS, None, 0.0, N_ITERS, s.n_batch, None, fused=fused)
            want = R.sinkhorn(x, EPS, N_ITERS, s.n_batch)
            name = f"sinkhorn {'fused' if fused else 'unfused'}"
            out.append(compare(name, _dt(dt), shape, got, want, Q_ATOL))
    return out


def check_sinkhorn_extreme(device: str, s: Sizes) -> list[Result]:
    """|s|/eps up to ~1500 (exp() overflows in SwAV's form) and a prototype no sample is near."""
    from kernels import reference as R
    from kernels import sinkhorn_triton

    out = []
    shape = _shape(V=s.V, N=s.N, K=s.K, n_batch=s.n_batch)
    scores = randn(s.V, s.N, s.K, seed=7, device=device, scale=20.0)
    scores[..., 5] = -1e3
    for fused in (True, False):
        for dt in (torch.float32, torch.bfloat16):
            x = scores.to(dt)
            got = sinkhorn_triton.sinkhorn(x, 1 / EPS, None, 0.0, N_ITERS, s.n_batch, None, fused=fused)
            want = R.sinkhorn(x, EPS, N_ITERS, s.n_batch)
            name = f"sinkhorn {'fused' if fused else 'unfused'} extreme"
            out.append(compare(name, _dt(dt), shape, got, want, Q_ATOL_EXTREME))
            ones = torch.ones(got.shape[:-1], device=got.device)
            out.append(compare(name + " row sums", _dt(dt), shape, got.sum(-1), ones, ROW_SUM_ATOL))
    return out


def check_assign(device: str, s: Sizes) -> list[Result]:
    from kernels import reference as R
    from kernels import sinkhorn_triton

    out = []
    shape = _shape(V=s.V, N=s.N, K=s.K, D=s.D, n_batch=s.n_batch)
    for fused in (True, False):
        for dt in DTYPES:
            z = unit(s.V, s.N, s.D, seed=5, dtype=dt, device=device)
            c = unit(s.K, s.D, seed=6, dtype=dt, device=device)
            got = sinkhorn_triton.assign(z, c, 1 / EPS, N_ITERS, s.n_batch, None, fused=fused)
            want = R.sinkhorn(R.prototype_scores(z, c), EPS, N_ITERS, s.n_batch)
            atol = Q_ATOL if dt == torch.float32 else Q_ATOL_16BIT_Z
            out.append(compare(f"assign {'fused' if fused else 'unfused'}", _dt(dt), shape, got, want, atol))
    return out


def check_sinkhorn_prior(device: str, s: Sizes) -> list[Result]:
    """The dispatcher's plan (fused for N <= 256 in one process, passes above), then both plans explicitly
    (the same scale and prior coefficient kernels.sinkhorn_prior passes), then lambda2 = 0 == sinkhorn."""
    import kernels
    from kernels import reference as R
    from kernels import sinkhorn_triton

    out = []
    shape = _shape(V=s.V, N=s.N, K=s.K, n_batch=s.n_batch)
    scores = _scores(device, s, seed=10)
    prior = R.sinkhorn(_scores(device, s, seed=12), EPS, N_ITERS, s.N)
    prior[0, 0, :5] = 0.0  # zero prior: clamped, not -inf
    want = R.sinkhorn_prior(scores, prior, LAMBDA1, LAMBDA2, N_ITERS, s.n_batch)
    got = kernels.sinkhorn_prior(scores, prior, LAMBDA1, LAMBDA2, N_ITERS, s.n_batch, backend="triton")
    out.append(compare("sinkhorn_prior", "float32", shape, got, want, Q_ATOL))
    inv = 1.0 / (LAMBDA1 + LAMBDA2)
    for fused in (True, False):
        got = sinkhorn_triton.sinkhorn(
            scores, inv, prior, LAMBDA2 * inv, N_ITERS, s.n_batch, None, fused=fused
        )
        name = f"sinkhorn_prior {'fused' if fused else 'unfused'}"
        out.append(compare(name, "float32", shape, got, want, Q_ATOL))
    q0 = kernels.sinkhorn_prior(scores, prior, LAMBDA1, 0.0, N_ITERS, s.n_batch, backend="triton")
    plain = kernels.sinkhorn(scores, LAMBDA1, N_ITERS, s.n_batch, backend="triton")
    out.append(compare("sinkhorn_prior lambda2=0 == sinkhorn", "float32", shape, q0, plain, PRIOR_EQ_ATOL))
    return out


MASKS = {"vicc": 4, "swav": 2}  # ViCC cross-stream: 4 views, ~eye(4); SwAV: 2 views, ~eye(2)


def check_swapped_loss(device: str, s: Sizes) -> list[Result]:
    """Forward and the gradient w.r.t. P (upstream gradient 2.5), ViCC and SwAV masks, fp32/bf16/fp16 P."""
    import kernels
    from kernels import reference as R

    out = []
    for mask_name, v in MASKS.items():
        mask = ~torch.eye(v, dtype=torch.bool)  # on the CPU, as the trainer passes it
        shape = _shape(V=v, B=s.loss_B, K=s.K)
        for dt in DTYPES:
            P = randn(v, s.loss_B, s.K, seed=15, device=device, scale=3.0).to(dt).requires_grad_()
            Q = R.sinkhorn(randn(v, s.loss_B, s.K, seed=16, device=device), EPS, N_ITERS, s.loss_B)
            loss = kernels.swapped_loss(P, Q, mask, TAU, backend="triton")
            ref = R.swapped_loss(P, Q, mask, TAU)
            out.append(compare(f"swapped_loss {mask_name}", _dt(dt), shape, loss, ref, LOSS_ATOL, LOSS_RTOL))
            (grad,) = torch.autograd.grad(loss * 2.5, P)
            (grad_ref,) = torch.autograd.grad(ref * 2.5, P)
            name = f"swapped_loss {mask_name} grad"
            if grad.dtype != dt:
                out.append(
                    Result(name, _dt(dt), shape, math.nan, 0.0, 0.0, False, f"grad dtype {grad.dtype}")
                )
                continue
            out.append(compare(name, _dt(dt), shape, grad, grad_ref, grad_atol(dt, grad_ref), GRAD_RTOL))
    return out


def check_enqueue(device: str, s: Sizes) -> list[Result]:
    """Three enqueues starting at most 4 rows before the end of the queue, so the ring wraps; exact."""
    import kernels
    from kernels import reference as R

    out = []
    L, B = s.queue_L, s.enqueue_B
    shape = _shape(V=s.V, L=L, B=B, D=s.D)
    for dt in DTYPES:
        q_t = torch.zeros(s.V, L, s.D, dtype=dt, device=device)
        q_r = q_t.clone()
        z = unit(s.V, B, s.D, seed=17, dtype=torch.float32, device=device)
        ptr_t = ptr_r = L - min(4, B - 1) if L > B else 0
        for _ in range(3):
            ptr_t = kernels.enqueue(q_t, z, ptr_t, backend="triton")
            ptr_r = R.enqueue(q_r, z, ptr_r)
            z = z + 1
        name = "enqueue wrap"
        if ptr_t != ptr_r:
            out.append(Result(name, _dt(dt), shape, math.nan, 0.0, 0.0, False, f"ptr {ptr_t} != {ptr_r}"))
            continue
        out.append(compare(name, _dt(dt), shape, q_t, q_r, 0.0))
    return out


def check_non_contiguous(device: str, s: Sizes) -> list[Result]:
    """Permuted / transposed inputs: loss + gradient and Sinkhorn."""
    import kernels
    from kernels import reference as R

    out = []
    v, B, K = 3, s.loss_B, s.K
    P = randn(B, v, K, seed=18, device=device).permute(1, 0, 2).requires_grad_()
    Q = R.sinkhorn(randn(v, K, B, seed=19, device=device).transpose(1, 2), EPS, N_ITERS, B)
    mask = ~torch.eye(v, dtype=torch.bool)
    loss = kernels.swapped_loss(P, Q, mask, TAU, backend="triton")
    ref = R.swapped_loss(P, Q, mask, TAU)
    shape = _shape(V=v, B=B, K=K)
    out.append(compare("swapped_loss non-contiguous", "float32", shape, loss, ref, LOSS_ATOL, LOSS_RTOL))
    g, g_ref = torch.autograd.grad(loss, P)[0], torch.autograd.grad(ref, P)[0]
    out.append(
        compare("swapped_loss non-contiguous grad", "float32", shape, g, g_ref, GRAD_ATOL_FP32, GRAD_RTOL)
    )
    x = randn(K, s.N, seed=20, device=device).t()  # [N, K], column-major
    got = kernels.sinkhorn(x, EPS, N_ITERS, s.n_batch, backend="triton")
    want = R.sinkhorn(x, EPS, N_ITERS, s.n_batch)
    shape = _shape(N=s.N, K=K, n_batch=s.n_batch)
    out.append(compare("sinkhorn non-contiguous", "float32", shape, got, want, Q_ATOL))
    return out


CHECKS: dict[str, Check] = {
    "prototype_scores": check_prototype_scores,
    "sinkhorn": check_sinkhorn,
    "sinkhorn extreme": check_sinkhorn_extreme,
    "assign": check_assign,
    "sinkhorn_prior": check_sinkhorn_prior,
    "swapped_loss": check_swapped_loss,
    "enqueue": check_enqueue,
    "non-contiguous": check_non_contiguous,
}


def _paper_checks(s: Sizes) -> list[str]:
    """Paper shapes: scoring and the Sinkhorn path at every (V, queue); the loss (its own V=2 and V=4 masks) and
    the enqueue (into the 1920-row queue) once; the extreme-score / non-contiguous cases only at small shapes."""
    names = ["prototype_scores", "sinkhorn", "assign", "sinkhorn_prior"]
    if s.V == 4 and s.n_batch == s.N:  # V=4, no queue
        names += ["swapped_loss", "enqueue"]
    return names


def plan(sizes: str, only: str = "") -> list[tuple[str, Sizes]]:
    """(check name, shapes) in run order for --sizes small | paper | both; ``only``: names containing it."""
    out: list[tuple[str, Sizes]] = []
    if sizes in ("small", "both"):
        out += [(name, s) for s in SMALL for name in CHECKS]
    if sizes in ("paper", "both"):
        out += [(name, s) for s in PAPER for name in _paper_checks(s)]
    return [(name, s) for name, s in out if only in name]


def run_checks(device: str, sizes: str, only: str = "") -> Iterator[Result]:
    """Every comparison, in order; a check that raises becomes one failed Result carrying the exception."""
    for name, s in plan(sizes, only):
        try:
            results = CHECKS[name](device, s)
            if device == "cuda":
                torch.cuda.synchronize()  # an asynchronous kernel fault surfaces here, inside the try
        except Exception as exc:  # report every failing kernel, not only the first
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            results = [Result(f"{name} [{s.tag}]", "-", "-", math.nan, 0.0, 0.0, False, msg)]
        yield from results


# ---- environment, JSON ----
def usage_error(device: str, interpret: bool, cuda_available: bool, triton_ok: bool) -> str | None:
    """One-line reason why the check cannot run as asked, or None."""
    if not triton_ok:
        return "triton is not installed"
    if device == "cuda" and not cuda_available:
        return "--device cuda: torch.cuda.is_available() is False (no GPU); use --device cpu with TRITON_INTERPRET=1"
    if device == "cuda" and interpret:
        return "--device cuda checks the compiled kernels: unset TRITON_INTERPRET (it is 1)"
    if device == "cpu" and not interpret:
        return "--device cpu runs the Triton interpreter: set TRITON_INTERPRET=1 (e.g. TRITON_INTERPRET=1 python -m kernels.check --device cpu)"
    return None


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device == "cuda":
        env["cuda"] = torch.version.cuda
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()  # fmt: skip
    except Exception:
        env["git_commit"] = None
    return env


def _jsonable(r: Result) -> dict[str, Any]:
    d = asdict(r)
    if not math.isfinite(d["max_abs_err"]):
        d["max_abs_err"] = str(d["max_abs_err"])  # JSON has no NaN / inf
    return d


def append_json(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append ``record`` to the JSON list in ``path``: temp file beside it, fsync, os.replace (never half a
    file). Local so that kernels/ needs nothing from vicc_fast."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(p.read_text()) if p.exists() else []
    if not isinstance(records, list):
        records = [records]
    records.append(record)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(records, indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ---- CLI ----
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kernels.check",
        description="Triton kernels vs the PyTorch references (tolerances of tests/kernels).",
    )
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda if available, else cpu")
    p.add_argument(
        "--sizes",
        choices=("small", "paper", "both"),
        help="default: both on cuda, small on cpu (interpreter)",
    )
    p.add_argument(
        "-k", "--filter", default="", help=f"only the checks whose name contains this: {list(CHECKS)}"
    )
    p.add_argument("--json", metavar="OUT", help="append a record (device, versions, every check) to OUT")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse prints its one-line error; keep main's contract of returning
        return int(exc.code or 0)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    device = args.device or ("cuda" if torch.cuda.is_available() and not interpret else "cpu")
    sizes = args.sizes or ("both" if device == "cuda" else "small")
    try:
        import triton  # noqa: F401

        triton_ok = True
    except ImportError:
        triton_ok = False
    reason = usage_error(device, interpret, device == "cuda" and torch.cuda.is_available(), triton_ok)
    if not reason and not plan(sizes, args.filter):
        reason = f"--filter {args.filter!r} matches no check of {list(CHECKS)}"
    if reason:
        print(f"kernels.check: {reason}", file=sys.stderr)
        return 2
    env = environment(device)
    print(f"kernels.check on {env['device']}: torch {env['torch']}, triton {env['triton']}, sizes {sizes}")
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # the reference's fp32 matmuls in full fp32 (no TF32)
    results: list[Result] = []
    t0 = time.perf_counter()
    try:
        for r in run_checks(device, sizes, args.filter):
            print(r.line(), flush=True)
            results.append(r)
    finally:
        torch.set_float32_matmul_precision(precision)
    bad = failed(results)
    seconds = time.perf_counter() - t0
    print(f"{len(results) - len(bad)}/{len(results)} ok, {len(bad)} failed ({seconds:.1f} s)")
    for r in bad:
        print(f"FAILED: {r.name} {r.dtype} {r.shape}")
    if args.json:
        record = {
            **env,
            "sizes": sizes,
            "filter": args.filter,
            "seconds": round(seconds, 2),
            "failed": len(bad),
        }
        record["checks"] = [_jsonable(r) for r in results]
        append_json(args.json, record)
        print(f"appended to {args.json}")
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
