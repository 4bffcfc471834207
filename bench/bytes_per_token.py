"""The canary's bytes per cached token and forward, as a fraction of what attention itself reads.

Analytic, from the kernels' memory traffic. Per forward, attention reads every cached token's K
and V in every layer. The canary's verify launches read, per cached token, its slot from the
request's ``req_to_token`` row once per launch (4 bytes; the kernels plan inside their launches,
no plan is written or read) and one 32-byte record per guarded K/V half and phase (HEAD and TAIL,
K and V), the predecessor's record coming from the neighbouring lane; the TAIL launch adds the
hashed real-K/V bytes (16 per layer in `partial`, the whole row in `all`; a 16-byte piece costs a
32-byte DRAM sector, shown separately).

    python -m bench.bytes_per_token   [defaults: Llama-3-8B: 32 layers, 8 KV heads x 128, bf16]
"""

from __future__ import annotations

import argparse

SLOT_BYTES = 4  # a req_to_token entry, read once per verify launch
RECORD_BYTES = 32
SECTOR_BYTES = 32
PARTIAL_BYTES = 16
VERIFY_LAUNCHES = 2  # HEAD verify and TAIL, each checking K and V
RECORDS = 4  # HEAD and TAIL, K and V


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype-bytes", type=int, default=2)
    args = parser.parse_args()
    row = args.kv_heads * args.head_dim * args.dtype_bytes
    attention = 2 * args.layers * row  # K and V of every layer
    base = VERIFY_LAUNCHES * SLOT_BYTES + RECORDS * RECORD_BYTES
    hashed = {
        "none": (0, 0),
        "partial": (2 * args.layers * PARTIAL_BYTES, 2 * args.layers * SECTOR_BYTES),
        "all": (2 * args.layers * row, 2 * args.layers * row),
    }
    print(
        f"attention reads {attention} bytes per cached token per forward "
        f"({args.layers} layers x 2 x {args.kv_heads} heads x {args.head_dim} x {args.dtype_bytes} B)"
    )
    print("| real KV | canary bytes / token | with sector waste | fraction of attention's reads |")
    print("|---|---|---|---|")
    for mode, (logical, moved) in hashed.items():
        print(f"| {mode} | {base + logical} | {base + moved} | {100 * (base + moved) / attention:.2f}% |")


if __name__ == "__main__":
    main()
