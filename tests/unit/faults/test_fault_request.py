"""The inject body: what is refused and why, and the target defaults per kind and mode."""

from __future__ import annotations

import typing

import pytest
from pydantic import ValidationError

from harness.scenario.model import Scenario
from kv_canary_contract import FAULT_KINDS, Fault, ResolvedTarget
from mock_models.config import EngineConfig, ModelMode
from mock_models.faults.fault_request import FaultRequestError, resolve
from mock_models.server.fault_routes import build_fault_router


def resolved(mode: str = "mha", **body: object):
    return resolve(Fault.model_validate(body), EngineConfig(model_mode=ModelMode(mode)), canary_installed=True)


def refusal(mode: str = "mha", **body: object) -> str:
    with pytest.raises(FaultRequestError) as refused:
        resolved(mode, **body)
    return str(refused.value)


def test_the_server_takes_every_kind_and_target_value_a_scenario_can_name():
    # One model for both: the scenario's fault mapping is the inject route's body.
    assert Scenario.model_fields["fault"].annotation == Fault | None
    (route,) = [route for route in build_fault_router(injector=None).routes if route.path.endswith("/inject")]
    assert typing.get_type_hints(route.endpoint)["body"] is Fault
    assert typing.get_args(Fault.model_fields["kind"].annotation) == FAULT_KINDS


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "melt_the_gpu", "at_step": 3},
        {"kind": "double_free", "at_step": 3, "when": "later"},
        {"kind": "double_free", "at_step": "3"},
        {"kind": "double_free", "at_step": 3, "target": {"slot": "somewhere"}},
        {"kind": "double_free", "probability": 1.5, "seed": 1},
    ],
)
def test_a_body_of_the_wrong_shape_is_a_validation_error(body):
    with pytest.raises(ValidationError):
        Fault.model_validate(body)


@pytest.mark.parametrize(
    ("mode", "body", "message"),
    [
        ("mha", {"kind": "double_free"}, "say when to inject"),
        (
            "mha",
            {"kind": "double_free", "at_step": 3, "after_warmup_steps": 2},
            "at_step, after_warmup_steps are all set",
        ),
        ("mha", {"kind": "double_free", "probability": 0.5}, "probability needs a seed"),
        (
            "mha",
            {"kind": "swap_next_token", "at_step": 3, "target": {"node": "deepest_locked"}},
            "target.node does not apply to swap_next_token; it accepts request",
        ),
        (
            "mha",
            {"kind": "stale_prefix", "at_step": 3, "target": {"node": "deepest_locked"}},
            "target.node=deepest_locked does not apply to stale_prefix; use any_unlocked",
        ),
        (
            "mha",
            {"kind": "corrupt_kv_bytes", "at_step": 3, "target": {"request": "finished", "slot": "used"}},
            "target.slot=used is held by a running request, not a finished one",
        ),
        (
            "mha",
            {"kind": "corrupt_kv_bytes", "at_step": 3, "target": {"slot": "post_forward", "position": "in_window"}},
            "target.position picks a position a running request reads",
        ),
        ("mha", {"kind": "remap_swa_slot", "at_step": 3}, "target.group=swa: mode mha has no SWA pool"),
        ("mha", {"kind": "double_free", "at_step": 3, "target": {"group": "swa"}}, "mode mha has no SWA pool"),
        (
            "mha",
            {"kind": "req_to_token_remap", "at_step": 3, "target": {"position": "out_of_window"}},
            "mode mha has no sliding window",
        ),
        (
            "dsv4",
            {"kind": "corrupt_canary", "at_step": 3, "target": {"group": "full"}},
            "in mode dsv4 the full-pool slots hold no per-slot K/V and no canary records",
        ),
        (
            "swa",
            {"kind": "corrupt_kv_bytes", "at_step": 3, "target": {"group": "swa", "position": "out_of_window"}},
            "positions out of the window have no SWA slot",
        ),
    ],
)
def test_a_body_that_cannot_be_applied_is_refused_with_the_reason(mode, body, message):
    assert message in refusal(mode, **body)


def test_every_problem_is_named_at_once():
    message = refusal("mha", kind="remap_swa_slot", probability=0.5, target={"node": "any_unlocked"})
    assert "probability needs a seed" in message and "target.node does not apply" in message


def test_corrupt_canary_needs_the_canary():
    body = Fault(kind="corrupt_canary", at_step=1)
    with pytest.raises(FaultRequestError, match="the canary is off"):
        resolve(body, EngineConfig(), canary_installed=False)


@pytest.mark.parametrize(
    ("mode", "body", "target"),
    [
        (
            "mha",
            {"kind": "corrupt_kv_bytes"},
            ResolvedTarget(group="full", request="running", slot="used", node=None, position=None),
        ),
        (
            "dsv4",
            {"kind": "corrupt_kv_bytes", "target": {"request": "finished"}},
            ResolvedTarget(group="swa", request="finished", slot="cached_unused", node=None, position=None),
        ),
        (
            "swa",
            {"kind": "evict_radix_node"},
            ResolvedTarget(group="full", request="running", slot=None, node="deepest_locked", position=None),
        ),
        (
            "swa",
            {"kind": "remap_swa_slot", "target": {"position": "in_window"}},
            ResolvedTarget(group="swa", request="running", slot=None, node=None, position="in_window"),
        ),
        (
            "dsv4",
            {"kind": "stale_prefix"},
            ResolvedTarget(group="swa", request=None, slot=None, node="any_unlocked", position=None),
        ),
        (
            "mha",
            {"kind": "swap_next_token"},
            ResolvedTarget(group=None, request="running", slot=None, node=None, position=None),
        ),
    ],
)
def test_target_keys_left_out_take_the_kinds_defaults(mode, body, target):
    assert resolved(mode, at_step=1, **body).target == target
