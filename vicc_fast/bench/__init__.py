"""Benchmarks: `python -m vicc_fast.bench {loader,decode,kernels,flow,storage,step,scaling,supervised,all} ... --json OUT`.

Each sub-benchmark is a module here exposing ``add_arguments(parser)`` and ``run(args) -> dict``; the
dispatcher in ``__main__`` prints the dict and appends it (with machine, versions and git commit) to the JSON
file. Speed targets live here, never in timed tests. ``demo`` (the demo / comparison per seed as records in
benchmarks/results/demo and .../compare) and ``report`` (the doc tables generated from them) are not part of ``all``.
"""
