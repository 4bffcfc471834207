"""Tiny deterministic models (mha, swa, dsv4) and a small SGLang-shaped serving engine around them."""
