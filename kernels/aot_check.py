"""Compile every Triton kernel ahead of time for a GPU target without a GPU (``python -m kernels.aot_check``).

The CPU tests run the kernels in the Triton interpreter, which accepts some programs the GPU compiler rejects
(and does not allocate registers); this lowers each kernel variant the wrappers can launch, with their block
sizes and warps, through TTIR -> TTGIR -> LLVM -> PTX -> cubin (Triton's bundled ptxas), and reports spills
(PTX local-memory traffic). Must run with TRITON_INTERPRET unset. Exit status 1 if any variant fails.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys

FLOAT_ARGS = {"scale", "prior_coef", "inv_tau", "norm"}


def _signature(fn, consts: dict, ptr_types: dict[str, str]) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = ptr_types.get(name, "*fp32")
        else:
            sig[name] = "fp32" if name in FLOAT_ARGS else "i32"
    return sig


def variants():
    """(name, jit function, constexprs, pointer dtypes, num_warps) for every launchable variant at K=300."""
    from kernels import loss_triton, queue_triton, scoring_triton, sinkhorn_triton

    block_n, block_k, block_d = sinkhorn_triton._blocks(300, 128)
    warps = sinkhorn_triton.NUM_WARPS
    for dt in ("*bf16", "*fp32"):
        dot = 0 if dt == "*bf16" else 2  # kernels.tiles.dot_mode on a GPU
        src = {"src_ptr": dt, "prior_ptr": dt, "c_ptr": dt}
        for from_z, prior in ((True, False), (False, False), (False, True)):
            base = dict(
                FROM_Z=from_z, HAS_PRIOR=prior, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, DOT=dot
            )
            tag = f"{dt[1:]} from_z={from_z} prior={prior}"
            yield f"sinkhorn fused {tag}", sinkhorn_triton._sinkhorn_fused_kernel, base, src, warps
            for first, combine, final in itertools.product((True, False), repeat=3):
                if first and final:
                    continue
                c = dict(base, FIRST=first, COMBINE=combine, FINAL=final, BLOCK_T=sinkhorn_triton.BLOCK_T)
                name = f"sinkhorn pass first={first} combine={combine} final={final} {tag}"
                yield name, sinkhorn_triton._sinkhorn_pass_kernel, c, src, warps
        ptrs = {"z_ptr": dt, "c_ptr": dt}
        c = dict(BLOCK_N=scoring_triton.BLOCK_N, BLOCK_K=scoring_triton.BLOCK_K, BLOCK_D=64, DOT=dot)
        yield f"scores {dt[1:]}", scoring_triton._scores_kernel, c, ptrs, 4
        lb_b, lb_k = loss_triton._blocks(300)
        c = dict(BLOCK_B=lb_b, BLOCK_K=lb_k)
        ptrs = {"p_ptr": dt, "q_ptr": "*fp32", "dp_ptr": dt}
        yield f"loss fwd {dt[1:]}", loss_triton._loss_fwd_kernel, c, ptrs, loss_triton.NUM_WARPS
        yield f"loss bwd {dt[1:]}", loss_triton._loss_bwd_kernel, c, ptrs, loss_triton.NUM_WARPS
        c = dict(BLOCK_B=queue_triton.BLOCK_B, BLOCK_D=128)
        yield f"enqueue {dt[1:]}", queue_triton._enqueue_kernel, c, {"q_ptr": dt, "z_ptr": dt}, 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80, 90")
    parser.add_argument("-k", "--filter", default="", help="only variants whose name contains this")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", args.arch, 32)
    failed = 0
    for name, fn, consts, ptrs, warps in variants():
        if args.filter not in name:
            continue
        try:
            src = ASTSource(fn, _signature(fn, consts, ptrs), consts)
            k = triton.compile(src, target=target, options={"num_warps": warps})
            spill = len(re.findall(r"\bst\.local", k.asm["ptx"]))
            print(f"ok    {name}: shared {k.metadata.shared} B, local stores in PTX {spill}")
        except Exception as exc:  # report every failing variant, not just the first
            failed += 1
            print(f"FAIL  {name}: {type(exc).__name__}: {str(exc)[:1500]}")
    print(f"{failed} failed (triton {triton.__version__}, sm_{args.arch})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
