#!/usr/bin/env bash
# `scripts/slurm/local_cluster.sh build-demo`: scripts/slurm/build.sbatch for real on the local two-node cluster.
#
#   scripts/slurm/local_cluster.sh build-demo [--parts N] [--record FILE]
#
# Writes a small synthetic set in the Kinetics layout (one clip never downloaded, one an error page), builds it
# once in a single process (the reference), then as an array job of N parts (default 4) plus a pack job that
# depends on it (afterany). Faults: the last part is cancelled (scancel) while it runs, so the first pack must
# refuse and name it; that part is then requeued (scontrol requeue), resumes from the cache, and a second pack
# writes the shards. Checks: the shards (.tar, .idx) are byte-identical to the single-process build. JSON
# record: benchmarks/results/slurm_build_local.json (--record: elsewhere).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STATE=${STATE:-/var/tmp/vicc_slurm}
export STATE SLURM_CONF="${STATE}/slurm.conf"
PARTS=4
RECORD="${ROOT}/benchmarks/results/slurm_build_local.json"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --parts) PARTS=${2:?--parts needs a value}; shift 2 ;;
        --record) RECORD=${2:?--record needs a value}; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/slurm/lib.sh
source "${ROOT}/scripts/slurm/lib.sh"

python -c "import data_prep.build" 2>/dev/null \
    || die "activate the project's venv first (python must import data_prep; the jobs inherit it)"
cd "${ROOT}"
start_cluster

SRC="${STATE}/kinetics"
SINGLE="${STATE}/build_single"
PARTED="${STATE}/build_parts"
rm -rf "${SRC}" "${SINGLE}" "${PARTED}" "${STATE}"/vicc_build*.out
# 3 classes x (5 train + 2 validate) clips of 16 frames at 48 x 64; TV-L1 (the papers' flow, OpenCV). Small:
# the two 1-CPU nodes share 2 cores with everything else on this machine.
python -m data_prep.synthetic --kinetics --out "${SRC}" --classes 3 --train-per-class 5 --test-per-class 2 \
    --frames 16 --height 48 --width 64 --missing 1 --broken 1 --workers 1 --quiet
ARGS=(--source kinetics --root "${SRC}" --flow tvl1 --height 48 --width 64 --shard-size 4)

log "reference: one process"
t0=$(now)
OMP_NUM_THREADS=1 python -m data_prep.build "${ARGS[@]}" --out "${SINGLE}" --workers 1 --no-progress \
    > "${STATE}/build_single.log" 2>&1 || { cat "${STATE}/build_single.log"; die "single build failed"; }
single_s=$(since "${t0}")
log "single build: ${single_s} s"

submit() {  # extra sbatch args...: the cluster's nodes have 1 CPU and no GPU (the script's defaults ask for 8 GPUs)
    sbatch --parsable --nodes=1 --ntasks=1 --cpus-per-task=1 --gpus-per-node=0 --mem=0 --time=30 \
        --output="${STATE}/%x-%A_%a.out" --chdir="${ROOT}" "$@"
}
LAST=$((PARTS - 1))

log "array job: ${PARTS} parts, pack after it (afterany)"
t0=$(now)
jid=$(submit --array="0-${LAST}" scripts/slurm/build.sbatch "${ARGS[@]}" --out "${PARTED}")
pack1=$(submit --dependency="afterany:${jid}" --export=ALL,PACK=1 --job-name=vicc_build_pack \
    scripts/slurm/build.sbatch "${ARGS[@]}" --out "${PARTED}")
# Cancel the last part once the first video of its share is cached (the requeued run must resume from it).
part_file=$(printf '%s/.work/parts/part-%05d-of-%05d.json' "${PARTED}" "${LAST}" "${PARTS}")
mapfile -t share < <(python - "${SRC}" "${PARTED}" "${LAST}" "${PARTS}" <<'PY'
import sys
from pathlib import Path
from data_prep import build
from data_prep.sources import load_records
recs = load_records("kinetics", sys.argv[1])
for r in build.part_share(recs, (int(sys.argv[3]), int(sys.argv[4]))):
    print(build._cache_dir(Path(sys.argv[2]) / build.WORK_DIR, r.video_id) / "meta.json")
PY
)
cached_one() { local m; for m in "${share[@]}"; do [[ -f ${m} ]] && return 0; done; return 1; }
for _ in $(seq 1200); do cached_one && break; sleep 0.5; done
scancel "${jid}_${LAST}"
cancelled_state=$(wait_done "${jid}_${LAST}" 120)
cancel_status=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["state"])' "${part_file}")
log "part ${LAST}/${PARTS} (${jid}_${LAST}): ${cancelled_state}, part status ${cancel_status}"

