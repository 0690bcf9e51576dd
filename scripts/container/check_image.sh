#!/usr/bin/env bash
# Check a built vicc_fast image as docs/cluster.md ("Container") documents it, on the CPU:
#   1. image metadata: ENTRYPOINT ["torchrun"], the default CMD, volumes /workspace/data + /workspace/runs,
#      working directory /workspace, user 1000:1000 (and `id` inside says vicc);
#   2. `python -m vicc_fast.train --help` inside the image;
#   3. a short training run THROUGH THE ENTRY POINT (torchrun --standalone --nproc_per_node=1) on
#      configs/cluster_tiny.yaml from /opt/vicc_fast, with host folders mounted as the data and runs volumes:
#      the shards and the checkpoint must appear on the host, owned by the image's user;
#   4. a few fast tests from the source tree in the image (pytest installed into a throw-away container).
#
#   scripts/container/check_image.sh [--tag TAG] [--no-tests] [--keep] [--record FILE]
#
# --record: the JSON record of what was checked and how long the training run took (default
# benchmarks/results/container_check.json); --keep: leave the volume folders in place.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ARGS="$*"
RECORD="${ROOT}/benchmarks/results/container_check.json"
TAG=localhost/vicc_fast:local
TESTS=1
KEEP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
        --no-tests) TESTS=0; shift ;;
        --keep) KEEP=1; shift ;;
        --record) RECORD=${2:?--record needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
die() { echo "FAIL: $*" >&2; exit 1; }
log() { echo "[$(date -u +%T)] $*"; }

STATE=${VICC_CONTAINER_STATE:-/var/tmp/vicc_container}
mkdir -p "${STATE}"
# Same engine settings as build_local.sh (runc, no default rlimits, cgroupfs): see the comment there.
if [[ -z ${CONTAINERS_CONF:-} ]]; then
    [[ -f ${STATE}/containers.conf ]] || die "${STATE}/containers.conf missing: run scripts/container/build_local.sh first"
    export CONTAINERS_CONF="${STATE}/containers.conf"
fi
podman image exists "${TAG}" || die "no image ${TAG} (scripts/container/build_local.sh builds it)"

# ------------------------------------------------------------------------------------------- 1. metadata
meta=$(podman image inspect --format '{{json .Config.Entrypoint}}|{{json .Config.Cmd}}|{{json .Config.Volumes}}|{{.Config.WorkingDir}}|{{.Config.User}}' "${TAG}")
log "entrypoint|cmd|volumes|workdir|user = ${meta}"
IFS='|' read -r ep cmd vols wd user <<< "${meta}"
[[ ${ep} == '["torchrun"]' ]] || die "entry point ${ep}, documented: [\"torchrun\"]"
[[ ${cmd} == '["--standalone","--nproc_per_node=gpu","-m","vicc_fast.train"]' ]] || die "default command ${cmd}"
[[ ${vols} == *'"/workspace/data"'* && ${vols} == *'"/workspace/runs"'* ]] || die "volumes ${vols}"
[[ ${wd} == /workspace ]] || die "working directory ${wd}"
[[ ${user} == 1000:1000 ]] || die "user ${user}"
who=$(podman run --rm --entrypoint id "${TAG}")
log "id inside: ${who}"
[[ ${who} == "uid=1000(vicc) gid=1000(vicc)"* ]] || die "the image runs as ${who}"

# ------------------------------------------------------------------------------------------- 2. --help
podman run --rm --entrypoint python "${TAG}" -m vicc_fast.train --help > "${STATE}/help.txt" \
    || die "python -m vicc_fast.train --help failed in the image"
grep -q "train.resume" "${STATE}/help.txt" || die "--help does not list the config keys"
log "--help: $(wc -l < "${STATE}/help.txt") lines, lists every config key"

# ------------------------------------------------------------------------------------------- 3. CPU training run
vol="${STATE}/volumes"
rm -rf "${vol}"
mkdir -p "${vol}/data" "${vol}/runs"
# The image's user (uid 1000) must be able to write to the mounted folders, as on a cluster's shared storage.
chown 1000:1000 "${vol}/data" "${vol}/runs"
run_cmd=(podman run --rm --ipc=host -v "${vol}/data:/workspace/data" -v "${vol}/runs:/workspace/runs" "${TAG}"
         --standalone --nproc_per_node=1 -m vicc_fast.train --config /opt/vicc_fast/configs/cluster_tiny.yaml)
log "${run_cmd[*]}"
t0=${EPOCHREALTIME}
"${run_cmd[@]}" > "${STATE}/train.log" 2>&1 || { tail -n 30 "${STATE}/train.log"; die "training in the image failed"; }
train_s=$(awk -v a="${EPOCHREALTIME}" -v b="${t0}" 'BEGIN{printf "%.1f", a-b}')
tail -n 4 "${STATE}/train.log"
ck="${vol}/runs/cluster_tiny/checkpoints/rgb1.pt"
[[ -f ${vol}/data/cluster_tiny/manifest.json ]] || die "no shards in the data volume"
[[ -f ${ck} ]] || die "no checkpoint ${ck} in the runs volume"
[[ $(stat -c %u "${ck}") == 1000 ]] || die "checkpoint owned by uid $(stat -c %u "${ck}"), expected 1000"
log "training through the entry point: ${train_s} s; shards and checkpoints on the host volumes, uid 1000"

# ------------------------------------------------------------------------------------------- 4. fast tests
tests_line="not run (--no-tests)"
if [[ ${TESTS} == 1 ]]; then
    mounts=()
    for d in /opt/wheels /opt/pypi /opt/pypi-more; do [[ -d $d ]] && mounts+=(-v "$d:$d:ro"); done
    [[ -f /etc/pip.conf ]] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
    [[ -d /etc/xdg/pip ]] && mounts+=(-v /etc/xdg/pip:/etc/xdg/pip:ro)
    # The host's CA bundle: PyPI is reached through a proxy whose certificate only the host's bundle holds.
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] \
        && mounts+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
    # pytest is a test extra, not in the image: install it into this throw-away container only (as root, the
    # venv is root-owned), then run the tests as the image's user from a copy of the source tree it can write.
    podman run --rm --network=host --user 0 "${mounts[@]}" --entrypoint bash "${TAG}" -c '
        set -euo pipefail
        pip install -q "pytest>=8" "pytest-timeout>=2.3"
        cp -r /opt/vicc_fast /tmp/src && chown -R vicc:vicc /tmp/src
        cd /tmp/src && runuser -u vicc -- env PATH="$PATH" python -m pytest -q -p no:cacheprovider \
            tests/test_config.py tests/engine/test_e2e.py' > "${STATE}/tests.log" 2>&1 \
        || { tail -n 30 "${STATE}/tests.log"; die "tests failed in the image"; }
    tests_line=$(tail -n 1 "${STATE}/tests.log")
    log "tests in the image: ${tests_line}"
fi
mkdir -p "$(dirname "${RECORD}")"
python3 - "${RECORD}" <<PY
import json, os, sys, time
rec = {
    "benchmark": "container_check",
    "command": "scripts/container/check_image.sh ${ARGS}".strip(),
    "env": {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(),
            "note": "measured here: 2 CPU cores shared with other work"},
    "result": {
        "image": "${TAG}",
        "entrypoint|cmd|volumes|workdir|user": """${meta}""",
        "id_inside": "${who}",
        "help_lines": $(wc -l < "${STATE}/help.txt"),
        "train_command": "${run_cmd[*]}",
        "train_wall_s": ${train_s},
        "train_note": "wall time of podman run: container start, synthetic shard build (20 videos), 16 steps, eval",
        "checkpoint_owner_uid": $(stat -c %u "${ck}"),
        "tests": "tests/test_config.py tests/engine/test_e2e.py: ${tests_line}",
    },
}
with open(sys.argv[1], "w") as f:
    json.dump(rec, f, indent=2)
    f.write("\n")
print("record:", sys.argv[1])
PY
[[ ${KEEP} == 1 ]] || rm -rf "${vol}"
log "image ${TAG}: all checks passed"
