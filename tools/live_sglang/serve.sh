#!/usr/bin/env bash
# Starts a live SGLang 0.5.23 server with kv-canary installed through its sglang.srt.plugins entry
# point, SGLang's own canary off (its default), the token checks on, dummy weights:
#
#   bash tools/live_sglang/serve.sh cpu|cuda mha|swa [PORT] [-- MORE SGLANG FLAGS]
#
# e.g. `bash tools/live_sglang/serve.sh cuda mha 30000 -- --disable-cuda-graph`. The model is
# harness/sglang/model_configs.py's (written to .live/models/MODE). KV_CANARY_* variables already
# set win over the defaults below (docs/SGLANG.md lists them). The fault injector stays off: it
# needs KV_CANARY_FAULT_INJECTOR_PORT and _TOKEN, which only the harness sets.
set -euo pipefail
cd "$(dirname "$0")/../.."
device="${1:?usage: serve.sh cpu|cuda mha|swa [PORT] [-- SGLANG FLAGS]}"
mode="${2:?usage: serve.sh cpu|cuda mha|swa [PORT] [-- SGLANG FLAGS]}"
port="${3:-30000}"
shift $(( $# < 3 ? $# : 3 ))
[ "${1:-}" = "--" ] && shift
python="$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )"
source tools/live_sglang/env.sh "$device"
model_dir="$("$python" -m harness.sglang.model_configs "$mode" ".live/models/$mode" --swa-window 32)"
export KV_CANARY_MODE="${KV_CANARY_MODE:-log}"
export KV_CANARY_REAL_KV_HASH="${KV_CANARY_REAL_KV_HASH:-partial}"
export KV_CANARY_SWEEP_INTERVAL="${KV_CANARY_SWEEP_INTERVAL:-8}"
export KV_CANARY_STATS_INTERVAL="${KV_CANARY_STATS_INTERVAL:-100}"
export SGLANG_KV_CANARY_ENABLE_VERIFY_TOKEN_ASSERT=1    # the token snapshot the token checks read
export SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python    # tree nodes with tokens, for the sweep
device_flags=(--attention-backend triton)
if [ "$device" = cpu ]; then
    export SGLANG_USE_CPU_ENGINE=1
    device_flags=(--device cpu --attention-backend torch_native --disable-cuda-graph)
fi
exec "$python" -m sglang.launch_server --model-path "$model_dir" --load-format dummy --skip-tokenizer-init \
    --host 127.0.0.1 --port "$port" --tp 1 --page-size 1 --max-total-tokens 4096 --sampling-backend pytorch \
    "${device_flags[@]}" "$@"
