#!/usr/bin/env bash
# Build the vicc_fast image with podman on a machine that cannot pull the Dockerfile's base image, record the
# build time and image size, then check the image: --help, a short CPU training run, a few fast tests, and the
# user / volumes / entry point that docs/cluster.md documents.
#
#   scripts/container/build_local.sh [--tag TAG] [--base IMAGE] [--record FILE] [--rebuild-base]
#                                    [--no-checks | --no-image-tests]
#
# --no-checks: build and record only; --no-image-tests: run check_image.sh without its pytest step (what the
# cluster test does); --rebuild-base: make the debootstrap base again even when it exists.
#
# Base image: the Dockerfile's default (python:3.11-slim-bookworm) when `podman pull` can fetch it; otherwise a
# Debian bookworm root file system made with debootstrap (Debian's python3 3.11 + venv, the same Debian release
# as the public base) and imported as localhost/vicc-base:bookworm. The Dockerfile takes it as --build-arg
# BASE_IMAGE, so the file itself keeps the public default.
#
# Wheels: when this machine has a local pip index (/opt/pypi*, /opt/wheels, named in /etc/pip.conf) it is
# bind-mounted into the build's RUN steps (never into the image), so the multi-GB torch wheel comes from disk.
#
# Podman runs as root with the runc runtime and a containers.conf written here (not in /etc): crun fails on
# this host's hybrid cgroup v1 layout and on setting rlimits, and there is no systemd for the cgroup manager.
set -euo pipefail

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ARGS="$*"
CHECK_ARGS=()
TAG=localhost/vicc_fast:local
BASE=""
CHECKS=1
RECORD="${ROOT}/benchmarks/results/container_build.json"
REBUILD_BASE=0
PUBLIC_BASE=python:3.11-slim-bookworm
LOCAL_BASE=localhost/vicc-base:bookworm
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
        --base) BASE=${2:?--base needs a value}; shift 2 ;;
        --no-checks) CHECKS=0; shift ;;
        --no-image-tests) CHECK_ARGS+=(--no-tests); shift ;;
        --record) RECORD=${2:?--record needs a value}; shift 2 ;;
        --rebuild-base) REBUILD_BASE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "error: $*" >&2; exit 1; }
command -v podman >/dev/null || die "podman not found (Debian: apt-get install podman runc)"
command -v runc >/dev/null || die "runc not found (Debian: apt-get install runc); crun does not work on this host"
[[ $(id -u) == 0 ]] || die "run as root: rootless podman needs subuid ranges and a user session this host lacks"

STATE=${VICC_CONTAINER_STATE:-/var/tmp/vicc_container}
mkdir -p "${STATE}"
cat > "${STATE}/containers.conf" <<CONF
[containers]
# crun/runc fail to apply the default nofile/nproc rlimits inside this VM's sandbox.
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF="${STATE}/containers.conf"

log() { echo "[$(date -u +%T)] $*"; }

# ---------------------------------------------------------------------------------------------- base image
base_s=None  # a Python literal: the record is written by python3 below
if [[ -z "${BASE}" ]]; then
    if [[ ${REBUILD_BASE} == 0 ]] && podman image exists "${LOCAL_BASE}"; then
        BASE=${LOCAL_BASE}
    elif timeout 60 podman pull -q "docker.io/library/${PUBLIC_BASE}" >/dev/null 2>"${STATE}/pull.err"; then
        BASE=${PUBLIC_BASE}
    else
        log "cannot pull ${PUBLIC_BASE} ($(tail -n 1 "${STATE}/pull.err")); making ${LOCAL_BASE} with debootstrap"
        command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
        rootfs="${STATE}/rootfs"
        rm -rf "${rootfs}"
        t0=${EPOCHREALTIME}
        # minbase + what python:3.11-slim gives: `python` on PATH, venv/ensurepip, CA certificates for pip.
        debootstrap --variant=minbase \
            --include=python3,python3-venv,python-is-python3,ca-certificates \
            bookworm "${rootfs}" http://deb.debian.org/debian > "${STATE}/debootstrap.log" 2>&1 \
            || die "debootstrap failed, see ${STATE}/debootstrap.log"
        # The archive's lists and .debs are not part of an image (the Dockerfile runs apt-get update itself).
        rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
        tar -C "${rootfs}" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - "${LOCAL_BASE}" >/dev/null
        base_s=$(awk -v a="${EPOCHREALTIME}" -v b="${t0}" 'BEGIN{printf "%.1f", a-b}')
        rm -rf "${rootfs}"
        BASE=${LOCAL_BASE}
    fi
