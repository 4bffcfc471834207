"""The tiny dummy-weight models a live SGLang server runs here (``--load-format dummy``: no weights
are read, only ``config.json``), one per model mode.

* mha: ``LlamaForCausalLM``, 2 layers; SGLang guards it with an ``MHATokenToKVPool``;
* swa: ``MellumForCausalLM`` with one sliding-window and one full-attention layer, dense MLPs;
  SGLang 0.5.23 treats the architecture as hybrid SWA (``is_hybrid_swa_model``), so the pool is an
  ``SWAKVPool`` (full and SWA sub-pools) and the tree a ``UnifiedRadixCache`` with FULL and SWA
  components. Its attention layer's window is ``sliding_window - 1`` tokens of history
  (``mellum.get_attention_sliding_window_size``), so ``sliding_window`` is the scenario's
  ``swa_window`` plus one. ``num_experts`` must be positive for SGLang's expert bookkeeping even
  though every MLP is dense.

Run ``python -m harness.sglang.model_configs MODE DIR [--swa-window N]`` to write one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LIVE_MODES = ("mha", "swa")

_COMMON = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 1024,
    "max_position_embeddings": 4096,
    "hidden_act": "silu",
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def model_config(mode: str, *, swa_window: int) -> dict[str, object]:
    if mode == "mha":
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            **_COMMON,
        }
    if mode == "swa":
        return {
            "architectures": ["MellumForCausalLM"],
            "model_type": "mellum",
            "rms_norm_eps": 1e-6,
            "sliding_window": swa_window + 1,
            "layer_types": ["sliding_attention", "full_attention"],
            "mlp_layer_types": ["dense", "dense"],
            "num_experts": 2,
            "num_experts_per_tok": 1,
            "moe_intermediate_size": 128,
            **_COMMON,
        }
    raise ValueError(f"mode {mode!r} has no live SGLang model here; use one of {', '.join(LIVE_MODES)}")


def write_model(directory: Path, mode: str, *, swa_window: int) -> Path:
    """Write ``directory/config.json``; returns the directory, SGLang's ``--model-path``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model_config(mode, swa_window=swa_window), indent=2) + "\n")
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=LIVE_MODES)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--swa-window", type=int, default=32, help="mode swa: tokens of history a window layer reads")
    args = parser.parse_args()
    print(write_model(args.directory, args.mode, swa_window=args.swa_window))


if __name__ == "__main__":
    main()
