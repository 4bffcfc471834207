"""The outcomes about outputs: did the canary speak before the first wrong output; does a baseline's output
equal the token oracle; is the clean twin clean and exact; did the workload's actions happen as written."""

from __future__ import annotations

from harness.expectation_outcome import ExpectationOutcome
from harness.outputs import OutputCheck
from harness.run_evidence import RunEvidence, TwinRun
from harness.scenario.model import Scenario
from kv_canary.log_lines import ViolationRecord


def harm(
    scenario: Scenario, outputs: OutputCheck | None, first_violation: ViolationRecord | None
) -> tuple[list[ExpectationOutcome], bool | None]:
    """The outcomes, and whether the first violation came no later than the first wrong output (None: not
    judged: no outputs, or no detection expected)."""
    if outputs is None:
        return [], None
    outcomes = []
    if not scenario.has_culprit:
        outcomes.append(_exact(outputs, "outputs equal the token oracle", "wrong outputs"))
    if scenario.expect.harm is not None:
        wanted = scenario.expect.harm
        went_wrong = outputs.wrong_count > 0
        first = outputs.first_wrong
        outcomes.append(
            ExpectationOutcome(
                expectation="some output goes wrong" if wanted else "no output goes wrong",
                held=went_wrong == wanted,
                reason=f"{outputs.wrong_count} of {outputs.answers} requests went wrong, the first: {first.describe()}"
                if first is not None
                else f"all {outputs.answers} answers match {outputs.compared_with}",
                label="no harm" if wanted else "harm",
            )
        )
    if not scenario.expects_detection:
        return outcomes, None
    before, outcome = _before_harm(outputs, first_violation)
    outcomes.append(outcome)
    return outcomes, before


def _before_harm(outputs: OutputCheck, first_violation: ViolationRecord | None) -> tuple[bool, ExpectationOutcome]:
    expectation = "detected no later than the first wrong output"
    first = outputs.first_wrong
    if first is None:
        return True, ExpectationOutcome(
            expectation=expectation,
            held=True,
            reason=f"no output went wrong: all {outputs.answers} answers match {outputs.compared_with}",
        )
    if first.step is None:
        return False, ExpectationOutcome(
            expectation=expectation,
            held=False,
            reason=f"an output went wrong ({first.describe()}) at a step the server does not give, so detection "
            "before it cannot be shown",
            label="harm, no step",
        )
    if first_violation is None:
        return False, ExpectationOutcome(
            expectation=expectation,
            held=False,
            reason=f"harm without detection: {first.describe()}",
            label="harm undetected",
        )
    held = first_violation.step <= first.step
    return held, ExpectationOutcome(
        expectation=expectation,
        held=held,
        reason=f"first violation at step {first_violation.step}, first wrong output at step {first.step} "
        f"({first.describe()})",
        log_lines=(first_violation.format(),),
        line_count=1,
        label=f"harm first ({first.step} < {first_violation.step})",
    )


def _exact(outputs: OutputCheck, expectation: str, label: str) -> ExpectationOutcome:
    first = outputs.first_wrong
    return ExpectationOutcome(
        expectation=expectation,
        held=outputs.wrong_count == 0,
        reason=f"all {outputs.answers} answers match"
        if first is None
        else f"{outputs.wrong_count} of {outputs.answers} requests differ, the first: {first.describe()}",
        label=label,
    )


def twin_and_actions(evidence: RunEvidence) -> list[ExpectationOutcome]:
    outcomes = []
    if evidence.twin is not None:
        outcomes.extend(_twin(evidence.twin))
    if evidence.actions:
        missed = [action for action in evidence.actions if not action.done]
        outcomes.append(
            ExpectationOutcome(
                expectation="the workload's actions happen as written",
                held=not missed,
                reason="; ".join(action.describe() for action in (missed or evidence.actions)),
                label="action missed",
            )
        )
    return outcomes


def _twin(twin: TwinRun) -> list[ExpectationOutcome]:
    expectation = "the clean twin (no fault, no bug) stays clean"
    if twin.error is not None:
        return [
            ExpectationOutcome(
                expectation=expectation,
                held=False,
                reason=f"the twin gave no verdict: {twin.error}; its log: {twin.log_path}",
                label="twin error",
            )
        ]
    outcomes = [
        ExpectationOutcome(
            expectation=expectation,
            held=twin.violation_count == 0,
            reason=f"{twin.violation_count} violations in {twin.log_path}" if twin.violation_count else "none logged",
            log_lines=twin.violations,
            line_count=twin.violation_count,
            label=f"twin dirty ({twin.violation_count})",
        )
    ]
    if twin.outputs is not None:
        outcomes.append(_exact(twin.outputs, "the clean twin's outputs equal the token oracle", "twin inexact"))
    missed = [action for action in twin.actions if not action.done]
    if missed:
        outcomes.append(
            ExpectationOutcome(
                expectation="the clean twin's actions happen as written",
                held=False,
                reason="; ".join(action.describe() for action in missed),
                label="twin action missed",
            )
        )
    return outcomes
