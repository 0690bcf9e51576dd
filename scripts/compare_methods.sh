#!/usr/bin/env bash
# ViCC, CoCLR, GOCA and GOCA's SView baseline on the synthetic demo set, with the same budget (clips seen), then
# retrieval (R@1/5/10/20), linear probe and cluster metrics of each and one side-by-side table:
#
#   bash scripts/compare_methods.sh [METHOD ...]      # default: vicc coclr goca sview
#
# Training resumes where it stopped (train.resume=auto), so an interrupted comparison can simply be rerun.
# Times of each step go to runs/compare_times.tsv; the table to runs/compare.md (configs/compare/README.md).
set -euo pipefail

METHODS=("$@")
[ ${#METHODS[@]} -gt 0 ] || METHODS=(vicc coclr goca sview)
EVAL=(eval.retrieval.recall_ks=[1,5,10,20] "eval.linear.epochs=${LINEAR_EPOCHS:-30}")
TIMES=runs/compare_times.tsv
mkdir -p runs

timed() {  # timed LABEL CMD...: run CMD, append "LABEL<TAB>seconds" to $TIMES
    local label=$1 t0
    shift
    t0=$(date +%s)
    "$@"
    printf '%s\t%s\n' "$label" "$(($(date +%s) - t0))" >>"$TIMES"
}

for m in "${METHODS[@]}"; do
    timed "train $m" torchrun --standalone --nproc_per_node=1 -m vicc_fast.train \
        --config configs/synthetic_demo.yaml --config "configs/compare/$m.yaml" \
        train.resume=auto "${EVAL[0]}"
    for protocol in retrieval cluster linear; do
        timed "$protocol $m" python -m vicc_fast.eval "$protocol" --ckpt "runs/compare_$m" --no-progress "${EVAL[@]}"
    done
done

python -m vicc_fast.eval compare "${METHODS[@]/#/runs/compare_}" --out runs/compare.md
cat runs/compare.md
