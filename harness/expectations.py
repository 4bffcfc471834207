"""Judging a run: from (scenario, mode, server log, injections) to which expectations held and why.

A pure function over text, so it is tested on synthetic logs; detection is read only through the
frozen log-line parsers, the same ones users and the engine's tests assert through.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

from harness.injections import Injection
from harness.scenario.comparison import Comparison
from harness.scenario.model import Fault, Scenario, SwaDivergenceExpectation, ViolationPattern
from harness.scenario.modes import mode_has_full_and_swa_groups
from harness.scenario.patterns import matches
from kv_canary.log_lines import SwaDivergenceLog, ViolationRecord, ViolationRepeatsLog

MAX_LINES_PER_OUTCOME = 10  # kept in the result; a failure message shows the first and the count


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ExpectationOutcome:
    expectation: str  # what was expected, in the scenario's words
    held: bool
    reason: str  # why it held or not, with the numbers
    log_lines: tuple[str, ...] = ()  # the first MAX_LINES_PER_OUTCOME of the lines behind it
    line_count: int = 0  # how many lines are behind it in all
    label: str = ""  # a few words for a report cell when it does not hold: "late +2", "missed", ...

    def to_json(self) -> dict[str, object]:
        return {
            "expectation": self.expectation,
            "held": self.held,
            "reason": self.reason,
            "log_lines": list(self.log_lines),
            "line_count": self.line_count,
            "label": self.label,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ExpectationOutcome:
        log_lines = tuple(payload["log_lines"])
        return cls(
            expectation=payload["expectation"],
            held=payload["held"],
            reason=payload["reason"],
            log_lines=log_lines,
            # Results written before these fields existed still read.
            line_count=payload.get("line_count", len(log_lines)),
            label=payload.get("label", ""),
        )


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
    within_steps: int | None = None  # its bound, when detection is expected
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
        """The expectation in a few words: 'detect <=4' or 'clean' ('?' for older results)."""
        if self.expects_detection is None:
            return "?"
        return f"detect <={self.within_steps}" if self.expects_detection else "clean"

    def detected_text(self) -> str:
        """'yes', 'no', or 'late +N' for a violation past the bound (N forwards past it)."""
        late_by = self.late_by_steps
        if late_by is not None:
            return f"late +{late_by}"
        return "yes" if self.detected else "no"

    def unmet(self) -> list[ExpectationOutcome]:
        return [outcome for outcome in self.outcomes if not outcome.held]

    def to_json(self) -> dict[str, object]:
        payload = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        payload["outcomes"] = [outcome.to_json() for outcome in self.outcomes]
        payload["launch_tags_seen"] = list(self.launch_tags_seen)
        payload["fail_reasons_seen"] = list(self.fail_reasons_seen)
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
            violations_by_rank=tuple((rank, count) for rank, count in payload.get("violations_by_rank", ())),
        )

    def ranks_text(self) -> str:
        """'rank0:3 rank1:12': the violations each rank of a multi-rank engine logged; '' for one rank."""
        return " ".join(f"rank{rank}:{count}" for rank, count in self.violations_by_rank)


def check_expectations(
    scenario: Scenario, mode: str, log_text: str, injections: Sequence[Injection]
) -> ExpectationResult:
    violations = ViolationRecord.find_all(log_text)
    outcomes: list[ExpectationOutcome] = []
    injection_step: int | None = None
    if scenario.fault is not None and scenario.injects_fault:
        applied, injection_step = _fault_applied(scenario.fault, injections)
        outcomes.append(applied)
    after = [v for v in violations if injection_step is not None and v.step >= injection_step]
    if scenario.expects_detection:
        bound = _latency_bound(scenario)
        outcomes.extend(_detection(scenario, violations, injection_step, bound))
        detected = injection_step is not None and any(v.step <= injection_step + bound for v in after)
    else:
        outcomes.append(_stays_clean(violations))
        detected = bool(after) if scenario.injects_fault else bool(violations)
    if scenario.expect.swa_divergence is not None and mode_has_full_and_swa_groups(mode):
        outcomes.extend(_swa_divergence(scenario.expect.swa_divergence, log_text))
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
        within_steps=scenario.expect.within_steps if scenario.expects_detection else None,
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


def rank_of(violation: ViolationRecord) -> int:
    """The rank whose canary logged ``violation``; a line without ``rank=`` comes from a one-rank engine."""
    return violation.rank if violation.rank is not None else 0


def _lines(violations: Sequence[ViolationRecord]) -> tuple[str, ...]:
    return tuple(v.format() for v in violations[:MAX_LINES_PER_OUTCOME])


def _fault_applied(fault: Fault, injections: Sequence[Injection]) -> tuple[ExpectationOutcome, int | None]:
    expectation = f"fault {fault.kind} is applied"
    if not injections:
        return ExpectationOutcome(
            expectation=expectation,
            held=False,
            reason="the engine reported no injection for this fault",
            label="not injected",
        ), None
    for injection in injections:
        if injection.status == "no_target":
            return ExpectationOutcome(
                expectation=expectation,
                held=False,
                reason=(
                    f"fault #{injection.fault_id} found no valid target: {injection.detail or 'no detail given'}; "
                    "the run proves nothing about detection"
                ),
                label="no target",
            ), None
        if injection.status != "applied" or injection.step is None:
            return ExpectationOutcome(
                expectation=expectation,
                held=False,
                reason=(
                    f"fault #{injection.fault_id} was still {injection.status} when the run ended; the workload "
                    "never reached its trigger"
                ),
                label="not applied",
            ), None
    steps = sorted(injection.step for injection in injections if injection.step is not None)  # all, as checked
    return ExpectationOutcome(
        expectation=expectation, held=True, reason=f"applied at step {', '.join(map(str, steps))}"
    ), steps[0]


def _latency_bound(scenario: Scenario) -> int:
    bound = scenario.expect.within_steps
    if bound is None:
        raise ValueError(
            f"scenario {scenario.name} expects detection without expect.within_steps; validate it "
            "(kv-canary validate) before checking a run against it"
        )
    return bound


def _detection(
    scenario: Scenario, violations: Sequence[ViolationRecord], injection_step: int | None, bound: int
) -> list[ExpectationOutcome]:
    expectation = f"detected within {bound} steps"
    if injection_step is None:
        return [
            ExpectationOutcome(
                expectation=expectation,
                held=False,
                reason="the fault was never applied, so there was nothing to detect",
                label="not applied",
            )
        ]
    before = [v for v in violations if v.step < injection_step]
    after = [v for v in violations if v.step >= injection_step]
    outcomes = [
        ExpectationOutcome(
            expectation="no violation before the injection",
            held=not before,
            log_lines=_lines(before),
            line_count=len(before),
            label="flagged before",
            reason=(
                f"{len(before)} violations before the injection at step {injection_step}, the first at step "
                f"{before[0].step}: the canary flagged something the fault did not cause"
            )
            if before
            else f"none before step {injection_step}",
        )
    ]
    if not after:
        reason, held = f"no violation logged at or after the injection at step {injection_step}", False
        label = "missed"
    else:
        latency = after[0].step - injection_step
        held = latency <= bound
        reason = (
            f"first violation at step {after[0].step}, {latency} steps after the injection at step "
            f"{injection_step}" + ("" if held else f"; the bound is {bound}")
        )
        label = f"late +{latency - bound}"
    outcomes.append(
        ExpectationOutcome(
            expectation=expectation,
            held=held,
            reason=reason,
            log_lines=_lines(after),
            line_count=len(after),
            label=label,
        )
    )
    outcomes.extend(_pattern_matched(pattern, after) for pattern in scenario.expect.violations)
    return outcomes


def _pattern_matched(pattern: ViolationPattern, violations: Sequence[ViolationRecord]) -> ExpectationOutcome:
    expectation = f"a violation with launch_tag={pattern.launch_tag} fail_reason={pattern.fail_reason}"
    if pattern.rank is not None:
        expectation += f" rank={pattern.rank}"
    matching = [
        v
        for v in violations
        if matches(pattern.launch_tag, v.launch_tag)
        and any(matches(pattern.fail_reason, reason) for reason in v.fail_reasons)
        and (pattern.rank is None or rank_of(v) == pattern.rank)
    ]
    if matching:
        return ExpectationOutcome(
            expectation=expectation,
            held=True,
            log_lines=_lines(matching),
            line_count=len(matching),
            reason=f"{len(matching)} of {len(violations)} violations after the injection match",
        )
    seen = collections.Counter(
        f"{v.launch_tag} {'+'.join(v.fail_reasons)}" + (f" rank={v.rank}" if v.rank is not None else "")
        for v in violations
    )
    summary = ", ".join(f"{kind} x{count}" for kind, count in seen.most_common()) or "none"
    return ExpectationOutcome(
        expectation=expectation,
        held=False,
        log_lines=_lines(violations),
        line_count=len(violations),
        reason=f"none of the {len(violations)} violations after the injection match; seen: {summary}",
        label="other tags",
    )


def _stays_clean(violations: Sequence[ViolationRecord]) -> ExpectationOutcome:
    if not violations:
        return ExpectationOutcome(expectation="no violations", held=True, reason="none logged")
    return ExpectationOutcome(
        expectation="no violations",
        held=False,
        log_lines=_lines(violations),
        line_count=len(violations),
        reason=f"{len(violations)} violations logged, the first at step {violations[0].step}",
        label=f"dirty ({len(violations)})",
    )


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
