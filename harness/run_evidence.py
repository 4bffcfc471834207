"""What a run gathered besides the server log and the injections, for the judge: the workload's actions,
the outputs checked against the token oracle and the clean twin, and the twin's own run."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from harness.outputs import OutputCheck


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ActionRecord:
    """What became of a workload action: an abort or a cache flush."""

    kind: Literal["abort", "flush_cache"]
    phase: int
    request: str | None  # an abort's request
    step: int | None  # forwards the engine had run when it was sent
    done: bool
    detail: str

    def describe(self) -> str:
        what = f"abort {self.request}" if self.kind == "abort" else "flush_cache"
        at = f" at step {self.step}" if self.step is not None else ""
        return f"phase {self.phase}: {what}{at}: {self.detail}"

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> ActionRecord:
        return cls(**payload)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TwinRun:
    """The clean twin: the same workload, its actions and the run's filler requests, on a server without the
    scenario's faults and engine bugs. It must stay clean, and its outputs are the run's reference."""

    log_path: str
    error: str | None  # why it gave no verdict (the server crashed, ...)
    violations: tuple[str, ...] = ()  # the violation lines it logged (the first few)
    violation_count: int = 0
    outputs: OutputCheck | None = None  # its answers against the token oracle
    actions: tuple[ActionRecord, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "log_path": self.log_path,
            "error": self.error,
            "violations": list(self.violations),
            "violation_count": self.violation_count,
            "outputs": self.outputs.to_json() if self.outputs is not None else None,
            "actions": [action.to_json() for action in self.actions],
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> TwinRun:
        outputs = payload["outputs"]
        return cls(
            log_path=payload["log_path"],
            error=payload["error"],
            violations=tuple(payload["violations"]),
            violation_count=payload["violation_count"],
            outputs=OutputCheck.from_json(outputs) if outputs is not None else None,
            actions=tuple(ActionRecord.from_json(item) for item in payload["actions"]),
        )


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RunEvidence:
    fault_ids: Mapping[str, int] = dataclasses.field(default_factory=dict)  # fault name -> the engine's fault id
    actions: tuple[ActionRecord, ...] = ()
    outputs: OutputCheck | None = None  # None: the target's outputs have no reference (a real model)
    twin: TwinRun | None = None  # None: nothing to compare with (a baseline), or the target has no reference
