"""Did it detect before harm? Outputs against the token oracle and the clean twin, and the judge's use of
the first wrong output's step."""

from __future__ import annotations

from harness.expectations import check_expectations
from harness.outputs import Answer, check_outputs
from harness.run_evidence import ActionRecord, RunEvidence, TwinRun
from kv_canary_contract import TokenOracle
from tests.unit.harness.samples import BASELINE_MHA, DETECT_EVICTION
from tests.unit.harness.test_expectations import APPLIED_AT_6, log, violation

ORACLE = TokenOracle(seed=3, vocab_size=97)
PROMPT = (5, 6, 7, 8)


def answer(
    output_ids: list[int],
    *,
    key: str = "requests[0]#0",
    first_step: int = 10,
    digests: list[float] | None = None,
    finish: str = "length",
    max_new_tokens: int = 4,
) -> Answer:
    return Answer(
        key=key,
        input_ids=PROMPT,
        max_new_tokens=max_new_tokens,
        output_ids=tuple(output_ids),
        output_steps=tuple(range(first_step, first_step + len(output_ids))),
        output_digests=tuple(digests) if digests is not None else None,
        finish_reason=finish,
    )


EXACT = ORACLE.continuation(PROMPT, 4)


def test_an_answer_equal_to_the_token_oracle_is_not_harm():
    check = check_outputs([answer(EXACT)], ORACLE)
    assert (check.wrong_count, check.first_wrong) == (0, None)


def test_the_first_token_off_the_oracle_is_harm_at_the_step_that_sampled_it():
    wrong = [*EXACT[:2], (EXACT[2] + 1) % 97, EXACT[3]]
    check = check_outputs([answer(EXACT, key="x#0"), answer(wrong, key="y#0", first_step=20)], ORACLE)
    assert (check.wrong_count, check.oracle_wrong_count) == (1, 1)
    assert (check.first_wrong.request, check.first_wrong.index, check.first_wrong.step) == ("y#0", 2, 22)


def test_a_short_answer_is_harm_unless_it_was_aborted():
    assert check_outputs([answer(EXACT[:2])], ORACLE).wrong_count == 1
    assert check_outputs([answer(EXACT[:2], finish="abort")], ORACLE).wrong_count == 0


def test_a_digest_that_departs_from_the_twin_is_harm_even_with_the_right_tokens():
    twin = {"requests[0]#0": answer(EXACT, digests=[1.0, 2.0, 3.0, 4.0])}
    close = answer(EXACT, digests=[1.0, 2.0000001, 3.0, 4.0])
    far = answer(EXACT, digests=[1.0, 2.0, 3.5, 4.0])
    assert check_outputs([close], ORACLE, twin).wrong_count == 0
    check = check_outputs([far], ORACLE, twin)
    assert (check.wrong_count, check.oracle_wrong_count, check.first_wrong.step) == (1, 0, 12)


def outputs_wrong_at(step: int):
    wrong = [(EXACT[0] + 1) % 97, *EXACT[1:]]
    return check_outputs([answer(wrong, first_step=step)], ORACLE)


def test_a_detection_after_the_first_wrong_output_fails_before_harm(load_text):
    scenario = load_text(DETECT_EVICTION).scenario
    late = check_expectations(
        scenario, "mha", log(violation(9)), APPLIED_AT_6, RunEvidence(outputs=outputs_wrong_at(8))
    )
    assert late.detected and not late.passed
    assert (late.first_wrong.step, late.detected_before_harm, late.harm_text(), late.before_harm_text()) == (
        8,
        False,
        "step 8",
        "no",
    )
    in_time = check_expectations(
        scenario, "mha", log(violation(9)), APPLIED_AT_6, RunEvidence(outputs=outputs_wrong_at(9))
    )
    assert in_time.passed and in_time.detected_before_harm, in_time.unmet()


def test_a_baseline_must_equal_the_token_oracle(load_text):
    scenario = load_text(BASELINE_MHA).scenario
    exact = check_expectations(scenario, "mha", log(), [], RunEvidence(outputs=check_outputs([answer(EXACT)], ORACLE)))
    assert exact.passed and exact.harm_text() == "none" and exact.before_harm_text() == "-"
    wrong = check_expectations(scenario, "mha", log(), [], RunEvidence(outputs=outputs_wrong_at(3)))
    assert [outcome.expectation for outcome in wrong.unmet()] == ["outputs equal the token oracle"]


def test_a_dirty_or_inexact_twin_and_a_missed_action_fail_the_pair(load_text):
    scenario = load_text(DETECT_EVICTION).scenario
    dirty = TwinRun(log_path="twin.log", error=None, violations=(violation(4),), violation_count=1)
    missed = ActionRecord(kind="abort", phase=1, request="b", step=None, done=False, detail="missed")
    result = check_expectations(
        scenario, "mha", log(violation(9)), APPLIED_AT_6, RunEvidence(twin=dirty, actions=(missed,))
    )
    assert {outcome.expectation for outcome in result.unmet()} == {
        "the clean twin (no fault, no bug) stays clean",
        "the workload's actions happen as written",
    }
    inexact = TwinRun(log_path="twin.log", error=None, outputs=outputs_wrong_at(3))
    result = check_expectations(scenario, "mha", log(violation(9)), APPLIED_AT_6, RunEvidence(twin=inexact))
    assert [outcome.expectation for outcome in result.unmet()] == ["the clean twin's outputs equal the token oracle"]
