# Source this before starting a live SGLang 0.5.23 server with kv-canary, or before
# `python -m harness run --target sglang`:  source tools/live_sglang/env.sh cpu|cuda
#
# Puts the test-only stand-ins on PYTHONPATH (docs/SGLANG.md, "A live server"): the sgl_kernel
# stand-in (standins/), and per device a sitecustomize (cpu_shims/: torchvision stub and pinned
# memory; cuda_shims/: the CUTLASS dual-GEMM module). LIVE_SITE, when set, is a folder of
# packages installed from carried wheels (gpu_run.sh sets it); it comes after the stand-ins.
_live_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_live_repo="$(cd "$_live_here/../.." && pwd)"
case "${1:-}" in
    cpu) _live_shims="$_live_here/cpu_shims" ;;
    cuda) _live_shims="$_live_here/cuda_shims" ;;
    *) echo "usage: source tools/live_sglang/env.sh cpu|cuda" >&2; return 2 ;;
esac
export PYTHONPATH="$_live_shims:$_live_here/standins:$_live_repo${LIVE_SITE:+:$LIVE_SITE}${PYTHONPATH:+:$PYTHONPATH}"
export SGLANG_SKIP_SGL_KERNEL_VERSION_CHECK=1  # the stand-in has no version to check
export SGLANG_FORCE_FUSED_OP_BACKEND=torch     # norms and activations in torch, not sgl_kernel
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 # dummy weights: nothing to download
unset _live_here _live_repo _live_shims
