#!/usr/bin/env bash
# The checks of `scripts/slurm/local_cluster.sh demo` (see that script's --help): starts the local cluster, runs
# train.sbatch on it, compares with torchrun, exercises the failure paths, writes a JSON record, stops the cluster.
#
#   scripts/slurm/local_cluster.sh demo [--quick | --checks LIST] [--record FILE]
#
# --quick: the rendezvous check only (about a minute); --checks: a comma-separated subset of
# rendezvous,usr1,requeue,nodefail (default: all); --record: where the JSON goes (default
# benchmarks/results/slurm_local.json; the test passes a temporary file).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STATE=${STATE:-/var/tmp/vicc_slurm}
export STATE SLURM_CONF="${STATE}/slurm.conf" MASTER_PORT=${MASTER_PORT:-29731}
CHECKS=rendezvous,usr1,requeue,nodefail
RECORD="${ROOT}/benchmarks/results/slurm_local.json"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) CHECKS=rendezvous; shift ;;
        --checks) CHECKS=${2:?--checks needs a value}; shift 2 ;;
        --record) RECORD=${2:?--record needs a value}; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/slurm/lib.sh
source "${ROOT}/scripts/slurm/lib.sh"
want() { [[ ",${CHECKS}," == *",$1,"* ]]; }

python -c "import torch, vicc_fast" 2>/dev/null \
    || die "activate the project's venv first (python must import torch and vicc_fast; the jobs inherit it)"
cd "${ROOT}"
start_cluster

