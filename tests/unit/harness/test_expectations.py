"""The expectation checker on synthetic logs: it reads detection only through the log-line parsers."""

from __future__ import annotations

import pytest

from harness.expectations import ExpectationResult, check_expectations
from harness.injections import Injection
from kv_canary.log_lines import RepeatedViolation, SwaDivergenceLog, ViolationRecord, ViolationRepeatsLog
from tests.unit.harness.samples import BASELINE_MHA, DETECT_EVICTION


def violation(step: int, tag: str = "HEAD_K_FULL", reasons: tuple[str, ...] = ("chain_hash",)) -> str:
    return ViolationRecord(
        launch_tag=tag, fail_reasons=reasons, slot_idx=17, position=40, stored_token=9, expected_token=11, step=step
    ).format()


def log(*lines: str) -> str:
    # Engine noise around the canary's lines, as in a real server log.
    return "\n".join(["INFO starting", *lines, "INFO shutting down"]) + "\n"


APPLIED_AT_6 = [Injection(fault_id=1, kind="evict_radix_node", status="applied", step=6, detail="slot 17")]


def held(result) -> dict[str, bool]:
    return {outcome.expectation: outcome.held for outcome in result.outcomes}


def test_a_violation_within_the_bound_is_a_detection(load_text):
    scenario = load_text(DETECT_EVICTION).scenario
    result = check_expectations(scenario, "mha", log(violation(9)), APPLIED_AT_6)
    assert result.passed, result.unmet()
    assert (result.detected, result.latency_steps, result.injection_step) == (True, 3, 6)
    assert result.fail_reasons_seen == ("chain_hash",)


def test_no_violation_is_not_a_detection(load_text):
    scenario = load_text(DETECT_EVICTION).scenario
    result = check_expectations(scenario, "mha", log(), APPLIED_AT_6)
    assert not result.passed and not result.detected
    unmet = {outcome.expectation: outcome.reason for outcome in result.unmet()}
    assert unmet["detected within 4 steps"] == "no violation logged at or after the injection at step 6"


def test_a_violation_past_the_bound_fails_with_its_latency(load_text):
    scenario = load_text(DETECT_EVICTION).scenario
    result = check_expectations(scenario, "mha", log(violation(11)), APPLIED_AT_6)
    assert not result.detected and result.latency_steps == 5
    (unmet,) = result.unmet()
    assert unmet.reason == "first violation at step 11, 5 steps after the injection at step 6; the bound is 4"
    assert unmet.log_lines == (violation(11),)


def test_a_storm_reduced_to_first_reports_and_counted_repeats_is_judged_and_counted_whole(load_text):
    scenario = load_text(DETECT_EVICTION).scenario
    repeats = ViolationRepeatsLog(
        repeats=40,
        keys=1,
        first_step=9,
        last_step=12,
        top=(RepeatedViolation(slot_idx=17, launch_tag="HEAD_K_FULL", fail_reasons=("chain_hash",), repeats=40),),
    )
    result = check_expectations(scenario, "mha", log(violation(9), repeats.format()), APPLIED_AT_6)
    assert result.passed, result.unmet()
    assert (result.detected, result.latency_steps, result.violation_count) == (True, 3, 41)


def test_the_bound_is_inclusive(load_text):
    scenario = load_text(DETECT_EVICTION).scenario
    assert check_expectations(scenario, "mha", log(violation(10)), APPLIED_AT_6).passed


def test_a_violation_with_the_wrong_tag_does_not_meet_the_pattern(load_text):
    scenario = load_text(DETECT_EVICTION).scenario
    result = check_expectations(scenario, "mha", log(violation(8, tag="TAIL_V_FULL")), APPLIED_AT_6)
    assert held(result) == {
        "fault evict_radix_node is applied": True,
        "no violation before the injection": True,
        "detected within 4 steps": True,
        "a violation with launch_tag=HEAD_* fail_reason=chain_hash": False,
    }
    assert "seen: TAIL_V_FULL chain_hash x1" in result.unmet()[0].reason


def test_a_line_meets_a_reason_pattern_if_any_of_its_reasons_does(load_text):
    scenario = load_text(DETECT_EVICTION).scenario
    line = violation(8, reasons=("position", "chain_hash"))
    assert check_expectations(scenario, "mha", log(line), APPLIED_AT_6).passed


def test_a_violation_before_the_injection_fails_the_run(load_text):
    scenario = load_text(DETECT_EVICTION).scenario
    result = check_expectations(scenario, "mha", log(violation(2), violation(8)), APPLIED_AT_6)
    assert [outcome.expectation for outcome in result.unmet()] == ["no violation before the injection"]


def test_a_clean_baseline_passes(load_text):
    result = check_expectations(load_text(BASELINE_MHA).scenario, "mha", log(), [])
    assert result.passed and not result.detected and result.violation_count == 0


