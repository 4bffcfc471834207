"""What the engine reports about a scheduled fault (``GET /kv_canary/injections``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from kv_canary_contract import INJECTION_STATUSES, InjectionStatus


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Injection:
    fault_id: int
    kind: str
    status: InjectionStatus
    step: int | None  # the forward at which it was applied; None until then
    detail: str = ""

    @classmethod
    def from_json(cls, payload: Mapping[str, object]) -> Injection:
        """Parse one entry of the engine's answer; a malformed entry is the engine's bug, said plainly."""
        status = payload.get("status")
        step = payload.get("step")
        fault_id = payload.get("fault_id")
        if (
            status not in INJECTION_STATUSES
            or not isinstance(fault_id, int)
            or not (step is None or isinstance(step, int))
        ):
            raise ValueError(
                f"malformed injection entry from the engine: {dict(payload)!r}; expected "
                f"{{fault_id: int, kind: str, status: {'|'.join(INJECTION_STATUSES)}, step: int|null, "
                "detail: str}"
            )
        return cls(
            fault_id=fault_id,
            kind=str(payload.get("kind", "")),
            status=status,
            step=step,
            detail=str(payload.get("detail", "")),
        )

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)