CONFIG=configs/cluster_tiny.yaml
DATA="${STATE}/data"
RUNS="${STATE}/runs"
rm -rf "${RUNS}" "${STATE}"/*.out
mkdir -p "${RUNS}"
results="${STATE}/results.jsonl"
: > "${results}"
# Shards once, before any job: train.sbatch runs with data.build_if_missing=false (shards live on shared storage).
python - "${CONFIG}" "${DATA}" <<'PY'
import sys
from pathlib import Path
from vicc_fast import config as C
from data_prep.build import build_synthetic
cfg = C.load([Path(sys.argv[1])], [])
if not (Path(sys.argv[2]) / "manifest.json").is_file():
    build_synthetic(sys.argv[2], cfg.data.synthetic, workers=1, progress=False)
PY

# The sbatch line of every check: the script's own #SBATCH lines ask for 8 GPUs and 64 CPUs per node; the
# command line overrides them for two 1-CPU nodes without GPUs. GPUS_PER_NODE=1: one (CPU, gloo) worker per node.
submit() {  # job name, overrides...
    local name=$1; shift
    sbatch --parsable --job-name="${name}" --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 --gpus-per-node=0 \
        --time=15 --output="${STATE}/%x-%j.out" --chdir="${ROOT}" \
        --export="ALL,CONFIG=${CONFIG},DATA_ROOT=${DATA},RUNS_ROOT=${RUNS},GPUS_PER_NODE=1,OMP_NUM_THREADS=1" \
        scripts/slurm/train.sbatch "$@"
}
# Generous: on 2 shared cores a job can take minutes to start its ranks when other work runs.
wait_ckpt() {  # run folder, timeout s: until the first mid-phase checkpoint exists
    for _ in $(seq "$2"); do [[ -f "$1/checkpoints/last.pt" ]] && return 0; sleep 0.5; done
    die "no checkpoint in $1 after $2 s"
}
compare() { python scripts/slurm/compare_runs.py "$1" "$2" || true; }
record() {  # name, json fields (already JSON-encoded key: value pairs)
    echo "{\"check\": \"$1\", $2}" >> "${results}"
}

# ------------------------------------------------------------------- 1. rendezvous: 2 nodes x 1 task vs torchrun
if want rendezvous; then
log "1. sbatch train.sbatch on 2 nodes x 1 task"
t0=$(now)
j=$(submit rdzv)
st=$(wait_done "${j}" 300)
slurm_s=$(since "${t0}")
log "job ${j}: ${st} in ${slurm_s} s"
[[ ${st} == COMPLETED ]] || { cat "${STATE}/rdzv-${j}.out"; die "job ${j} ended ${st}"; }
launched=$(grep -l "launch task StepId=${j}.0 " "${STATE}"/slurmd.*.log | xargs -n1 basename | paste -sd, -)
log "step ${j}.0 launched by: ${launched}"
t0=$(now)
# The same OMP_NUM_THREADS as the jobs: another thread count changes the order of float reductions (measured:
# 1e-6 loss differences with 2 threads against 1), and the comparison is exact.
OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m vicc_fast.train --config "${CONFIG}" \
    data.root="${DATA}" data.build_if_missing=false train.out_dir="${RUNS}/torchrun_2proc" > "${STATE}/torchrun_2proc.log" 2>&1
torch_s=$(since "${t0}")
cmp=$(compare "${RUNS}/rdzv" "${RUNS}/torchrun_2proc")
log "slurm vs torchrun: ${cmp}"
record rendezvous "\"job\": ${j}, \"state\": \"${st}\", \"slurm_wall_s\": ${slurm_s}, \"torchrun_wall_s\": ${torch_s},
  \"step_launched_by\": \"${launched}\", \"header\": \"$(head -n 1 "${STATE}/rdzv-${j}.out")\", \"compare\": ${cmp}"
grep -q '"equal": true' <<< "${cmp}" || die "the Slurm run differs from the torchrun run"
fi

if want usr1 || want requeue || want nodefail; then
    # The failure checks train longer (60 steps) so that the stop lands mid-phase; one uninterrupted reference.
    LONG=(schedule.single_epochs=30)
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 -m vicc_fast.train --config "${CONFIG}" \
        data.root="${DATA}" data.build_if_missing=false train.out_dir="${RUNS}/torchrun_long" "${LONG[@]}" \
        > "${STATE}/torchrun_long.log" 2>&1

fi
if want usr1; then
    # ---------------------------------------------------------- 2. the time-limit signal: B:USR1 -> requeue
    log "2. scancel --batch --signal=USR1 (the --signal=B:USR1@120 path)"
    j=$(submit usr1 "${LONG[@]}")
    wait_ckpt "${RUNS}/usr1" 600
    t0=$(now)
    scancel --batch --signal=USR1 "${j}"
    st=$(wait_done "${j}" 300)
    log "job ${j}: ${st}, restarts $(field "${j}" Restarts)"
    cmp=$(compare "${RUNS}/usr1" "${RUNS}/torchrun_long")
    log "resumed vs uninterrupted: ${cmp}"
    out="${STATE}/usr1-${j}.out"
    record usr1_requeue "\"job\": ${j}, \"state\": \"${st}\", \"restarts\": $(field "${j}" Restarts),
      \"signal_to_done_s\": $(since "${t0}"), \"trap\": $(grep -c 'USR1: time limit near' "${out}"),
      \"stop_lines\": $(grep -ci 'checkpoint' "${out}"), \"resume_lines\": $(grep -ci 'resum' "${out}"),
      \"compare\": ${cmp}"

fi
if want requeue; then
    # ---------------------------------------------------------- 3. scontrol requeue from outside
    log "3. scontrol requeue"
    j=$(submit requeue "${LONG[@]}")
    wait_ckpt "${RUNS}/requeue" 600
    scontrol requeue "${j}"
    st=$(wait_done "${j}" 300)
    log "job ${j}: ${st}, restarts $(field "${j}" Restarts)"
    cmp=$(compare "${RUNS}/requeue" "${RUNS}/torchrun_long")
    log "resumed vs uninterrupted: ${cmp}"
    out="${STATE}/requeue-${j}.out"
    record scontrol_requeue "\"job\": ${j}, \"state\": \"${st}\", \"restarts\": $(field "${j}" Restarts),
      \"stop_lines\": $(grep -ci 'checkpoint' "${out}"), \"resume_lines\": $(grep -ci 'resum' "${out}"),
      \"compare\": ${cmp}"

fi
if want nodefail; then
    # ---------------------------------------------------------- 4. a node dies mid-job
    log "4. node vicc-n2 dies mid-job (slurmd, step daemon and rank SIGKILLed)"
    j=$(submit nodefail "${LONG[@]}")
    wait_ckpt "${RUNS}/nodefail" 600
    # The node's processes: its slurmd, and every process of this job whose environment says it runs on vicc-n2
    # (torchrun agent, worker), plus their step daemon (the parent of the agent).
    victims=$(cat "${STATE}/slurmd.vicc-n2.pid")
    for p in /proc/[0-9]*; do
        # Processes may vanish between the glob and the read: skip those quietly.
        env=$( { tr '\0' '\n' < "${p}/environ"; } 2>/dev/null) || continue
        if grep -qx "SLURMD_NODENAME=vicc-n2" <<< "${env}" && grep -qx "SLURM_JOB_ID=${j}" <<< "${env}"; then
            victims+=" ${p#/proc/} $(awk '{print $4}' "${p}/stat")"
        fi
    done
    victims=$(tr ' ' '\n' <<< "${victims}" | sort -u | grep -vx 1 | paste -sd' ' -)
    log "SIGKILL ${victims}"
    t0=$(now)
    # shellcheck disable=SC2086
    kill -9 ${victims} 2>/dev/null || true
    # The job leaves RUNNING either as FAILED (the surviving rank's torchrun gives up first) or, once the
    # controller has noticed the silent node, as NODE_FAIL, which --requeue turns into PENDING at once.
    for _ in $(seq 180); do
        st=$(field "${j}" JobState)
        [[ ${st} == RUNNING || ${st} == COMPLETING ]] || break
        sleep 1
    done
    fail_s=$(since "${t0}")
    reason=$(field "${j}" Reason)
    node_state=$(sinfo -h -n vicc-n2 -o %T)
    log "job ${j}: ${st} (${reason}) after ${fail_s} s; vicc-n2 ${node_state}"
    out="${STATE}/nodefail-${j}.out"
    fail_msg=$(grep -m 4 -E 'Connection closed by peer|Node failure|NODE FAILURE' "${out}" | cut -c1-200 | python -c 'import json,sys; print(json.dumps(sys.stdin.read()))')
    # The node comes back (ReturnToService=2 makes it usable), the job is requeued and resumes.
    slurmd -f "${SLURM_CONF}" -N vicc-n2
    for _ in $(seq 60); do [[ $(sinfo -h -n vicc-n2 -o %T) == idle ]] && break; sleep 1; done
    # A FAILED job needs the requeue; one Slurm already requeued (NODE_FAIL) is PENDING and only waits.
    if [[ $(field "${j}" JobState) != PENDING ]]; then scontrol requeue "${j}"; fi
    st2=$(wait_done "${j}" 300)
    cmp=$(compare "${RUNS}/nodefail" "${RUNS}/torchrun_long")
    log "job ${j} after requeue: ${st2}; resumed vs uninterrupted: ${cmp}"
    record node_failure "\"job\": ${j}, \"state_after_kill\": \"${st}\", \"reason\": \"${reason}\",
      \"kill_to_end_s\": ${fail_s}, \"node_state\": \"${node_state}\", \"first_error_lines\": ${fail_msg},
      \"state_after_requeue\": \"${st2}\", \"restarts\": $(field "${j}" Restarts), \"compare\": ${cmp}"
fi

python - "${results}" "${RECORD}" "$*" <<'PY'
import json, os, subprocess, sys, time
checks = [json.loads(line) for line in open(sys.argv[1]).read().replace("\n  ", " ").splitlines() if line.strip()]
rec = {
    "benchmark": "slurm_local",
    "command": ("scripts/slurm/local_cluster.sh demo " + sys.argv[3]).strip(),
    "env": {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "slurm": subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip(),
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "note": "measured here: 2 CPU cores shared with other work; two slurmd (vicc-n1, vicc-n2) on one host",
    },
    "checks": checks,
}
os.makedirs(os.path.dirname(os.path.abspath(sys.argv[2])), exist_ok=True)
with open(sys.argv[2], "w") as f:
    json.dump(rec, f, indent=2)
    f.write("\n")
print("record:", sys.argv[2])
PY
