"""Judging a run: from (scenario, mode, server log, injections) to which expectations held and why.

A pure function over text, so it is tested on synthetic logs; detection is read only through the
frozen log-line parsers, the same ones users and the engine's tests assert through.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from harness.detection_outcomes import Applied, bug_detected, detection, fault_applied, fault_windows, stays_clean
from harness.expectation_outcome import ExpectationOutcome
from harness.harm_outcomes import harm, twin_and_actions
from harness.injections import Injection
from harness.outputs import WrongOutput
from harness.run_evidence import RunEvidence
from harness.scenario.comparison import Comparison
from harness.scenario.model import Scenario, SwaDivergenceExpectation
from harness.scenario.modes import mode_has_full_and_swa_groups
from harness.scenario.rules import fault_bound
from kv_canary.log_lines import SwaDivergenceLog, ViolationRecord, ViolationRepeatsLog

__all__ = ["ExpectationOutcome", "ExpectationResult", "FaultVerdict", "check_expectations"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FaultVerdict:
    """One injected fault: when it was applied, and whether (and how soon) a violation followed."""

    name: str
    kind: str
    injection_step: int | None  # its first application; None if it was never applied
    detected: bool  # a violation in its window, within its bound when detection is expected
    latency_steps: int | None  # the first violation in its window minus its injection step
    within_steps: int | None

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> FaultVerdict:
        return cls(**payload)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ExpectationResult:
    outcomes: tuple[ExpectationOutcome, ...]
    injection_step: int | None  # first forward a fault was applied at
    detected: bool  # a violation at or after the injection (within the bound, when one is set)
    latency_steps: int | None  # first violation at or after the injection, minus the injection step
    violation_count: int
    launch_tags_seen: tuple[str, ...]
    fail_reasons_seen: tuple[str, ...]
    expects_detection: bool | None = None  # the scenario's expect.detected; None in older results
    within_steps: int | None = None  # its bound, when detection is expected (the first fault's)
    faults: tuple[FaultVerdict, ...] = ()  # each injected fault on its own
    first_wrong: WrongOutput | None = None  # the first harm: the earliest output that went wrong
    harm_judged: bool = False  # outputs were checked (the target has a token oracle)
    detected_before_harm: bool | None = None  # the first violation came no later than the first wrong output
    # Violations logged by each rank of a multi-rank engine (lines with rank=); empty for one rank.
    violations_by_rank: tuple[tuple[int, int], ...] = ()

    @property
    def passed(self) -> bool:
        return all(outcome.held for outcome in self.outcomes)

    @property
    def late_by_steps(self) -> int | None:
        """How many forwards past its bound a detection came; None unless it came late."""
        if self.within_steps is None or self.latency_steps is None or self.latency_steps <= self.within_steps:
            return None
        return self.latency_steps - self.within_steps

    def expected_text(self) -> str:
        """The expectation in a few words: 'detect <=4', 'detect by harm' (an engine bug) or 'clean' ('?' for
        older results)."""
        if self.expects_detection is None:
            return "?"
        if not self.expects_detection:
            return "clean"
        # An engine bug has no injection step to bound from: it must be caught before harm instead.
        return f"detect <={self.within_steps}" if self.within_steps is not None else "detect by harm"

    def detected_text(self) -> str:
        """'yes', 'no', or 'late +N' for a violation past the bound (N forwards past it)."""
        late_by = self.late_by_steps
        if late_by is not None:
            return f"late +{late_by}"
        return "yes" if self.detected else "no"

    def unmet(self) -> list[ExpectationOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.held]

    def harm_text(self) -> str:
        """The step of the first wrong output: 'step 31', 'none', or 'n/a' where outputs were not judged."""
        if not self.harm_judged:
            return "n/a"
        if self.first_wrong is None:
            return "none"
        return f"step {self.first_wrong.step}" if self.first_wrong.step is not None else "yes"

    def before_harm_text(self) -> str:
        """Whether the canary spoke no later than the first wrong output: 'yes', 'no' or '-'."""
        if self.detected_before_harm is None:
            return "-"
        return "yes" if self.detected_before_harm else "no"

    def to_json(self) -> dict[str, object]:
        payload = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        payload["outcomes"] = [outcome.to_json() for outcome in self.outcomes]
        payload["launch_tags_seen"] = list(self.launch_tags_seen)
        payload["fail_reasons_seen"] = list(self.fail_reasons_seen)
        payload["faults"] = [verdict.to_json() for verdict in self.faults]
        payload["first_wrong"] = self.first_wrong.to_json() if self.first_wrong is not None else None
        payload["violations_by_rank"] = [list(pair) for pair in self.violations_by_rank]
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ExpectationResult:
        return cls(
            outcomes=tuple(ExpectationOutcome.from_json(item) for item in payload["outcomes"]),
            injection_step=payload["injection_step"],
            detected=payload["detected"],
            latency_steps=payload["latency_steps"],
            violation_count=payload["violation_count"],
            launch_tags_seen=tuple(payload["launch_tags_seen"]),
            fail_reasons_seen=tuple(payload["fail_reasons_seen"]),
            expects_detection=payload.get("expects_detection"),
            within_steps=payload.get("within_steps"),
            # Results written before these fields existed still read.
            faults=tuple(FaultVerdict.from_json(item) for item in payload.get("faults", ())),
            first_wrong=WrongOutput.from_json(payload["first_wrong"]) if payload.get("first_wrong") else None,
            harm_judged=payload.get("harm_judged", False),
            detected_before_harm=payload.get("detected_before_harm"),
            violations_by_rank=tuple((rank, count) for rank, count in payload.get("violations_by_rank", ())),
        )

    def ranks_text(self) -> str:
        """'rank0:3 rank1:12': the violations each rank of a multi-rank engine logged; '' for one rank."""
        return " ".join(f"rank{rank}:{count}" for rank, count in self.violations_by_rank)


def check_expectations(
    scenario: Scenario,
    mode: str,
    log_text: str,
    injections: Sequence[Injection],
    evidence: RunEvidence | None = None,
) -> ExpectationResult:
    """Judge a run of ``scenario`` (as it runs in ``mode``). With one fault and no ``evidence.fault_ids``,
    every injection is that fault's."""
    evidence = evidence or RunEvidence()
    violations = ViolationRecord.find_all(log_text)
    outcomes: list[ExpectationOutcome] = []
    applied = _faults_applied(scenario, injections, evidence.fault_ids, outcomes)
    steps = [step for _, _, step in applied if step is not None]
    injection_step = min(steps) if steps else None
    after = [v for v in violations if injection_step is not None and v.step >= injection_step]
    verdicts = _fault_verdicts(scenario, applied, violations)
    if scenario.expects_detection:
        if applied:
            outcomes.extend(detection(scenario, applied, violations, injection_step))
            detected = all(verdict.detected for verdict in verdicts)
        else:  # an engine bug: nothing to count latency from
            outcomes.extend(bug_detected(scenario, violations))
            detected = bool(violations)
    else:
        outcomes.append(stays_clean(violations))
        detected = bool(after) if applied else bool(violations)
    candidates = after if applied else violations
    first_violation = candidates[0] if candidates else None
    harm_outcomes, before_harm = harm(scenario, evidence.outputs, first_violation)
    outcomes.extend(harm_outcomes)
    outcomes.extend(twin_and_actions(evidence))
    if scenario.expect.swa_divergence is not None and mode_has_full_and_swa_groups(mode):
        outcomes.extend(_swa_divergence(scenario.expect.swa_divergence, log_text))
    first_name = applied[0][0] if applied else None
    return ExpectationResult(
        outcomes=tuple(outcomes),
        injection_step=injection_step,
        detected=detected,
        latency_steps=after[0].step - injection_step if after and injection_step is not None else None,
        # Repeats the canary counted instead of logging again (kv_canary violation_repeats lines).
        violation_count=len(violations) + sum(line.repeats for line in ViolationRepeatsLog.find_all(log_text)),
        launch_tags_seen=tuple(sorted({v.launch_tag for v in violations})),
        fail_reasons_seen=tuple(sorted({reason for v in violations for reason in v.fail_reasons})),
        expects_detection=scenario.expects_detection,
        within_steps=fault_bound(scenario, first_name) if scenario.expects_detection and first_name else None,
        faults=verdicts,
        first_wrong=evidence.outputs.first_wrong if evidence.outputs is not None else None,
        harm_judged=evidence.outputs is not None,
        detected_before_harm=before_harm,
        violations_by_rank=_violations_by_rank(violations, ViolationRepeatsLog.find_all(log_text)),
    )


