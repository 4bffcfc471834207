"""The harness proves its own worth: with the canary blinded (``KV_CANARY_SELF_TEST_DISABLE_VERIFY=1``:
no check records anything) a fault scenario of each detection family fails, undetected, while the
same scenario passes with the canary seeing, and a baseline passes either way."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.pytest_plugin import selected_modes
from harness.runner import run_scenario
from harness.scenario import load_scenario_file

pytestmark = pytest.mark.e2e

LIBRARY = Path(__file__).resolve().parents[2] / "scenarios"
BLIND = "KV_CANARY_SELF_TEST_DISABLE_VERIFY"
# detection family -> the scenario (its file's stem) that proves it
FAMILIES = {
    "real_kv_hash": "corrupt-kv-bytes-used",
    "chain_hash_and_position": "req-to-token-remap",
    "token_and_write_token": "swap-next-token",
    "swa_group": "remap-swa-slot",
}


def scenario_in_a_selected_mode(stem: str, config: pytest.Config) -> tuple[Path, str]:
    path = LIBRARY / f"{stem}.yaml"
    runs_in = load_scenario_file(path).modes
    for mode in selected_modes(config):
        if mode in runs_in:
            return path, mode
    pytest.skip(f"{stem} runs in none of the selected modes ({', '.join(selected_modes(config))})")


def run(path: Path, mode: str, options, label: str):
    options = dataclasses.replace(options, log_dir=options.log_dir / "self-test" / label)
    return run_scenario(load_scenario_file(path), mode, options)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_blind_canary_misses_the_fault_and_a_seeing_one_catches_it(
    family, pytestconfig, kv_canary_run_options, monkeypatch
):
    path, mode = scenario_in_a_selected_mode(FAMILIES[family], pytestconfig)
    monkeypatch.setenv(BLIND, "1")
    blind = run(path, mode, kv_canary_run_options, "blind")
    assert blind.error is None, blind.error
    assert [injection.status for injection in blind.injections] == ["applied"]
    assert not blind.passed and not blind.check.detected and blind.check.violation_count == 0
    monkeypatch.delenv(BLIND)
    seeing = run(path, mode, kv_canary_run_options, "seeing")
    assert seeing.passed, seeing.failure_message()
    assert seeing.check.detected


def test_a_blind_canary_still_passes_the_baseline(pytestconfig, kv_canary_run_options, monkeypatch):
    path, mode = scenario_in_a_selected_mode("baseline", pytestconfig)
    monkeypatch.setenv(BLIND, "1")
    result = run(path, mode, kv_canary_run_options, "blind")
    assert result.passed, result.failure_message()
