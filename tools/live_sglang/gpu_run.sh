#!/usr/bin/env bash
# One device call: the live scenarios against SGLang 0.5.23 servers on the GPU machine, CUDA graphs
# off, then on; modes mha and swa; every (scenario, mode) pair its own server, all of a round at
# once. Needs .live/ from prepare.sh carried beside the checkout.
#
#   bash tools/live_sglang/gpu_run.sh [ROUND_SECONDS]      (per round, default 240)
#
# Writes under $OUT (or /tmp/live-out): summary.txt (versions, each round's results),
# report-graphs-off.md, report-graphs-on.md, live-logs.tgz (every server log, result, model).
#
# LIVE_GRAPHS=off|on runs one round only (default: both). LIVE_SCENARIOS="a b" picks the scenarios
# (default: the 15 below). LIVE_DEVICE=cpu runs the same on this project's CPU machines, for
# checking the script: the project's .venv instead of the carried wheels, the graphs-off round
# only, the scenarios one after another.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-/tmp/live-out}"
round_s="${1:-240}"
device="${LIVE_DEVICE:-cuda}"
work="${LIVE_WORK:-/tmp/live-work}"
mkdir -p "$out" "$work"
summary="$out/summary.txt"
if [ "$device" = cuda ]; then
    python=python3
    site=/tmp/live-site
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        .live/wheels/*.whl || { echo "gpu_run: installing the carried wheels failed" | tee -a "$summary"; exit 3; }
    export LIVE_SITE="$site"
    # Never NVLink multicast on these hosts (KINDS.md); harmless on one GPU.
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    case "${LIVE_GRAPHS:-both}" in
        off) rounds=("graphs-off --no-cuda-graphs") ;;
        on) rounds=("graphs-on --cuda-graphs") ;;
        *) rounds=("graphs-off --no-cuda-graphs" "graphs-on --cuda-graphs") ;;
    esac
else
    python=.venv/bin/python
    rounds=("graphs-off --no-cuda-graphs")
fi
source tools/live_sglang/env.sh "$device"
export PYTHONUNBUFFERED=1
{
    date -u
    [ "$device" = cuda ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$python" -c 'import sys, torch, triton, transformers, sglang, kv_canary
print("python", sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__,
      "transformers", transformers.__version__, "sglang", sglang.__version__)
from importlib.metadata import entry_points
print("plugins:", sorted(ep.name for ep in entry_points(group="sglang.srt.plugins")))'
} >> "$summary" 2>&1

read -r -a scenarios <<< "${LIVE_SCENARIOS:-baseline-mha req-to-token-remap-mha double-free-mha \
evict-locked-radix-node-mha corrupt-kv-bytes-used-mha corrupt-kv-bytes-cached-unused-mha swap-next-token-mha \
baseline-swa req-to-token-remap-swa double-free-swa evict-locked-radix-node-swa corrupt-kv-bytes-used-swa \
corrupt-kv-bytes-cached-unused-swa swap-next-token-swa remap-swa-slot-swa}"

run_pair() {  # name dir flags...
    local name="$1" dir="$2"
    shift 2
    timeout -s TERM "$round_s" "$python" -m harness run "scenarios/$name.yaml" --target sglang --device "$device" \
        "$@" --timeout "$((round_s - 20))" --report "$dir" > "$dir/$name.out" 2>&1
}

for round in "${rounds[@]}"; do
    read -r label flags <<< "$round"
    dir="$work/$label"
    mkdir -p "$dir"
    echo "== round $label: ${#scenarios[@]} pairs, ${round_s}s each" >> "$summary"
    for name in "${scenarios[@]}"; do
        if [ "$device" = cuda ]; then
            run_pair "$name" "$dir" $flags &
        else
            run_pair "$name" "$dir" $flags
        fi
    done
    wait
    for name in "${scenarios[@]}"; do
        row="$(sed -n '/^scenario /{n;p;q}' "$dir/$name.out")"
        echo "${row:-$name: no result (killed at ${round_s}s or failed to start; see live-logs.tgz)}" >> "$summary"
    done
    "$python" -m harness report "$dir" >> "$summary" 2>&1
    cp "$dir/report.md" "$out/report-$label.md" 2>/dev/null
done
tar czf "$out/live-logs.tgz" -C "$work" . 2>> "$summary"
cat "$summary"
