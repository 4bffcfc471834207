"""Engine settings are declared once (``kv_canary_contract.EngineSettings``): every scenario key is a
flag the server takes, with the same bounds and default, and lands in the engine's or the canary's config."""

from __future__ import annotations

import dataclasses
import typing

import click
import pytest

from harness.runner.server_command import server_argv
from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode
from kv_canary_contract import (
    CANARY_SETTINGS,
    MODEL_MODES,
    EngineSettings,
    setting_bounds,
    setting_choices,
    setting_flag,
)
from mock_models.config import CONTRACT_SETTINGS, EngineConfig, EngineConfigError, ModelMode
from mock_models.server.flags import CANARY_CONFIG_FIELDS, build_configs, server_default
from mock_models.server.main import serve_command

OPTIONS = {option.opts[0]: option for option in serve_command.params if isinstance(option, click.Option)}


def server_refusal(name: str, value: object) -> str | None:
    """Why the server's flag parser and config builder refuse ``--<name> <value>``; None if they take it."""
    try:
        with serve_command.make_context("serve", [setting_flag(name), str(value)]) as context:
            build_configs(model_mode="mha", device="cpu", mem_backend="mock", settings={name: context.params[name]})
    except (click.ClickException, ValueError) as refused:
        return str(refused)
    return None


@pytest.mark.parametrize("name", list(EngineSettings.model_fields))
def test_every_engine_setting_is_a_server_flag_with_the_same_bounds_or_choices(name):
    assert isinstance(OPTIONS.get(setting_flag(name)), click.Option)
    choices = setting_choices(name)
    if choices:
        # The server takes every value a scenario may write; beyond them only canary mode none
        # (a server with the canary off), which a scenario, needing the canary, never writes.
        server_choices = OPTIONS[setting_flag(name)].type.choices
        assert set(server_choices) - set(choices) == ({"none"} if name == "canary_mode" else set())
        assert set(choices) <= set(server_choices)
        return
    kinds = typing.get_args(EngineSettings.model_fields[name].annotation)
    if bool in kinds:
        assert OPTIONS[setting_flag(name)].type is click.BOOL
        assert server_refusal(name, True) is None and server_refusal(name, False) is None
        return
    if list[str] in kinds:  # names, comma-separated; the contract judges them (test_engine_bugs.py)
        assert server_refusal(name, "eviction-leaves-phantom-prefix") is None
        assert "unknown bug 'no-such-bug'" in server_refusal(name, "no-such-bug")
        return
    least, greatest = setting_bounds(name)
    assert server_refusal(name, least) is None and server_refusal(name, greatest) is None
    assert f"{name}: {least - 1} is too small" in server_refusal(name, least - 1)
    assert f"{name}: {greatest + 1} is too large" in server_refusal(name, greatest + 1)


@pytest.mark.parametrize("name", list(EngineSettings.model_fields))
def test_a_setting_a_scenario_defaults_has_the_servers_default(name):
    default = EngineSettings.model_fields[name].default
    if default is None:  # not passed: the server's own default applies, whatever it is
        return
    assert server_default(name) == default


def test_every_setting_lands_in_exactly_one_config_field():
    engine_fields = {field.name for field in dataclasses.fields(EngineConfig)}
    canary_fields = {field.name for field in dataclasses.fields(CanaryConfig)}
    for name in EngineSettings.model_fields:
        if name in CANARY_SETTINGS:
            assert CANARY_CONFIG_FIELDS[name] in canary_fields and name not in engine_fields
        else:
            assert name in CONTRACT_SETTINGS and name in engine_fields
    assert set(CANARY_CONFIG_FIELDS) == set(CANARY_SETTINGS)


def test_the_harness_command_line_reaches_the_server_configs_unchanged():
    settings = EngineSettings(
        page_size=4,
        max_total_tokens=512,
        swa_window=8,
        sweep_interval=3,
        real_kv="all",
        canary_mode="raise",
        max_running_requests=5,
        chunked_prefill_size=16,
        seed=-9,
        stats_interval=7,
        swa_divergence_interval=2,
        tp=2,
        overlap_schedule=True,
        new_token_ratio=0.5,
        bugs=["overlap-frees-in-flight-page", "paged-match-aliases-boundary-page"],
        check_lost_writes=True,
        jitter_max_us=50,
        jitter_seed=3,
    )
    argv = server_argv(server_command=(), engine=settings, mode="dsv4", port=0, device="cpu", swa_divergence_interval=2)
    with serve_command.make_context("serve", argv) as context:
        params = dict(context.params)
    engine, canary = build_configs(
        model_mode=params.pop("model_mode"),
        device=params.pop("device"),
        mem_backend=params.pop("mem_backend"),
        settings={name: params[name] for name in EngineSettings.model_fields},
    )
    assert engine.model_mode is ModelMode.DSV4
    assert {name: getattr(engine, name) for name in CONTRACT_SETTINGS} == {
        "page_size": 4,
        "max_total_tokens": 512,
        "swa_window": 8,
        "max_running_requests": 5,
        "chunked_prefill_size": 16,
        "seed": -9,
        "tp": 2,
        "pp": 1,  # left out: the server's default
        "overlap_schedule": True,
        "new_token_ratio": 0.5,
        "bugs": ("overlap-frees-in-flight-page", "paged-match-aliases-boundary-page"),
        "jitter_max_us": 50,
        "jitter_seed": 3,
        # left out by the scenario: not passed, the server's defaults (features off)
        "disaggregation": "none",
        "host_tier_tokens": 0,
        "speculative_num_steps": 0,
    }
    assert (canary.sweep_interval, canary.real_kv_hash, canary.mode) == (3, RealKvHashMode.ALL, CanaryMode.RAISE)
    assert (canary.stats_interval, canary.swa_divergence_interval, canary.check_lost_writes) == (7, 2, True)


def test_the_engine_config_is_checked_by_the_same_rules():
    with pytest.raises(EngineConfigError, match=r"EngineConfig.max_total_tokens: 100 is not a multiple of page_size"):
        EngineConfig(page_size=8, max_total_tokens=100)
    with pytest.raises(EngineConfigError, match=r"EngineConfig.page_size: 2048 is too large: must be <= 1024"):
        EngineConfig(page_size=2048, max_total_tokens=2048)
    with pytest.raises(EngineConfigError, match=r"EngineConfig.swa_window: 3 is less than mode dsv4's compress ratio"):
        EngineConfig(model_mode="dsv4", swa_window=3)
    assert EngineConfig(model_mode="mha", swa_window=3).swa_window == 3  # no compressed pool: no such rule


def test_the_engines_modes_are_the_contracts():
    assert tuple(mode.value for mode in ModelMode) == MODEL_MODES
