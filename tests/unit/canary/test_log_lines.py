from __future__ import annotations

import pytest

from kv_canary import CanaryStatsLog, SwaDivergenceLog, ViolationRecord

VIOLATION = ViolationRecord(
    launch_tag="TAIL_V_SWA",
    fail_reasons=("chain_hash", "real_kv_hash"),
    slot_idx=12,
    position=40,
    stored_token=-1,
    expected_token=7,
    step=33,
)
DIVERGENCE = SwaDivergenceLog(
    forward_ct=20, verify_full=900, verify_swa=300, swa_full_idx_divergence=41, swa_out_of_window_tokens=12
)
STATS = CanaryStatsLog(
    step=100, protected_tokens=12345, sweep_passes=3, violations=0, launch_tags_active=8, launch_tags_expected=8
)


def test_violation_line_is_the_frozen_format():
    assert VIOLATION.format() == (
        "kv_canary violation: launch_tag=TAIL_V_SWA fail_reason=chain_hash+real_kv_hash "
        "slot_idx=12 position=40 stored_token=-1 expected_token=7 step=33"
    )


def test_divergence_line_is_the_frozen_format():
    assert DIVERGENCE.format() == (
        'kv_canary_swa_divergence={"forward_ct":20,"verify_full":900,"verify_swa":300,'
        '"swa_full_idx_divergence":41,"swa_out_of_window_tokens":12}'
    )


def test_stats_line_is_the_frozen_format():
    assert STATS.format() == (
        "kv_canary_stats step=100 protected_tokens=12345 sweep_passes=3 violations=0 launch_tags_active=8/8"
    )


@pytest.mark.parametrize("value", [VIOLATION, DIVERGENCE, STATS])
def test_lines_round_trip_through_logger_prefixes(value):
    text = f"2026-11-23 INFO noise\n[worker 3] ERROR {value.format()}\nmore noise\n{value.format()}"
    assert type(value).parse(f"prefix: {value.format()}") == value
    assert type(value).find_all(text) == [value, value]
    assert type(value).find_last(text) == value
    assert type(value).find_last("nothing here") is None


def test_malformed_lines_do_not_parse():
    assert ViolationRecord.parse("kv_canary violation: launch_tag=HEAD_K_FULL fail_reason= slot_idx=1") is None
    assert SwaDivergenceLog.parse('kv_canary_swa_divergence={"forward_ct":1}') is None
    assert SwaDivergenceLog.parse("kv_canary_swa_divergence={not json") is None


def test_unknown_fail_reasons_are_rejected():
    with pytest.raises(KeyError):
        ViolationRecord(
            launch_tag="HEAD_K_FULL",
            fail_reasons=("gremlins",),
            slot_idx=1,
            position=0,
            stored_token=0,
            expected_token=0,
            step=1,
        )
