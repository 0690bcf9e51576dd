"""Loss head fwd+bwd time: Triton vs eager PyTorch vs torch.compile, at ViCC's shapes.

The head is everything between the projection head's output and the encoder's backward: prediction scores
P = z C^T (with gradient), the queue-augmented Sinkhorn targets Q (scores of the batch and the queue against the
prototypes, 3 log-domain iterations, batch rows only), the swapped-prediction loss, its backward into z and C,
and the ring-buffer enqueue. Shapes: B per view (per GPU) in 24..256, V = 2 (SwAV / single-stream) or 4 (ViCC
cross-stream, 12 pairs), queue 0 or 1920 rows per view, K = 300, D = 128.

- triton: kernels with backend="triton" (on CPU: the Triton *interpreter*, a correctness tool that is orders of
  magnitude slower than any compiled code; its CPU times say nothing about GPU speed. Only queue 0 runs there
  unless --triton-all).
- eager: kernels with backend="torch" (kernels/reference.py).
- compile: the same reference head under torch.compile (one compilation per shape, excluded from the timing).

Peak memory is the CUDA allocator's peak above the inputs, so it is only measured on a GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

K_DEFAULT = 300
D_DEFAULT = 128
EPS, TAU, ITERS = 0.05, 0.1, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto (cuda when available, else cpu)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="B=48 only (V=2 and 4, queue 0 and 1920), fewer repeats: a few minutes on CPU",
    )
    parser.add_argument(
        "--batch", type=int, nargs="+", default=None, help="B per view to time (default 24 48 128 256)"
    )
    parser.add_argument(
        "--impls",
        nargs="+",
        default=["triton", "eager", "compile"],
        choices=["triton", "eager", "compile"],
        help="implementations to time",
    )
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per case (0: 30 on GPU, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed runs per case (0: 10 GPU, 2 CPU)")
    parser.add_argument(
        "--triton-all",
        action="store_true",
        help="on CPU also run the Triton interpreter with the 1920-row queue (minutes per case)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("-K", "--prototypes", type=int, default=K_DEFAULT, help="number of prototypes K")
    parser.add_argument("-D", "--dim", type=int, default=D_DEFAULT, help="embedding size D")


def _head(backend: str) -> Callable[..., Any]:
    """One training step of the loss head with ``backend``; returns the loss (grads land in z.grad, C.grad).

    backend "compile_ref" calls kernels.reference directly (the function torch.compile traces)."""
    import torch

    import kernels
    from kernels import reference as R

    def step(z, C, queue, mask, use_queue: bool):
        B = z.shape[1]
        P = z @ C.t()  # [V, B, K], trainable scores
        zq = z.detach()
        if use_queue:
            zq = torch.cat([zq, queue], dim=1)  # batch rows first, then the queue
        if backend == "compile_ref":
            Q = R.sinkhorn(R.prototype_scores(zq, C.detach()), EPS, ITERS, B)
            loss = R.swapped_loss(P, Q, mask, TAU)
        else:
            Q = kernels.assign(zq, C.detach(), EPS, ITERS, B, backend=backend)
            loss = kernels.swapped_loss(P, Q, mask, TAU, backend=backend)
        loss.backward()
        if use_queue:
            if backend == "compile_ref":
                R.enqueue(queue, z.detach(), 0)
            else:
                kernels.enqueue(queue, z.detach(), 0, backend=backend)
        return loss

    return step


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_case(fn, args, device, warmup: int, repeats: int) -> dict[str, Any]:
    import torch

    z = args[0]
    C = args[1]

    def once():
        z.grad = None
        C.grad = None
        return fn(*args)

    for _ in range(warmup):
        once()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    loss = None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        loss = once()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    peak = None
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return {
        "ms_median": round(statistics.median(times), 4),
        "ms_min": round(min(times), 4),
        "peak_mem_mb": None if peak is None else round(peak, 3),
        "loss": float(loss.detach()),
        "grad_z_norm": float(z.grad.norm()),
    }


def _triton_in_interpreter(args: argparse.Namespace, device) -> dict[tuple[int, int, int], Any]:
    """Run the Triton cases in a child process started with TRITON_INTERPRET=1; {(V, B, queue): result}."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "triton.json")
        cmd = [sys.executable, "-m", "vicc_fast.bench", "kernels", "--impls", "triton", "--json", out]
        cmd += ["--device", str(device), "-K", str(args.prototypes), "-D", str(args.dim)]
        cmd += ["--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads)]
        cmd += ["--batch", *map(str, args.batch)] if args.batch else []
        cmd += ["--quick"] if args.quick else []
        cmd += ["--triton-all"] if args.triton_all else []
        subprocess.run(cmd, check=True, env={**os.environ, "TRITON_INTERPRET": "1"})
        with open(out) as f:
            cases = json.load(f)[-1]["result"]["cases"]
    return {(c["V"], c["B"], c["queue"]): c["triton"] for c in cases}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    dev_name = args.device
    if dev_name == "auto":
        dev_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev_name)
    on_cpu = device.type == "cpu"
    child_triton: dict[tuple[int, int, int], Any] = {}
    if on_cpu and "triton" in args.impls and os.environ.get("TRITON_INTERPRET") != "1":
        # The interpreter must be on before triton.language is first imported (its own helpers such as
        # tl.zeros are jit functions), which other modules of this process may already have done.
        child_triton = _triton_in_interpreter(args, device)
        args.impls = [i for i in args.impls if i != "triton"]
    batches = args.batch or ([48] if args.quick else [24, 48, 128, 256])
    repeats = args.repeats or (3 if args.quick and on_cpu else 5 if on_cpu else 30)
    warmup = args.warmup or (1 if on_cpu else 10)
    K, D = args.prototypes, args.dim
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)

    impls: dict[str, Callable[..., Any]] = {}
    if "triton" in args.impls:
        impls["triton"] = _head("triton")
    if "eager" in args.impls:
        impls["eager"] = _head("torch")
    if "compile" in args.impls:
        impls["compile"] = torch.compile(_head("compile_ref"), dynamic=False)

    g = torch.Generator().manual_seed(0)
    cases = []
    for V in (2, 4):
        mask = ~torch.eye(V, dtype=torch.bool)
        for L in (0, 1920):
            for B in batches:
                z0 = torch.nn.functional.normalize(torch.randn(V, B, D, generator=g), dim=-1)
                C0 = torch.nn.functional.normalize(torch.randn(K, D, generator=g), dim=-1)
                queue = torch.nn.functional.normalize(torch.randn(V, max(L, 1), D, generator=g), dim=-1)
                z = z0.to(device).requires_grad_()
                C = C0.to(device).requires_grad_()
                q = queue.to(device)
                row: dict[str, Any] = {"V": V, "B": B, "queue": L, "K": K, "D": D}
                if child_triton:
                    row["triton"] = child_triton.get((V, B, L), "missing")
                for name, fn in impls.items():
                    if name == "triton" and on_cpu and L > 0 and not args.triton_all:
                        row[name] = "skipped (interpreter; --triton-all)"
                        continue
                    t0 = time.perf_counter()
                    fn(z, C, q, mask, L > 0)  # compile / first launch, untimed
                    first_s = time.perf_counter() - t0
                    reps, warm = (1, 0) if name == "triton" and on_cpu else (repeats, warmup)
                    res = _time_case(
                        lambda *a, fn=fn, L=L: fn(*a, L > 0), (z, C, q, mask), device, warm, reps
                    )
                    res["first_call_s"] = round(first_s, 2)
                    row[name] = res
                    print(f"V={V} B={B} queue={L} {name}: {res['ms_median']:.3f} ms", flush=True)
                base = row.get("eager")
                if isinstance(base, dict):
                    for name in ("triton", "compile"):
                        other = row.get(name)
                        if isinstance(other, dict):
                            row[f"{name}_speedup_vs_eager"] = round(base["ms_median"] / other["ms_median"], 3)
                            row[f"{name}_loss_diff"] = abs(other["loss"] - base["loss"])
                cases.append(row)
    return {
        "device": str(device) if not on_cpu else f"cpu ({os.cpu_count()} cores)",
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "note": (
            "CPU: triton = Triton interpreter (correctness tool, not a speed figure); compare eager vs compile"
            if on_cpu
            else "GPU: fwd+bwd of the loss head incl. enqueue-free Sinkhorn targets"
        ),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "eps": EPS,
        "tau": TAU,
        "sinkhorn_iters": ITERS,
        "repeats": repeats,
        "warmup": warmup,
        "cases": cases,
    }
