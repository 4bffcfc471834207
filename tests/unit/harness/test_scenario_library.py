"""The scenario library in scenarios/: it validates, and it covers every fault kind in every mode it applies to."""

from __future__ import annotations

from pathlib import Path

from harness.scenario import load_scenarios
from harness.scenario.loader import UNSTATED_REASON
from kv_canary_contract import ENGINE_BUGS, FAULT_KINDS, MODEL_MODES, fault_kinds_in_mode

LIBRARY = Path(__file__).resolve().parents[3] / "scenarios"
# The modes each injecting kind runs in, as the contract says (docs/DESIGN.md's fault table).
MODES_OF_KIND = {
    kind: {mode for mode in MODEL_MODES if kind in fault_kinds_in_mode(mode)}
    for kind in FAULT_KINDS
    if any(kind in fault_kinds_in_mode(mode) for mode in MODEL_MODES)
}


def test_the_whole_library_validates():
    assert len(load_scenarios([LIBRARY])) >= len(MODES_OF_KIND) + len(MODEL_MODES)


def test_every_fault_kind_has_a_scenario_in_each_of_its_modes():
    covered: dict[str, set[str]] = {kind: set() for kind in MODES_OF_KIND}
    for item in load_scenarios([LIBRARY]):
        for mode, scenario in item.modes.items():
            for _, fault in scenario.named_faults():
                covered[fault.kind].add(mode)
    assert covered == MODES_OF_KIND


def test_the_library_has_no_per_mode_copies():
    """One file a scenario: no two files say the same thing but for their name and modes."""
    seen: dict[str, str] = {}
    for item in load_scenarios([LIBRARY]):
        assert not item.path.stem.endswith(("-mha", "-swa", "-dsv4")), f"{item.path.name}: a per-mode copy's name"
        body = item.scenario.model_dump_json(exclude={"name", "description", "model_modes", "per_mode"})
        assert body not in seen, f"{item.path.name} repeats {seen[body]}"
        seen[body] = item.path.name


def test_every_mode_a_library_scenario_leaves_out_has_a_reason_it_gives_or_the_contract_gives():
    for item in load_scenarios([LIBRARY]):
        assert set(item.modes) | set(item.not_applicable) == set(MODEL_MODES)
        for mode, reason in item.not_applicable.items():
            assert reason != UNSTATED_REASON, f"{item.path.name} leaves out {mode} without saying why"


def test_every_mode_has_a_clean_baseline():
    baselines = [item.scenario for item in load_scenarios([LIBRARY]) if not item.scenario.has_culprit]
    assert {mode for scenario in baselines for mode in scenario.model_modes} == set(MODEL_MODES)
    assert all(scenario.expect.detected is False for scenario in baselines)


def test_the_library_holds_at_least_20_fault_and_bug_scenarios():
    culprits = [item.scenario.name for item in load_scenarios([LIBRARY]) if item.scenario.has_culprit]
    assert len(culprits) >= 20, culprits


def test_every_engine_bug_has_a_scenario_in_each_mode_it_applies_to_and_a_clean_twin_is_implied():
    covered: dict[str, set[str]] = {name: set() for name in ENGINE_BUGS}
    for item in load_scenarios([LIBRARY]):
        for mode, scenario in item.modes.items():
            for bug in scenario.bugs:
                covered[bug].add(mode)
            if scenario.bugs:
                assert scenario.expect.detected is not None and not scenario.injects_fault, item.path.name
    assert covered == {name: set(bug.modes) for name, bug in ENGINE_BUGS.items()}


def test_a_pinned_blind_spot_says_why_and_asserts_the_harm_it_misses():
    pinned = [
        (item.path.name, mode, scenario.expect)
        for item in load_scenarios([LIBRARY])
        for mode, scenario in item.modes.items()
        if scenario.has_culprit and scenario.expect.detected is False
    ]
    assert pinned, "the library pins no blind spot"
    for name, mode, expect in pinned:
        assert expect.blind_spot and expect.harm is True, f"{name} in {mode}"