fi
log "base image ${BASE}"

# ---------------------------------------------------------------------------------------------- the image
mounts=()
for d in /opt/wheels /opt/pypi /opt/pypi-more; do [[ -d $d ]] && mounts+=(-v "$d:$d:ro"); done
[[ -f /etc/pip.conf ]] && mounts+=(-v /etc/pip.conf:/etc/pip.conf:ro)
[[ -d /etc/xdg/pip ]] && mounts+=(-v /etc/xdg/pip:/etc/xdg/pip:ro)
[[ -f /etc/ssl/certs/ca-certificates.crt ]] && mounts+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
build_cmd=(podman build --network=host --build-arg "BASE_IMAGE=${BASE}" "${mounts[@]}" -t "${TAG}" "${ROOT}")
log "${build_cmd[*]}"
# The image this tag named before: each rebuild leaves it dangling (GBs); it is removed after the build below.
old_id=$(podman image inspect --format '{{.Id}}' "${TAG}" 2>/dev/null || true)
t0=${EPOCHREALTIME}
"${build_cmd[@]}" > "${STATE}/build.log" 2>&1 || { tail -n 30 "${STATE}/build.log"; die "podman build failed (log: ${STATE}/build.log)"; }
build_s=$(awk -v a="${EPOCHREALTIME}" -v b="${t0}" 'BEGIN{printf "%.1f", a-b}')
if [[ -n ${old_id} && ${old_id} != "$(podman image inspect --format '{{.Id}}' "${TAG}")" ]]; then
    podman rmi "${old_id}" >/dev/null 2>&1 || log "kept the previous image ${old_id:0:12} (still in use)"
fi
size=$(podman image inspect --format '{{.Size}}' "${TAG}")
base_size=$(podman image inspect --format '{{.Size}}' "${BASE}")
log "built ${TAG} in ${build_s} s: $((size / 1000000)) MB (base $((base_size / 1000000)) MB)"

# Layer sizes: where the bytes are (the dependency layer is torch + its nvidia-* wheels + DALI).
podman history --format '{{.Size}}\t{{.CreatedBy}}' "${TAG}" | cut -c1-160 > "${STATE}/history.txt"

mkdir -p "$(dirname "${RECORD}")"
python3 - "${RECORD}" <<PY
import json, os, subprocess, sys, time
rec = {
    "benchmark": "container_build",
    "command": "scripts/container/build_local.sh " + "${ARGS}".strip(),
    "build_command": "${build_cmd[*]}",
    "env": {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "podman": subprocess.run(["podman", "--version"], capture_output=True, text=True).stdout.strip(),
        "git_commit": subprocess.run(["git", "-C", "${ROOT}", "rev-parse", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
        "note": "measured here: 2 CPU cores shared with other work; wheels from the local pip index, "
                "DALI/OpenCV/others downloaded from PyPI",
    },
    "result": {
        "base_image": "${BASE}",
        "base_build_s": ${base_s},
        "base_size_bytes": ${base_size},
        "image": "${TAG}",
        "build_s": ${build_s},
        "image_size_bytes": ${size},
        "layers": open("${STATE}/history.txt").read().splitlines(),
    },
}
with open(sys.argv[1], "w") as f:
    json.dump(rec, f, indent=2)
    f.write("\n")
print("record:", sys.argv[1])
PY

# The check's record goes next to the build's (a test's temporary record must not overwrite the committed one).
[[ ${CHECKS} == 1 ]] && exec "${ROOT}/scripts/container/check_image.sh" --tag "${TAG}" \
    --record "$(dirname "${RECORD}")/container_check.json" "${CHECK_ARGS[@]}"
exit 0
