"""Quantized weight type names, which SGLang's quantization modules read at import; no quantized
model runs on the stand-in, so a name is all each needs to be."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ScalarType:
    name: str


class _ScalarTypes:
    def __getattr__(self, name: str) -> ScalarType:
        if name.startswith("__"):
            raise AttributeError(name)
        return ScalarType(name)


scalar_types = _ScalarTypes()
