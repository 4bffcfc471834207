"""``kv_canary_swa_divergence={...}``: how the SWA group's verify work diverges from the FULL group's."""

from __future__ import annotations

import dataclasses
import json

from kv_canary.log_lines.line_search import LineSearch

_PREFIX = "kv_canary_swa_divergence="
_FIELDS = ("forward_ct", "verify_full", "verify_swa", "swa_full_idx_divergence", "swa_out_of_window_tokens")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SwaDivergenceLog(LineSearch):
    forward_ct: int  # forwards observed so far
    verify_full: int  # FULL-group verify entries accumulated over those forwards
    verify_swa: int  # SWA-group verify entries accumulated over those forwards
    swa_full_idx_divergence: int  # live tokens whose SWA slot index differs from their full index
    swa_out_of_window_tokens: int  # live tokens whose SWA mapping is 0 (slid out or evicted)

    def format(self) -> str:
        payload = {name: getattr(self, name) for name in _FIELDS}
        return _PREFIX + json.dumps(payload, separators=(",", ":"))

    @classmethod
    def parse(cls, line: str) -> SwaDivergenceLog | None:
        start = line.find(_PREFIX)
        if start < 0:
            return None
        try:
            payload, _ = json.JSONDecoder().raw_decode(line, start + len(_PREFIX))
        except json.JSONDecodeError:
            return None
        if not isinstance(payload, dict) or set(payload) != set(_FIELDS):
            return None
        if not all(isinstance(payload[name], int) for name in _FIELDS):
            return None
        return cls(**payload)