def _violations_by_rank(
    violations: Sequence[ViolationRecord], repeats: Sequence[ViolationRepeatsLog]
) -> tuple[tuple[int, int], ...]:
    """Violations (logged, and counted as repeats) of each rank of a multi-rank engine, by rank."""
    counts = collections.Counter(v.rank for v in violations if v.rank is not None)
    for line in repeats:
        if line.rank is not None:
            counts[line.rank] += line.repeats
    return tuple(sorted(counts.items()))


def _faults_applied(
    scenario: Scenario,
    injections: Sequence[Injection],
    fault_ids: Mapping[str, int],
    outcomes: list[ExpectationOutcome],
) -> Applied:
    named = scenario.named_faults()
    applied: Applied = []
    for name, fault in named:
        if name in fault_ids:
            mine = [injection for injection in injections if injection.fault_id == fault_ids[name]]
        else:
            mine = list(injections) if len(named) == 1 else []
        label = f"fault {fault.kind}" if scenario.faults is None else f"fault {name} ({fault.kind})"
        outcome, step = fault_applied(label, mine)
        outcomes.append(outcome)
        applied.append((name, fault, step))
    return sorted(applied, key=lambda item: (item[2] is None, item[2] or 0))


def _fault_verdicts(
    scenario: Scenario, applied: Applied, violations: Sequence[ViolationRecord]
) -> tuple[FaultVerdict, ...]:
    windows = fault_windows(applied, violations)
    verdicts = []
    for name, fault, step in applied:
        window = windows.get(name, [])
        bound = fault_bound(scenario, name) if scenario.expects_detection else None
        latency = window[0].step - step if window and step is not None else None
        detected = latency is not None and (bound is None or latency <= bound)
        verdicts.append(
            FaultVerdict(
                name=name,
                kind=fault.kind,
                injection_step=step,
                detected=detected,
                latency_steps=latency,
                within_steps=bound,
            )
        )
    return tuple(verdicts)


