#!/usr/bin/env bash
# A real two-node Slurm cluster on this one machine, and scripts/slurm/train.sbatch run on it.
#
#   scripts/slurm/local_cluster.sh start            munged, slurmctld, two slurmd (vicc-n1, vicc-n2, 1 CPU each)
#   scripts/slurm/local_cluster.sh stop             stop every daemon this script started, undo the hosts entry
#   scripts/slurm/local_cluster.sh status           sinfo / squeue of the local cluster
#   scripts/slurm/local_cluster.sh demo [--quick]   start, run the checks below, write a JSON record, stop
#   scripts/slurm/local_cluster.sh build-demo       a data-set build as an array job + pack (build.sbatch; see
#                                                   local_cluster_build_demo.sh --help)
#
# demo: (1) sbatch train.sbatch on 2 nodes x 1 task (gloo, c10d rendezvous on the first node) with
# configs/cluster_tiny.yaml, and a 2-process `torchrun --standalone` of the same config: both must end with the
# same per-step losses and bit-identical weights; (2) `scancel --batch --signal=USR1` (what --signal=B:USR1@120
# sends near the time limit): the script's trap requeues the job, the ranks checkpoint and exit, the job resumes
# and ends where an uninterrupted run ends; (3) `scontrol requeue`: the same from outside; (4) a node dies mid-job
# (its slurmd, step daemon and ranks are SIGKILLed): the job fails with NODE_FAIL, is requeued, waits for the node,
# and resumes from its checkpoint when the node comes back. --quick runs (1) only.
#
# Two slurmd on one host without Slurm's --enable-multiple-slurmd build (Debian's is not): every node needs its
# own NodeHostname, so the script adds "127.0.0.1 vicc-n1 vicc-n2" to /etc/hosts (removed by stop) and gives the
# nodes their own ports, spool, pid and log files. What this leaves untested: separate machines (network
# between nodes, shared-storage latency), GPUs (the jobs run with GPUS_PER_NODE=1 CPU worker), cgroups (proctrack
# is linuxproc: there is no systemd/cgroup delegation here).
#
# Environment: STATE (default /var/tmp/vicc_slurm: config, logs, data, runs), PYTHON_ENV (a venv to activate for
# the jobs; default: the active one), MASTER_PORT (default 29731).
set -euo pipefail

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STATE=${STATE:-/var/tmp/vicc_slurm}
NODES=(vicc-n1 vicc-n2)
CTLD_PORT=16817
HOSTS_TAG="# vicc_fast local_cluster"
export SLURM_CONF="${STATE}/slurm.conf"
export MASTER_PORT=${MASTER_PORT:-29731}

# shellcheck source=scripts/slurm/lib.sh
source "${ROOT}/scripts/slurm/lib.sh"

