#!/usr/bin/env bash
# Every GPU benchmark and the GPU-marked tests in one call of at most about 9.5 minutes on one H200,
# from the repository's root. Output goes to $OUT (default ./gpu-out): bench.txt (every table, in
# order, each row as it is measured), tests.txt, warm.txt, and one JSON per benchmark.
#
#   bash bench/run_all_gpu.sh           # everything: the benchmarks, then the tests in the time left
#   bash bench/run_all_gpu.sh tests     # the GPU-marked tests alone, with the whole budget
#
# Carry .anchor/ (SGLang's verify kernel, from ../shared/anchor/make_anchor.sh) and .whl/ (pydantic and
# its dependencies for py3.12, which the mock engine's settings and the tests' root conftest import):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl pydantic==2.14.4 pydantic_core==2.50.5 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
#   run(command="bash bench/run_all_gpu.sh", carry=[".anchor", ".whl"], timeout_s=600)
#
# Time goes to Triton's compiler first: a variant of the per-forward kernel that hashes real K/V
# takes tens of seconds to compile, single-threaded. So the warm-up compiles every variant the
# benchmarks launch, each once, in parallel processes, into Triton's on-disk cache; each stage then
# runs under its own limit, cut to what is left of the whole budget, and prints its rows as they come.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
BUDGET=${BUDGET:-570}  # seconds for the whole script: the call's limit is 600
started=$(date +%s)
elapsed() { echo $(($(date +%s) - started)); }
note() { echo "== $* ($(elapsed) s)" | tee -a "$OUT/bench.txt"; }
left() { echo $((BUDGET - $(elapsed))); }
stage() {  # stage SECONDS NAME COMMAND...: one benchmark, its output appended to bench.txt
    local limit=$1 name=$2
    shift 2
    [ "$limit" -gt "$(left)" ] && limit=$(left)
    if [ "$limit" -lt 5 ]; then
        note "$name skipped: the budget is spent"
        return
    fi
    note "$name (limit $limit s)"
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
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
  echo "cpus $(nproc)"; } | tee "$OUT/bench.txt"

gpu_tests() {  # gpu_tests SECONDS: the GPU-marked tests, interrupted (with a summary) at SECONDS
    local limit=$1
    note "GPU-marked tests (limit $limit s)"
    if python3 -c 'import pydantic, yaml' 2>/dev/null; then
        tests=(tests/unit/canary tests/unit/mock_models/test_engine_canary.py)
        conftest=()
    else  # without pydantic the root conftest cannot load the harness plugin; the canary's tests need neither
        echo "pydantic is not importable (carry .whl/): running tests/unit/canary without the conftests" | tee -a "$OUT/tests.txt"
        tests=(tests/unit/canary)
        conftest=(--noconftest)
    fi
    # SIGINT first: pytest then prints what passed and failed so far; KILL 15 s later if it hangs.
    timeout -s INT -k 15 "$limit" python3 -m pytest -m gpu -p no:cacheprovider -q -rfE -n "${TEST_WORKERS:-8}" \
        "${conftest[@]}" "${tests[@]}" 2>&1 | tee -a "$OUT/tests.txt" | tail -n 15
    note "tests ended with status ${PIPESTATUS[0]} (124 or 130: cut at $limit s)"
}

if [ "${1:-all}" = tests ]; then
    gpu_tests "$(left)"
    note "done"
    exit 0
fi

stage 15 bytes_per_token python3 -m bench.bytes_per_token

# Triton compiles a kernel variant at its first launch, single-threaded: compile every variant the
# benchmarks launch first, one process per share, into Triton's on-disk cache (each per-forward
# compile key once, the slowest first). warm.txt keeps each process's errors and its time.
note "warm-up: the benchmarks' kernel variants, compiled in 14 processes"
warm() { local name=$1; shift; local t0=$SECONDS
    timeout "${WARM_LIMIT:-200}" "$@" >>"$OUT/warm.txt" 2>&1
    echo "warm $name: status $? after $((SECONDS - t0)) s" >>"$OUT/warm.txt"; }
for shard in 0 1 2 3 4 5 6 7 8 9; do
    warm "per_forward $shard/10" python3 -m bench.per_forward_cost --quick --warm "$shard/10" &
done
warm "sweep none" python3 -m bench.sweep_throughput --warm none &
warm "sweep partial" python3 -m bench.sweep_throughput --warm partial &
warm "engine mha" python3 -m bench.engine_decode_cuda --warm mha &
warm "engine swa" python3 -m bench.engine_decode_cuda --warm swa &
wait
note "warm-up done"
cat "$OUT/warm.txt" | grep '^warm ' | tee -a "$OUT/bench.txt"

stage 60 verify_vs_anchor python3 -m bench.verify_vs_anchor --anchor-dir .anchor --json "$OUT/verify.json"
stage 110 per_forward_cost python3 -m bench.per_forward_cost --quick --json "$OUT/per_forward.json"
stage 50 sweep_host_cost python3 -m bench.sweep_host_cost --step-nodes 64 256 --json "$OUT/host_cost.json"
stage 50 sweep_throughput python3 -m bench.sweep_throughput --json "$OUT/sweep.json"
stage 45 engine_decode_cuda python3 -m bench.engine_decode_cuda --json "$OUT/engine_decode.json"
if [ "$(left)" -gt 20 ]; then
    gpu_tests "$(left)"
else
    note "GPU-marked tests skipped: the budget is spent (run: bash bench/run_all_gpu.sh tests)"
fi
note "done"
