#!/usr/bin/env bash
# Plain multi-node torchrun (no scheduler): run this same command on every node, with the same MASTER_ADDR
# (a host all nodes reach, normally node 0) and NNODES; c10d assigns node ranks, so no per-node NODE_RANK.
#
#   MASTER_ADDR=node0.example NNODES=2 DATA_ROOT=/shared/ucf101_shards \
#       bash scripts/multinode_torchrun.sh train.out_dir=/shared/runs/vicc_s3d [key=value ...]
#
# Arguments are config overrides for `python -m vicc_fast.train`. Rerunning the same command resumes from the
# newest checkpoint in train.out_dir (train.resume=auto). See docs/cluster.md.
set -euo pipefail

: "${MASTER_ADDR:?set MASTER_ADDR to the rendezvous host (node 0)}"
NNODES=${NNODES:-2}
NPROC_PER_NODE=${NPROC_PER_NODE:-gpu}   # "gpu" = one worker per visible GPU
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-vicc}                # any string shared by the nodes of one job
CONFIG=${CONFIG:-configs/ucf101_s3d.yaml}
DATA_ROOT=${DATA_ROOT:-data/ucf101}

exec torchrun \
    --nnodes="${NNODES}" \
    --nproc_per_node="${NPROC_PER_NODE}" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="${MASTER_ADDR}:${MASTER_PORT}" \
    --rdzv_id="${RDZV_ID}" \
    -m vicc_fast.train \
    --config "${CONFIG}" \
    data.root="${DATA_ROOT}" \
    train.resume=auto \
    "$@"