def _swa_divergence(expected: SwaDivergenceExpectation, log_text: str) -> list[ExpectationOutcome]:
    last = SwaDivergenceLog.find_last(log_text)
    if last is None:
        return [
            ExpectationOutcome(
                expectation="a kv_canary_swa_divergence line",
                held=False,
                reason="none in the log; is the reporter on (engine.swa_divergence_interval)?",
                label="no divergence line",
            )
        ]
    lines = (last.format(),)
    outcomes = []
    for field, text in expected.comparisons().items():
        value = getattr(last, field)
        outcomes.append(
            ExpectationOutcome(
                expectation=f"swa_divergence {field} {text.strip()}",
                held=Comparison.parse(text).holds(value),
                reason=f"last line has {field}={value}",
                log_lines=lines,
                line_count=1,
                label=f"{field} {text.strip()}",
            )
        )
    if expected.verify_swa_lt_verify_full is not None:
        wanted = expected.verify_swa_lt_verify_full
        outcomes.append(
            ExpectationOutcome(
                expectation=f"swa_divergence verify_swa {'<' if wanted else '>='} verify_full",
                held=(last.verify_swa < last.verify_full) == wanted,
                reason=f"last line has verify_swa={last.verify_swa}, verify_full={last.verify_full}",
                log_lines=lines,
                line_count=1,
                label="verify_swa vs verify_full",
            )
        )
    return outcomes