write_conf() {
    mkdir -p "${STATE}/ctld"
    local port=17001 n
    {
        echo "# written by scripts/slurm/local_cluster.sh"
        echo "ClusterName=vicclocal"
        echo "SlurmctldHost=$(hostname)(127.0.0.1)"
        echo "SlurmctldPort=${CTLD_PORT}"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "StateSaveLocation=${STATE}/ctld"
        # %n: one spool/pid/log per node daemon (they share the host).
        echo "SlurmdSpoolDir=${STATE}/slurmd.%n"
        echo "SlurmdPidFile=${STATE}/slurmd.%n.pid"
        echo "SlurmdLogFile=${STATE}/slurmd.%n.log"
        echo "SlurmctldPidFile=${STATE}/slurmctld.pid"
        echo "SlurmctldLogFile=${STATE}/slurmctld.log"
        # No systemd and a cgroup v1 layout we may not delegate: track processes by parentage.
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_CPU"
        echo "SchedulerType=sched/backfill"
        echo "MpiDefault=none"
        # A node that comes back after a failure is usable again without an admin (the requeued job can run).
        echo "ReturnToService=2"
        echo "JobRequeue=1"
        # Short timeouts so that a dead node is noticed in seconds, not the default 5 minutes.
        echo "SlurmdTimeout=10"
        echo "MessageTimeout=5"
        echo "InactiveLimit=0"
        # Seconds between SIGTERM and SIGKILL on scancel/requeue: time for the ranks to finish a step and checkpoint.
        echo "KillWait=30"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "AccountingStorageType=accounting_storage/none"
        for n in "${NODES[@]}"; do
            echo "NodeName=${n} NodeAddr=127.0.0.1 Port=${port} CPUs=1 RealMemory=1000"
            port=$((port + 1))
        done
        echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP"
    } > "${SLURM_CONF}"
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    [[ $(id -u) == 0 ]] || die "run as root (the daemons run as root here: SlurmUser=root)"
    for c in munged slurmctld slurmd sbatch scontrol; do
        command -v "$c" >/dev/null || die "$c not found (Debian: apt-get install slurm-wlm munge)"
    done
    [[ -f /etc/munge/munge.key ]] || die "/etc/munge/munge.key missing (the munge package creates it)"
    mkdir -p "${STATE}"
    if ! getent hosts "${NODES[0]}" >/dev/null || ! getent hosts "${NODES[1]}" >/dev/null; then
        echo "127.0.0.1 ${NODES[*]} ${HOSTS_TAG}" >> /etc/hosts
    fi
    write_conf
    # munged: its own socket and pid file under STATE, so that a system munged (if any) is left alone.
    if ! alive "${STATE}/munged.pid"; then
        chown munge:munge "${STATE}" 2>/dev/null || true
        mkdir -p "${STATE}/munge" && chown munge:munge "${STATE}/munge"
        runuser -u munge -- munged --socket="${STATE}/munge/munge.socket" --pid-file="${STATE}/munge/munged.pid" \
            --log-file="${STATE}/munge/munged.log" --seed-file="${STATE}/munge/munged.seed"
        cp "${STATE}/munge/munged.pid" "${STATE}/munged.pid"
    fi
    chown root:root "${STATE}"
    # Slurm's auth/munge plugin reads the socket path from AuthInfo.
    sed -i "/^AuthType=/a AuthInfo=socket=${STATE}/munge/munge.socket" "${SLURM_CONF}"
    alive "${STATE}/slurmctld.pid" || slurmctld -f "${SLURM_CONF}" || die "slurmctld failed: ${STATE}/slurmctld.log"
    for n in "${NODES[@]}"; do
        alive "${STATE}/slurmd.${n}.pid" || slurmd -f "${SLURM_CONF}" -N "${n}" \
            || die "slurmd -N ${n} failed: ${STATE}/slurmd.${n}.log"
    done
    for _ in $(seq 60); do
        [[ $(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l) == 2 ]] && { log "cluster up:"; sinfo -N; return 0; }
        sleep 1
    done
    sinfo -N || true
    die "the two nodes did not become idle within 60 s (logs in ${STATE})"
}

stop_pidfile() {  # name pidfile: SIGTERM, wait up to 20 s, then SIGKILL
    local pid
    alive "$2" || return 0
    pid=$(cat "$2")
    kill "${pid}"
    for _ in $(seq 20); do kill -0 "${pid}" 2>/dev/null || { log "stopped $1 (${pid})"; return 0; }; sleep 1; done
    kill -9 "${pid}" 2>/dev/null || true
    log "killed $1 (${pid})"
}

stop() {
    if [[ -f ${SLURM_CONF} ]] && alive "${STATE}/slurmctld.pid"; then
        scancel --full --quiet --signal=KILL --partition=debug 2>/dev/null || true
        scancel --quiet --partition=debug 2>/dev/null || true
    fi
    for n in "${NODES[@]}"; do stop_pidfile "slurmd ${n}" "${STATE}/slurmd.${n}.pid"; done
    stop_pidfile slurmctld "${STATE}/slurmctld.pid"
    stop_pidfile munged "${STATE}/munged.pid"
    # Step daemons of killed jobs outlive their slurmd; they carry this cluster's config in their command line.
    local p
    for p in $(pgrep -f "slurmstepd" || true); do
        if tr '\0' '\n' < "/proc/${p}/environ" 2>/dev/null | grep -qx "SLURM_CONF=${SLURM_CONF}"; then
            kill -9 "${p}" 2>/dev/null || true
        fi
    done
    if grep -q "${HOSTS_TAG}" /etc/hosts; then
        # /etc/hosts may be a bind mount: rewrite it in place rather than replacing the file.
        grep -v "${HOSTS_TAG}" /etc/hosts > "${STATE}/hosts.tmp" && cat "${STATE}/hosts.tmp" > /etc/hosts
    fi
}

status() { sinfo -N; squeue; }

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    demo) shift; exec "${ROOT}/scripts/slurm/local_cluster_demo.sh" "$@" ;;
    build-demo) shift; exec "${ROOT}/scripts/slurm/local_cluster_build_demo.sh" "$@" ;;
    -h|--help) usage ;;
    *) usage >&2; exit 2 ;;
esac
