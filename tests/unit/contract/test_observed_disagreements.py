"""Each fault and engine setting issue 12 found passing ``kv-canary validate`` and then failing the run
(or refused by one side and accepted by the other): now both refuse it, with the same reason."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.unit.contract.verdicts import server_fault_verdict, server_settings_verdict, validator_verdict

REFUSED_FAULTS = {
    "stale_prefix with target.request": (
        "mha",
        {"kind": "stale_prefix", "at_step": 5, "target": {"request": "running"}},
        "fault.target.request",
        "target.request does not apply to stale_prefix; it accepts group, node",
    ),
    "swap_next_token with target.node": (
        "mha",
        {"kind": "swap_next_token", "at_step": 5, "target": {"node": "deepest_locked"}},
        "fault.target.node",
        "target.node does not apply to swap_next_token; it accepts request",
    ),
    "swap_next_token with target.slot": (
        "swa",
        {"kind": "swap_next_token", "at_step": 5, "target": {"slot": "used"}},
        "fault.target.slot",
        "target.slot does not apply to swap_next_token; it accepts request",
    ),
    "corrupt_kv_bytes in group full in dsv4": (
        "dsv4",
        {"kind": "corrupt_kv_bytes", "at_step": 5, "target": {"group": "full"}},
        "fault.target.group",
        "target.group=full: in mode dsv4 the full-pool slots hold no per-slot K/V and no canary records",
    ),
    "position out_of_window in mha": (
        "mha",
        {"kind": "req_to_token_remap", "at_step": 5, "target": {"position": "out_of_window"}},
        "fault.target.position",
        "target.position=out_of_window: mode mha has no sliding window",
    ),
    "slot cached_unused with request running": (
        "swa",
        {"kind": "corrupt_kv_bytes", "at_step": 5, "target": {"request": "running", "slot": "cached_unused"}},
        "fault.target.slot",
        "target.slot=cached_unused is held by a finished request, not a running one",
    ),
    "a billion applications": (
        "mha",
        {"kind": "double_free", "at_step": 1_000_000, "count": 10**29},
        "fault.count",
        "less than or equal to 100000",
    ),
    "issue 12's wedging body": (
        "mha",
        {"kind": "none", "at_step": 1_000_000, "count": 1.2e29},
        "fault.count",
        "Input should be a valid integer",
    ),
    "kind none with a trigger and a count": (
        "mha",
        {"kind": "none", "at_step": 1_000_000, "count": 2},
        "fault.at_step",
        "kind 'none' injects nothing; remove at_step",
    ),
}


@pytest.mark.parametrize("case", REFUSED_FAULTS)
def test_both_refuse_the_fault_with_the_same_reason(case, inject_clients):
    mode, fault, key, reason = REFUSED_FAULTS[case]
    validator = validator_verdict(mode=mode, fault=fault)
    server = server_fault_verdict(inject_clients[mode], fault)
    assert not validator.accepted and not server.accepted
    (ours,) = [line for line in validator.reasons if reason in line]
    assert ours.startswith(f"{key}: "), validator.reasons
    assert reason in server.reasons[0], server.reasons


def test_a_seed_without_a_probability_seeds_the_target_choices_on_both_sides(inject_clients):
    # The injector draws each application's bits, words and tokens from the seed (else from the
    # fault's id): a seed with an at_step trigger is meaningful, so both accept it.
    fault = {"kind": "double_free", "at_step": 5, "seed": 7}
    assert validator_verdict(mode="mha", fault=fault).accepted
    assert server_fault_verdict(inject_clients["mha"], fault).accepted


REFUSED_SETTINGS = {
    "swa_window below dsv4's compress ratio": (
        "dsv4",
        {"swa_window": 1},
        "engine.swa_window",
        "1 is less than mode dsv4's compress ratio (4)",
    ),
    "max_total_tokens not a multiple of page_size": (
        "mha",
        {"page_size": 16, "max_total_tokens": 1000},
        "engine.max_total_tokens",
        "1000 is not a multiple of page_size (16)",
    ),
}


@pytest.mark.parametrize("case", REFUSED_SETTINGS)
def test_both_refuse_the_engine_settings_with_the_same_reason(case):
    mode, engine, key, reason = REFUSED_SETTINGS[case]
    validator = validator_verdict(mode=mode, engine=engine)
    server = server_settings_verdict(mode=mode, engine=engine)
    assert not validator.accepted and not server.accepted
    (ours,) = [line for line in validator.reasons if reason in line]
    assert ours.startswith(f"{key}: "), validator.reasons
    assert reason in server.reasons[0], server.reasons


def test_the_server_process_refuses_them_at_start_up_with_exit_2():
    started = subprocess.run(
        [sys.executable, "-m", "mock_models.server", "--model-mode", "dsv4", "--swa-window", "1", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode == 2
    assert "1 is less than mode dsv4's compress ratio (4)" in started.stderr
    assert "listening" not in started.stderr
