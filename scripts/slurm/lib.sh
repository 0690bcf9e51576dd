# Shell helpers shared by the local-cluster scripts (sourced, not run): messages, timing, job state.
# shellcheck shell=bash

die() { echo "error: $*" >&2; exit 1; }
log() { echo "[$(date -u +%T)] $*"; }
now() { echo "${EPOCHREALTIME}"; }
since() { awk -v a="${EPOCHREALTIME}" -v b="$1" 'BEGIN{printf "%.1f", a-b}'; }

field() { scontrol show job "$1" | grep -o "$2=[^ ]*" | head -n 1 | cut -d= -f2; }

wait_done() {  # job id, timeout s: wait until the job is finished (not pending/running/requeued); print its state
    local st
    for _ in $(seq "$2"); do
        st=$(field "$1" JobState)
        case "${st}" in COMPLETED|FAILED|CANCELLED|NODE_FAIL|TIMEOUT|OUT_OF_MEMORY) echo "${st}"; return 0 ;; esac
        sleep 1
    done
    echo "TIMEOUT_WAITING"
}

start_cluster() {  # start the local cluster now and stop it when the calling script exits
    CLUSTER="${ROOT}/scripts/slurm/local_cluster.sh"
    trap '"${CLUSTER}" stop' EXIT
    "${CLUSTER}" start
}
