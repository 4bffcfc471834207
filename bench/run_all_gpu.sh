#!/usr/bin/env bash
# Every GPU benchmark and the GPU-marked tests in one go (at most about 9 minutes on one H200), from the
# repository's root. Output goes to $OUT (default ./gpu-out): bench.txt (every table, in order),
# tests.txt, warm.txt, and one JSON per benchmark.
#
# Carry .anchor/ (SGLang's verify kernel, from ../shared/anchor/make_anchor.sh) and .whl/ (pydantic and
# its dependencies for py3.12, which the mock engine's settings and the tests' root conftest import):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl pydantic==2.14.4 pydantic_core==2.50.5 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
#   run(command="bash bench/run_all_gpu.sh", carry=[".anchor", ".whl"], timeout_s=600)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
started=$(date +%s)
note() { echo "== $* ($(($(date +%s) - started)) s)" | tee -a "$OUT/bench.txt"; }
stage() {  # stage SECONDS NAME COMMAND...: one benchmark, its output appended to bench.txt
    local limit=$1 name=$2
    shift 2
    note "$name"
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/bench.txt"
    local status=${PIPESTATUS[0]}
    [ "$status" = 0 ] || note "$name ended with status $status (124: cut at its ${limit} s)"
}

site=/tmp/kv-canary-site
mkdir -p "$site"
for wheels in .anchor/whl .whl; do
    if [ -d "$wheels" ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
    fi
done
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } | tee "$OUT/bench.txt"

# Triton compiles a kernel variant at its first launch, single-threaded: compile the per-forward
# benchmark's variants first, in parallel processes, into Triton's on-disk cache.
note "warm-up: compiling the per-forward and sweep kernel variants in 8 processes"
for shard in 0 1 2 3 4 5 6; do
    timeout 110 python3 -m bench.per_forward_cost --quick --warm "$shard/7" >>"$OUT/warm.txt" 2>&1 &
done
timeout 110 python3 -m bench.sweep_throughput --warm >>"$OUT/warm.txt" 2>&1 &
wait

stage 80 verify_vs_anchor python3 -m bench.verify_vs_anchor --anchor-dir .anchor --json "$OUT/verify.json"
stage 120 per_forward_cost python3 -m bench.per_forward_cost --quick --json "$OUT/per_forward.json"
stage 60 sweep_throughput python3 -m bench.sweep_throughput --json "$OUT/sweep.json"
stage 60 sweep_host_cost python3 -m bench.sweep_host_cost --step-nodes 32 128 --json "$OUT/host_cost.json"

note "GPU-marked tests"
if python3 -c 'import pydantic, yaml' 2>/dev/null; then
    tests=(tests/unit/canary tests/unit/mock_models/test_engine_canary.py)
    conftest=()
else  # without pydantic the root conftest cannot load the harness plugin; the canary's tests need neither
    echo "pydantic is not importable (carry .whl/): running tests/unit/canary without the conftests" | tee "$OUT/tests.txt"
    tests=(tests/unit/canary)
    conftest=(--noconftest)
fi
timeout 100 python3 -m pytest -m gpu -p no:cacheprovider -q -n 4 "${conftest[@]}" "${tests[@]}" 2>&1 | tee -a "$OUT/tests.txt"
note "tests ended with status ${PIPESTATUS[0]} (124: cut at 100 s)"

stage 40 engine_decode_cuda python3 -m bench.engine_decode_cuda --json "$OUT/engine_decode.json"
stage 10 bytes_per_token python3 -m bench.bytes_per_token
note "done"
