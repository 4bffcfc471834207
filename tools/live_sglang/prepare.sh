#!/usr/bin/env bash
# Prepares .live/ (git-ignored) with what a GPU machine without internet needs beside this
# checkout to run a live SGLang 0.5.23 server with kv-canary (gpu_run.sh): the wheels listed in
# gpu_wheels.txt, for CPython 3.12 on manylinux x86_64, and a kv-canary wheel, whose metadata
# carries the sglang.srt.plugins entry points (the checkout itself, first on PYTHONPATH, provides
# the code). The stand-ins (standins/, cuda_shims/) and the model configs (written per run by
# harness/sglang/model_configs.py) are in the checkout and travel with it.
#
# Run on a machine that reaches PyPI, in the checkout whose tree the device call sends:
#   bash tools/live_sglang/prepare.sh
# then name .live in the device call's carry. The checkout plus .live must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
python="$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )"
wheels=.live/wheels
rm -rf "$wheels"
mkdir -p "$wheels"
platforms=()
for tag in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
    manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
    platforms+=(--platform "$tag")
done
grep -v '^\s*#' tools/live_sglang/gpu_wheels.txt | grep -v '^\s*$' | while read -r spec; do
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$wheels" "$spec"
done
"$python" -m pip wheel -q --no-deps -w "$wheels" .
count=$(ls "$wheels"/*.whl | wc -l)
size_kib=$(du -sk "$wheels" | cut -f1)
echo "prepare: $count wheels, $((size_kib / 1024)) MiB in $wheels"
if [ "$size_kib" -gt $((60 * 1024)) ]; then
    echo "prepare: over 60 MiB; with the checkout the device call would pass its 64 MiB" >&2
    exit 1
fi
