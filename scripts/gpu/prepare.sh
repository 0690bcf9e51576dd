#!/usr/bin/env bash
# Prepare a GPU validation on the CPU machine (no device time): build the sets that must travel, pack DALI and
# the few packages the GPU machine lacks, and print the exact sequence of `run` calls with their carry lists.
#
#   bash scripts/gpu/prepare.sh            # gpu_data/ (sets) and .gpu/part-NN (packages), then the calls
#   bash scripts/gpu/prepare.sh --data-only
#
# The GPU machine (docs/gpu_validation.md) runs Python 3.12 with its own torch 2.11 / triton 3.6 (never
# carried), numpy, scipy, scikit-learn, matplotlib, tensorboard, tqdm, PyYAML and OpenCV; it reaches no package
# registry and cannot encode video (no PyAV). So the pack holds, for CPython 3.12: nvidia-dali-cuda130 (the
# driver there is CUDA 13), its small pure dependencies, PyAV (the DataLoader baseline decodes with it),
# webdataset, braceexpand and omegaconf 2.4.0 (2.3.0 needs an antlr4 runtime that exists only as an sdist; 2.4
# vendors it; the config tests pass with both). The wheels are unpacked here (a wheel is a zip: unpacking is
# installing for these), tarred and compressed with xz, and split into parts that fit one call's 64 MiB beside
# the working tree; the last part travels with gpu_data/ in the call that validates.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-python}
DALI=nvidia-dali-cuda130==2.4.0
PART_MB=${PART_MB:-56}

"$PY" -c "import vicc_fast, av" 2>/dev/null || {
    echo "prepare: install the project first (README: pip install -e '.[test]')" >&2
    exit 2
}
echo "== sets -> gpu_data/ (loader benchmark set, pattern sets at 128x171, demo-size probe set)"
t0=$(date +%s)
"$PY" scripts/gpu/validate.py make-data --out gpu_data
du -sh gpu_data/*
echo "   $(($(date +%s) - t0)) s"
[ "${1:-}" = "--data-only" ] && exit 0

echo "== packages for CPython 3.12 -> .gpu/part-NN"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dl() {
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$stage/wheels" "$@" 2>&1 | grep -v "is ignored" || true
}
dl "$DALI" av optree nvtx "libcst~=1.8" "astunparse<=1.6.3" "gast<=0.7.0" makefun webdataset==1.0.2 \
    braceexpand omegaconf==2.4.0
mkdir -p "$stage/site"
for w in "$stage"/wheels/*.whl; do
    "$PY" -m zipfile -e "$w" "$stage/site"
done
# keep the GPU machine's Python only; fail here, not there, when DALI's backend for 3.12 is missing
find "$stage/site" -name '*.cpython-3*' ! -name '*cpython-312-*' -delete
ls "$stage"/site/nvidia/dali/backend_impl.cpython-312-*.so >/dev/null
rm -rf "$stage/site/nvidia/dali/include"  # C++ headers for plugin builds: not needed to run
du -sh "$stage/site"
rm -rf .gpu && mkdir .gpu
echo "   compressing (a few minutes on 2 cores) ..."
(cd "$stage/site" && tar cf - .) | xz -9 -T2 | split -b "${PART_MB}M" -d - .gpu/part-
(cd .gpu && sha256sum part-* >SHA256SUMS)
ls -l .gpu
n=$(ls .gpu/part-* | wc -l)
last=$(printf 'part-%02d' $((n - 1)))
size=$(du -cm .gpu/"$last" gpu_data | tail -1 | cut -f1)
echo "   last call carries $last + gpu_data: ${size} MiB (+ the working tree); limit 64 MiB"

cat <<MSG

== device calls (back to back: the machine goes back about 30 s after a call ends, and with it /tmp)
MSG
for ((i = 0; i < n - 1; i++)); do
    p=$(printf 'part-%02d' "$i")
    echo "  call $((i + 1)): carry [\".gpu/$p\"]"
    echo "          command: mkdir -p /tmp/gpu && cp .gpu/$p /tmp/gpu/ && ls -l /tmp/gpu"
done
echo "  call $n: carry [\".gpu/$last\", \".gpu/SHA256SUMS\", \"gpu_data\"]   timeout_s 600"
echo "          command: VICC_CODE_COMMIT=$(git rev-parse HEAD) bash scripts/gpu/validate.sh --pack /tmp/gpu --out /tmp/vout;"
echo "                   rc=\$?; tar czf \$OUT/validation.tgz -C /tmp/vout .; cp /tmp/vout/summary.md \$OUT/; exit \$rc"
echo "  (commit first: the device gets the working tree but this session's starting .git, so the record names the"
echo "   code by VICC_CODE_COMMIT; \$OUT returns at most 8 files, hence the tarball)"
echo
echo "validate.sh copies .gpu/$last beside the others, checks SHA256SUMS, unpacks into /tmp/site, runs every step"
echo "(scripts/gpu/validate.py, ~8 min budget) and leaves the JSON records and summary.md in \$OUT."
