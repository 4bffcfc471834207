"""The outcome of one (scenario, mode) run: what the report and the pytest plugin consume."""

from __future__ import annotations

import dataclasses
from typing import Any

from harness.expectations import ExpectationResult
from harness.injections import Injection
from harness.outputs import OutputCheck
from harness.run_evidence import ActionRecord, TwinRun


def pair_file_stem(scenario: str, mode: str) -> str:
    """File name stem of a (scenario, mode) pair's result and log: '<scenario>--<mode>'."""
    return f"{scenario}--{mode}"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RunResult:
    scenario: str
    mode: str
    scenario_path: str
    check: ExpectationResult | None  # None when the run ended without a verdict (see ``error``)
    error: str | None  # why there is no verdict: the server crashed, never became ready, timed out, ...
    wall_time_s: float
    log_path: str
    forward_count: int | None = None
    engine_violation_count: int | None = None  # the engine's own count, overflowed ring rows included
    failed_requests: int = 0
    injections: tuple[Injection, ...] = ()
    fault_ids: dict[str, int] = dataclasses.field(default_factory=dict)  # fault name -> the engine's fault id
    actions: tuple[ActionRecord, ...] = ()  # the workload's aborts and cache flushes, as they happened
    outputs: OutputCheck | None = None  # the answers against the token oracle and the clean twin
    twin: TwinRun | None = None  # the clean twin's run, for a scenario with a fault or an engine bug
    not_applicable: dict[str, str] = dataclasses.field(default_factory=dict)  # the scenario's other modes: why not

    @property
    def passed(self) -> bool:
        return self.error is None and self.check is not None and self.check.passed

    @property
    def pair_id(self) -> str:
        return f"{self.scenario}[{self.mode}]"

    def failure_message(self) -> str:
        """What did not hold, each with the first log line behind it and how many more the log has;
        empty when the run passed."""
        if self.passed:
            return ""
        lines = [f"{self.pair_id} ({self.scenario_path}) failed; server log: {self.log_path}"]
        if self.error is not None:
            lines.append("  no verdict: " + self.error.replace("\n", "\n    "))
        for outcome in self.check.unmet() if self.check is not None else []:
            lines.append(f"  expected {outcome.expectation}: {outcome.reason}")
            if outcome.log_lines:
                lines.append(f"    | {outcome.log_lines[0]}")
            more = max(outcome.line_count, len(outcome.log_lines)) - 1
            if more > 0:
                lines.append(f"    | ... and {more} more such line{'s' if more > 1 else ''} in {self.log_path}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "mode": self.mode,
            "scenario_path": self.scenario_path,
            "passed": self.passed,
            "error": self.error,
            "wall_time_s": round(self.wall_time_s, 3),
            "log_path": self.log_path,
            "forward_count": self.forward_count,
            "engine_violation_count": self.engine_violation_count,
            "failed_requests": self.failed_requests,
            "injections": [injection.to_json() for injection in self.injections],
            "fault_ids": dict(self.fault_ids),
            "actions": [action.to_json() for action in self.actions],
            "outputs": self.outputs.to_json() if self.outputs is not None else None,
            "twin": self.twin.to_json() if self.twin is not None else None,
            "not_applicable": dict(self.not_applicable),
            "check": self.check.to_json() if self.check is not None else None,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> RunResult:
        check = payload["check"]
        return cls(
            scenario=payload["scenario"],
            mode=payload["mode"],
            scenario_path=payload["scenario_path"],
            check=ExpectationResult.from_json(check) if check is not None else None,
            error=payload["error"],
            wall_time_s=payload["wall_time_s"],
            log_path=payload["log_path"],
            forward_count=payload["forward_count"],
            engine_violation_count=payload["engine_violation_count"],
            failed_requests=payload["failed_requests"],
            injections=tuple(Injection.from_json(item) for item in payload["injections"]),
            # Results written before these fields existed still read.
            fault_ids=dict(payload.get("fault_ids", {})),
            actions=tuple(ActionRecord.from_json(item) for item in payload.get("actions", ())),
            outputs=OutputCheck.from_json(payload["outputs"]) if payload.get("outputs") else None,
            twin=TwinRun.from_json(payload["twin"]) if payload.get("twin") else None,
            not_applicable=dict(payload.get("not_applicable", {})),
        )
