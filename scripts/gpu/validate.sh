#!/usr/bin/env bash
# GPU validation in one command (docs/gpu_validation.md): every step under its own timeout, JSON records and a
# summary table in $OUT (or --out DIR).
#
#   bash scripts/gpu/validate.sh --pack /tmp/gpu      # on the lent GPU machine, after prepare.sh's calls
#   bash scripts/gpu/validate.sh --dry-run            # here: the same steps on the CPU, tiny shapes (< 5 min)
#   bash scripts/gpu/validate.sh --only kernels,amp   # a subset (steps: python scripts/gpu/validate.py run -h)
#
# --pack DIR: the folder holding .gpu/part-NN copied by the earlier calls; the last part travels with this call.
# The parts are checked against .gpu/SHA256SUMS and unpacked into /tmp/site (once per machine), which then goes on
# PYTHONPATH. Every other option goes to `scripts/gpu/validate.py run`.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
pack=""
args=()
while [ $# -gt 0 ]; do
    case $1 in
    --pack)
        pack=${2:?--pack needs a folder}
        shift 2
        ;;
    *)
        args+=("$1")
        shift
        ;;
    esac
done
if [ -n "$pack" ]; then
    if [ ! -f /tmp/site/.unpacked ]; then
        [ -f .gpu/SHA256SUMS ] || { echo "validate.sh: .gpu/SHA256SUMS was not carried (prepare.sh lists the calls)" >&2; exit 2; }
        mkdir -p "$pack" && cp .gpu/part-* "$pack"/ 2>/dev/null
        if ! (cd "$pack" && sha256sum -c --quiet "$OLDPWD/.gpu/SHA256SUMS"); then
            echo "validate.sh: a package part in $pack is missing or corrupt (the machine went back between calls?): start over from call 1" >&2
            exit 2
        fi
        t0=$(date +%s)
        mkdir -p /tmp/site && cat "$pack"/part-* | xz -dc | tar x -C /tmp/site && touch /tmp/site/.unpacked || exit 2
        echo "unpacked the packages into /tmp/site in $(($(date +%s) - t0)) s"
    fi
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
exec "$PY" scripts/gpu/validate.py run "${args[@]}"