pack1_state=$(wait_done "${pack1}" 900)
pack1_out="${STATE}/vicc_build_pack-${pack1}_4294967294.out"
[[ -f ${pack1_out} ]] || pack1_out=$(ls "${STATE}"/vicc_build_pack-"${pack1}"*.out)
refusal=$(grep -m 1 '^error: pack:' "${pack1_out}" || true)
log "first pack (${pack1}): ${pack1_state}: ${refusal}"
[[ ${pack1_state} == FAILED && -n ${refusal} ]] || die "the pack did not refuse the missing part (see ${pack1_out})"

log "requeue part ${LAST}"
scontrol requeue "${jid}_${LAST}"
requeued_state=$(wait_done "${jid}_${LAST}" 900)
restarts=$(field "${jid}_${LAST}" Restarts)
array_s=$(since "${t0}")
pack2=$(submit --dependency="afterany:${jid}" --export=ALL,PACK=1 --job-name=vicc_build_pack \
    scripts/slurm/build.sbatch "${ARGS[@]}" --out "${PARTED}")
pack2_state=$(wait_done "${pack2}" 900)
total_s=$(since "${t0}")
log "requeued part: ${requeued_state} (restarts ${restarts}); second pack (${pack2}): ${pack2_state}; ${total_s} s"
[[ ${pack2_state} == COMPLETED ]] || die "the second pack failed (see ${STATE}/vicc_build_pack-${pack2}*.out)"
pack2_out=$(ls "${STATE}"/vicc_build_pack-"${pack2}"*.out)

declare -A S
for t in $(seq 0 "${LAST}"); do
    S[$t]=$(field "${jid}_${t}" JobState)
done
states=$(for t in $(seq 0 "${LAST}"); do printf '"%s": "%s",' "$t" "${S[$t]}"; done)

python - "${RECORD}" "${SINGLE}" "${PARTED}" "${PARTS}" <<PY
import hashlib, json, os, subprocess, sys, time
from pathlib import Path
record, single, parted, parts = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
def files(d):
    return {p.name: p.read_bytes() for p in sorted(d.glob("*-*.tar")) + sorted(d.glob("*-*.idx"))}
a, b = files(single), files(parted)
ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (single, parted))
part_status = [json.loads(p.read_text()) for p in sorted((parted / ".work" / "parts").glob("*.json"))]
rec = {
    "benchmark": "slurm_build_local",
    "command": "scripts/slurm/local_cluster.sh build-demo --parts ${PARTS}",
    "env": {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "slurm": subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip(),
        "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "note": "measured here: 2 CPU cores shared with other work; two slurmd (vicc-n1, vicc-n2, 1 CPU each) "
        "on one host; array tasks of 1 CPU, TV-L1 (OpenCV) on the CPU",
    },
    "set": {"source": "kinetics (synthetic, data_prep.synthetic --kinetics)", "videos": sum(
        ma["splits"][s]["num_samples"] for s in ("train", "test")) + len(ma["rejected"]),
        "rejected": [{"video": Path(r["video"]).name, "reason": r["reason"]} for r in ma["rejected"]]},
    "single": {"wall_s": float("${single_s}")},
    "array": {
        "job": "${jid}", "parts": parts, "task_states": {${states%,}},
        "wall_s_submit_to_last_part": float("${array_s}"), "wall_s_submit_to_pack": float("${total_s}"),
        "part_status": part_status,
    },
    "cancelled_part": {
        "task": "${jid}_${LAST}", "state_after_scancel": "${cancelled_state}",
        "part_status_after_scancel": "${cancel_status}", "state_after_requeue": "${requeued_state}",
        "restarts": int("${restarts}" or 0),
        "resumed": next(p for p in part_status if p["part"] == parts - 1),
    },
    "pack_refused": {"job": "${pack1}", "state": "${pack1_state}", "message": """${refusal}"""},
    "pack": {"job": "${pack2}", "state": "${pack2_state}", "summary": [
        ln for ln in open("${pack2_out}").read().splitlines() if "part(s):" in ln or ln.startswith("wrote")]},
    "byte_identical": {
        "files": len(a), "equal": a == b and len(a) > 0,
        "manifest_splits_equal": ma["splits"] == mb["splits"],
        "sha256": {n: hashlib.sha256(v).hexdigest()[:16] for n, v in a.items()},
    },
}
record.parent.mkdir(parents=True, exist_ok=True)
record.write_text(json.dumps(rec, indent=2) + "\n")
print("record:", record, "byte-identical:", rec["byte_identical"]["equal"])
sys.exit(0 if rec["byte_identical"]["equal"] else 1)
PY
