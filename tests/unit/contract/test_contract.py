"""The contract's own tables: consistent with each other, with docs/DESIGN.md, and importable anywhere."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest

from kv_canary_contract import (
    FAULT_KIND_RULES,
    FAULT_KINDS,
    MODEL_MODES,
    MODES,
    TARGET_VALUES,
    Fault,
    FaultTarget,
    engine_setting_problems,
    fault_kinds_in_mode,
    fault_problems,
    resolve_target,
)


def test_every_kind_has_one_rule_and_takes_only_target_keys_and_values_of_the_vocabulary():
    assert tuple(FAULT_KIND_RULES) == FAULT_KINDS
    for kind, rule in FAULT_KIND_RULES.items():
        for key, values in rule.targets.items():
            assert set(values) <= set(TARGET_VALUES[key]), (kind, key)


def test_the_target_model_takes_exactly_the_vocabulary():
    assert list(FaultTarget.model_fields) == list(TARGET_VALUES)
    for key, field in FaultTarget.model_fields.items():
        literal, none = typing.get_args(field.annotation)
        assert none is type(None) and typing.get_args(literal) == TARGET_VALUES[key]


FEATURE_KINDS = {
    "disaggregation": ("transfer_drop_group", "transfer_misorder_pages", "transfer_foreign_pages"),
    "host_tier_tokens": ("restore_wrong_slots", "stale_swa_translation", "host_copy_overwrite"),
    "speculative_num_steps": ("draft_position_shift",),
}
FEATURE_ON = {"disaggregation": "prefill_decode", "host_tier_tokens": 64, "speculative_num_steps": 3}


def test_the_design_fault_table_remap_swa_slot_needs_an_swa_pool_every_other_kind_runs_everywhere():
    # On a plain engine (no feature setting on): the kinds that corrupt what every engine has.
    injecting = [kind for kind in FAULT_KINDS if kind != "none" and FAULT_KIND_RULES[kind].needs_setting is None]
    assert fault_kinds_in_mode("swa", engine={}) == fault_kinds_in_mode("dsv4", engine={}) == tuple(injecting)
    assert fault_kinds_in_mode("mha", engine={}) == tuple(kind for kind in injecting if kind != "remap_swa_slot")


def test_a_feature_kind_runs_only_with_its_feature_on_and_names_the_setting_when_off():
    assert {kind for kinds in FEATURE_KINDS.values() for kind in kinds} == {
        kind for kind, rule in FAULT_KIND_RULES.items() if rule.needs_setting is not None
    }
    for setting, kinds in FEATURE_KINDS.items():
        engine = {setting: FEATURE_ON[setting]}
        for kind in kinds:
            assert FAULT_KIND_RULES[kind].needs_setting == setting
            modes = [mode for mode in MODEL_MODES if kind in fault_kinds_in_mode(mode, engine=engine)]
            assert modes == (["swa", "dsv4"] if kind == "stale_swa_translation" else list(MODEL_MODES))
            assert all(kind not in fault_kinds_in_mode(mode, engine={}) for mode in MODEL_MODES)
            fault = Fault(kind=kind, at_step=1)
            (off,) = fault_problems(fault, mode="swa", engine={})
            assert off.loc == ("kind",) and setting in off.message
            assert fault_problems(fault, mode="swa", engine=engine) == []


def test_the_design_mode_table_full_and_swa_groups_and_dsv4_guards_the_swa_k_half_only():
    assert MODEL_MODES == ("mha", "swa", "dsv4")
    assert [MODES[mode].guarded_groups for mode in MODEL_MODES] == [("full",), ("full", "swa"), ("swa",)]
    assert MODES["dsv4"].guarded == {("swa", "k")}
    assert [MODES[mode].has_swa_pool for mode in MODEL_MODES] == [False, True, True]


def test_a_target_left_out_takes_the_group_the_canary_guards_first():
    fault = Fault(kind="double_free", at_step=1)
    assert [resolve_target(fault, mode).group for mode in MODEL_MODES] == ["full", "full", "swa"]
    assert resolve_target(Fault(kind="remap_swa_slot", at_step=1), "swa").group == "swa"


def test_every_problem_is_located_at_a_key_of_the_body():
    fault = Fault.model_validate(
        {"kind": "swap_next_token", "at_step": 1, "probability": 0.5, "target": {"node": "any_unlocked"}}
    )
    problems = fault_problems(fault, mode="mha")
    assert {problem.loc for problem in problems} == {("probability",), ("target", "node")}


def test_the_contract_imports_pydantic_and_nothing_of_the_project_or_torch():
    code = (
        "import sys, kv_canary_contract; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'harness', 'mock_models', 'kv_canary'}))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


@pytest.mark.parametrize("feature", sorted(FEATURE_ON))
def test_a_feature_runs_on_the_plain_scheduler_only(feature):
    on = {feature: FEATURE_ON[feature]}
    assert engine_setting_problems(on | {"overlap_schedule": False, "new_token_ratio": 1.0}, mode="mha") == []
    for scheduling in ({"overlap_schedule": True}, {"new_token_ratio": 0.5}):
        (problem,) = engine_setting_problems(on | scheduling, mode="mha")
        assert problem.loc == (feature,) and "plain scheduler" in problem.message
