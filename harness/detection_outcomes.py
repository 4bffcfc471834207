"""The outcomes about detection: each fault applied, detected in its window within its bound, its patterns
met; an engine bug detected at all; a scenario that must stay silent stays silent."""

from __future__ import annotations

import collections
from collections.abc import Sequence

from harness.expectation_outcome import ExpectationOutcome, violation_lines
from harness.injections import Injection
from harness.scenario.model import Fault, Scenario, ViolationPattern
from harness.scenario.patterns import matches
from harness.scenario.rules import fault_bound
from kv_canary.log_lines import ViolationRecord

Applied = list[tuple[str, Fault, int | None]]  # (name, fault, its first injection step or None), by step


def fault_applied(label: str, injections: Sequence[Injection]) -> tuple[ExpectationOutcome, int | None]:
    """Whether every application of one fault (``label``: 'fault <kind>') was applied, and its first step."""
    expectation = f"{label} is applied"
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


def fault_windows(applied: Applied, violations: Sequence[ViolationRecord]) -> dict[str, list[ViolationRecord]]:
    """Each applied fault's violations: from its injection step up to the next fault's (the rules keep
    step-triggered faults further apart than their bounds, so a detection is the fault's own)."""
    stepped = [(name, step) for name, _, step in applied if step is not None]
    windows = {}
    for index, (name, step) in enumerate(stepped):
        end = stepped[index + 1][1] if index + 1 < len(stepped) else None
        windows[name] = [v for v in violations if v.step >= step and (end is None or v.step < end)]
    return windows


def detection(
    scenario: Scenario, applied: Applied, violations: Sequence[ViolationRecord], injection_step: int | None
) -> list[ExpectationOutcome]:
    """Nothing flagged before the first injection; each fault detected within its bound and its patterns met."""
    outcomes = []
    if injection_step is not None:
        before = [v for v in violations if v.step < injection_step]
        outcomes.append(
            ExpectationOutcome(
                expectation="no violation before the injection",
                held=not before,
                log_lines=violation_lines(before),
                line_count=len(before),
                label="flagged before",
                reason=(
                    f"{len(before)} violations before the injection at step {injection_step}, the first at step "
                    f"{before[0].step}: the canary flagged something the fault did not cause"
                )
                if before
                else f"none before step {injection_step}",
            )
        )
    windows = fault_windows(applied, violations)
    for name, _, step in applied:
        bound = fault_bound(scenario, name)
        if bound is None:
            raise ValueError(
                f"scenario {scenario.name} expects detection of fault {name} without a bound; validate it "
                "(kv-canary validate) before checking a run against it"
            )
        named = "" if scenario.faults is None else f"fault {name} "
        outcomes.append(_fault_detected(f"{named}detected within {bound} steps", step, windows.get(name, []), bound))
        if step is not None:
            own = scenario.expect.faults.get(name)
            patterns = own.violations if own is not None and own.violations is not None else scenario.expect.violations
            outcomes.extend(_pattern_matched(pattern, windows.get(name, [])) for pattern in patterns)
    return outcomes


def _fault_detected(
    expectation: str, step: int | None, window: Sequence[ViolationRecord], bound: int
) -> ExpectationOutcome:
    if step is None:
        return ExpectationOutcome(
            expectation=expectation,
            held=False,
            reason="the fault was never applied, so there was nothing to detect",
            label="not applied",
        )
    if not window:
        return ExpectationOutcome(
            expectation=expectation,
            held=False,
            reason=f"no violation logged at or after the injection at step {step}",
            label="missed",
        )
    latency = window[0].step - step
    held = latency <= bound
    return ExpectationOutcome(
        expectation=expectation,
        held=held,
        reason=f"first violation at step {window[0].step}, {latency} steps after the injection at step {step}"
        + ("" if held else f"; the bound is {bound}"),
        log_lines=violation_lines(window),
        line_count=len(window),
        label=f"late +{latency - bound}",
    )


def bug_detected(scenario: Scenario, violations: Sequence[ViolationRecord]) -> list[ExpectationOutcome]:
    """An engine bug has no injection step: detected is any violation (before harm is judged on the outputs)."""
    bugs = ", ".join(scenario.bugs)
    outcome = ExpectationOutcome(
        expectation=f"engine bug {bugs} is detected",
        held=bool(violations),
        reason=f"{len(violations)} violations, the first at step {violations[0].step}"
        if violations
        else "no violation logged",
        log_lines=violation_lines(violations),
        line_count=len(violations),
        label="missed",
    )
    return [outcome, *(_pattern_matched(pattern, violations) for pattern in scenario.expect.violations)]


def rank_of(violation: ViolationRecord) -> int:
    """The rank whose canary logged ``violation``; a line without ``rank=`` comes from a one-rank engine."""
    return violation.rank if violation.rank is not None else 0


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
            log_lines=violation_lines(matching),
            line_count=len(matching),
            reason=f"{len(matching)} of {len(violations)} violations after the injection match",
        )
    seen = collections.Counter(f"{v.launch_tag} {'+'.join(v.fail_reasons)}" for v in violations)
    summary = ", ".join(f"{kind} x{count}" for kind, count in seen.most_common()) or "none"
    return ExpectationOutcome(
        expectation=expectation,
        held=False,
        log_lines=violation_lines(violations),
        line_count=len(violations),
        reason=f"none of the {len(violations)} violations after the injection match; seen: {summary}",
        label="other tags",
    )


def stays_clean(violations: Sequence[ViolationRecord]) -> ExpectationOutcome:
    if not violations:
        return ExpectationOutcome(expectation="no violations", held=True, reason="none logged")
    return ExpectationOutcome(
        expectation="no violations",
        held=False,
        log_lines=violation_lines(violations),
        line_count=len(violations),
        reason=f"{len(violations)} violations logged, the first at step {violations[0].step}",
        label=f"dirty ({len(violations)})",
    )
