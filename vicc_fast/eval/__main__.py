"""``python -m vicc_fast.eval COMMAND --ckpt CKPT [key=value ...]``: evaluate a checkpoint; compare runs.

Commands on a checkpoint: retrieval, linear, finetune, cluster, tsne, grid, curves, pictures (tsne + grid +
curves), all (every protocol and picture). Commands on run folders: report RUN, compare RUN [RUN ...].
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vicc_fast import config as C

CKPT_COMMANDS = {
    "retrieval": "kNN retrieval: test videos query train videos, Recall@k per stream and R+F (sum, concat)",
    "linear": "linear probe on the frozen encoder: top-1/top-5 per stream and R+F (averaged probabilities)",
    "finetune": "end-to-end finetuning with dropout; ten-crop x moving-window test; per stream and R+F",
    "cluster": "clusters vs classes (eval.cluster.protocol): ViCC's K-means / refitted K = classes prototypes "
    "(Hungarian Acc, NMI, ARI, entropy, purity) or GOCA's K-means majority vote (Acc, NMI, F1; 50 runs)",
    "tsne": "t-SNE picture of the test features per stream (PNG + TensorBoard + embedding projector)",
    "grid": "retrieval grid picture: test queries and their top-5 train videos, hits green, misses red",
    "curves": "training curves picture from the run's TensorBoard logs",
    "pictures": "tsne + grid + curves",
    "all": "retrieval, linear, cluster, finetune (skipped when eval.finetune.epochs=0) and all pictures",
}
RUN_COMMANDS = {
    "report": "rewrite and print the markdown table of one run (RUN/eval/results.md)",
    "compare": "several runs side by side in the form of the ViCC paper's Table 1",
}


def _epilog() -> str:
    rows = [r for r in C.describe() if r[0].startswith("eval.")]
    rows += [r for r in C.describe() if r[0] in ("data.root", "data.eval.clips", "data.eval.crop")]
    width = max(len(k) for k, _, _ in rows)
    lines = [
        "key=value overrides (on top of the checkpoint's training config; model.* is fixed by the weights):"
    ]
    lines += [f"  {k:<{width}}  {h} [default: {d}]" for k, d, h in rows]
    lines.append("any other config key works too (python -m vicc_fast.train --help lists them).")
    lines.append("outputs: RUN/eval/results.json, RUN/eval/results.md, RUN/eval/<ckpt>/*.png, RUN/tb/eval.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vicc_fast.eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_epilog(),
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help in CKPT_COMMANDS.items():
        sp = sub.add_parser(name, help=help, description=help, epilog=_epilog(),
                            formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        sp.add_argument(
            "--ckpt",
            required=True,
            help="checkpoint file (e.g. RUN/checkpoints/last.pt), or a run folder: then the checkpoints at the "
            "end of each stage (stage 1 -> RGB-1, Flow-1; stage 2 -> RGB-2, Flow-2) are evaluated in turn",
        )
        sp.add_argument(
            "--stream",
            choices=["rgb", "flow"],
            default=None,
            help="released ViCC/CoCLR checkpoints only (e.g. ViCC-RGB-S3D.pth.tar): the stream its encoder was "
            "trained on (the file does not say); evaluated on the paper config of its backbone",
        )
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (see below)")
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where encoders run: auto = CUDA when visible (default: auto)")  # fmt: skip
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")
        sp.add_argument("--no-tensorboard", action="store_true", help="do not write to RUN/tb/eval")
    sp = sub.add_parser("report", help=RUN_COMMANDS["report"], description=RUN_COMMANDS["report"])
    sp.add_argument("run", help="run folder (holds results.json and/or eval/results.json)")
    sp = sub.add_parser("compare", help=RUN_COMMANDS["compare"], description=RUN_COMMANDS["compare"])
    sp.add_argument("runs", nargs="+", help="run folders")
    sp.add_argument("--out", default="", help="also write the table to this markdown file")
    return p


def run(args: argparse.Namespace) -> int:
    from vicc_fast import atomic
    from vicc_fast.eval import report

    if args.command == "report":
        print(report.run_report(args.run), end="")
        report.write_run_report(args.run)
        return 0
    if args.command == "compare":
        table = report.compare(args.runs)
        print(table, end="")
        if args.out:
            atomic.write_text(args.out, table)
        return 0

    from vicc_fast.eval.inputs import stage_checkpoints
    from vicc_fast.eval.runner import Evaluation, pick_device

    target = Path(args.ckpt)
    ckpts = stage_checkpoints(target) if target.is_dir() else [target]
    device = pick_device(args.device)
    # every input check of every checkpoint runs before any compute
    evals = [
        Evaluation(c, args.overrides, device, not args.no_progress, not args.no_tensorboard, args.stream)
        for c in ckpts
    ]
    cmd = args.command
    md: Path | None = None
    for i, ev in enumerate(evals):
        e = ev.cfg.eval
        pictures: list[Path] = []
        print(f"== {ev.ck.path} ({', '.join(ev.ck.labels.values())})", flush=True)
        try:
            if cmd in ("retrieval", "all"):
                ev.retrieval()
            if cmd in ("cluster", "all"):
                ev.cluster()
            if cmd == "linear" or (cmd == "all" and e.linear.epochs > 0):
                ev.linear()
            if cmd == "finetune" or (cmd == "all" and e.finetune.epochs > 0):
                ev.finetune()
            if cmd in ("tsne", "pictures", "all"):
                pictures += ev.tsne()
            if cmd in ("grid", "pictures", "all"):
                pictures += ev.grid()
            if cmd in ("curves", "pictures", "all") and i == len(evals) - 1:
                pictures += ev.curves()
            md = ev.save(pictures)
        finally:
            ev.close()
        for p in pictures:
            print(f"wrote {p}")
    if md is not None:
        print(md.read_text(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vicc_fast.checkpoint import CheckpointError
    from vicc_fast.data.manifest import DataError
    from vicc_fast.eval.inputs import EvalInputError

    try:
        return run(args)
    except (CheckpointError, C.ConfigError, EvalInputError, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