def test_a_dirty_baseline_fails_with_its_lines(load_text):
    lines = [violation(step) for step in range(3, 20)]
    result = check_expectations(load_text(BASELINE_MHA).scenario, "mha", log(*lines), [])
    (unmet,) = result.unmet()
    assert unmet.reason == "17 violations logged, the first at step 3"
    assert unmet.log_lines == tuple(lines[:10])
    assert result.detected and result.violation_count == 17


def test_an_injection_without_a_target_is_never_a_pass(load_text):
    scenario = load_text(DETECT_EVICTION).scenario
    no_target = [
        Injection(
            fault_id=1,
            kind="evict_radix_node",
            status="no_target",
            step=None,
            detail="no running request holds a locked node",
        )
    ]
    result = check_expectations(scenario, "mha", log(violation(8)), no_target)
    reasons = {outcome.expectation: outcome.reason for outcome in result.unmet()}
    assert reasons["fault evict_radix_node is applied"] == (
        "fault #1 found no valid target: no running request holds a locked node; the run proves nothing about detection"
    )
    assert reasons["detected within 4 steps"] == "the fault was never applied, so there was nothing to detect"


def test_a_fault_still_scheduled_at_the_end_fails(load_text):
    scenario = load_text(DETECT_EVICTION).scenario
    scheduled = [Injection(fault_id=1, kind="evict_radix_node", status="scheduled", step=None)]
    result = check_expectations(scenario, "mha", log(), scheduled)
    assert "was still scheduled when the run ended" in result.unmet()[0].reason


def test_a_missing_injection_report_fails(load_text):
    result = check_expectations(load_text(DETECT_EVICTION).scenario, "mha", log(violation(8)), [])
    assert result.unmet()[0].reason == "the engine reported no injection for this fault"


def test_a_fault_expected_to_stay_silent_must_leave_no_violation(load_text):
    scenario = load_text(
        DETECT_EVICTION.replace("detected: true", "detected: false").split("  within_steps")[0]
    ).scenario
    assert check_expectations(scenario, "mha", log(), APPLIED_AT_6).passed
    result = check_expectations(scenario, "mha", log(violation(7)), APPLIED_AT_6)
    assert [outcome.expectation for outcome in result.unmet()] == ["no violations"]


SWA_DIVERGENCE = """\
name: swa-divergence
description: x
model_modes: [mha, swa]
workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
expect:
  detected: false
  swa_divergence:
    swa_out_of_window_tokens: ">=1"
    swa_full_idx_divergence: "== 0"
    verify_swa_lt_verify_full: true
"""


def divergence(**overrides: int) -> str:
    fields = {
        "forward_ct": 40,
        "verify_full": 400,
        "verify_swa": 120,
        "swa_full_idx_divergence": 0,
        "swa_out_of_window_tokens": 3,
    } | overrides
    return SwaDivergenceLog(**fields).format()


def test_swa_thresholds_are_checked_on_the_last_line(load_text):
    scenario = load_text(SWA_DIVERGENCE).scenario
    text = log(divergence(swa_out_of_window_tokens=0, verify_swa=500), divergence())
    assert held(check_expectations(scenario, "swa", text, [])) == {
        "no violations": True,
        "swa_divergence swa_out_of_window_tokens >=1": True,
        "swa_divergence swa_full_idx_divergence == 0": True,
        "swa_divergence verify_swa < verify_full": True,
    }


@pytest.mark.parametrize(
    ("last_line", "unmet"),
    [
        (divergence(swa_out_of_window_tokens=0), "swa_divergence swa_out_of_window_tokens >=1"),
        (divergence(swa_full_idx_divergence=2), "swa_divergence swa_full_idx_divergence == 0"),
        (divergence(verify_swa=400), "swa_divergence verify_swa < verify_full"),
    ],
)
def test_each_swa_threshold_can_fail(load_text, last_line, unmet):
    result = check_expectations(load_text(SWA_DIVERGENCE).scenario, "swa", log(last_line), [])
    assert [outcome.expectation for outcome in result.unmet()] == [unmet]
    assert result.unmet()[0].log_lines == (last_line,)


def test_a_missing_divergence_line_fails_in_swa_mode(load_text):
    result = check_expectations(load_text(SWA_DIVERGENCE).scenario, "swa", log(), [])
    assert "is the reporter on" in result.unmet()[0].reason


def test_swa_divergence_is_not_checked_in_modes_without_both_groups(load_text):
    result = check_expectations(load_text(SWA_DIVERGENCE).scenario, "mha", log(), [])
    assert held(result) == {"no violations": True}


def test_results_survive_a_json_round_trip(load_text):
    result = check_expectations(load_text(DETECT_EVICTION).scenario, "mha", log(violation(11)), APPLIED_AT_6)
    assert ExpectationResult.from_json(result.to_json()) == result
