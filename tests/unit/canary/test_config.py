from __future__ import annotations

import pytest

from kv_canary import CanaryConfig, CanaryConfigError, CanaryMode, RealKvHashMode


def test_config_reads_its_variables_once_from_the_environment():
    config = CanaryConfig.from_env(
        {
            "KV_CANARY_MODE": "raise",
            "KV_CANARY_REAL_KV_HASH": "ALL",
            "KV_CANARY_SWEEP_INTERVAL": "8",
            "KV_CANARY_VERIFY_TOKENS": "off",
            "UNRELATED": "x",
        }
    )
    assert (config.mode, config.real_kv_hash, config.sweep_interval, config.verify_tokens) == (
        CanaryMode.RAISE,
        RealKvHashMode.ALL,
        8,
        False,
    )


def test_explicit_overrides_win_over_the_environment():
    assert CanaryConfig.from_env({"KV_CANARY_MODE": "raise"}, mode=CanaryMode.LOG).mode is CanaryMode.LOG


def test_to_env_round_trips():
    config = CanaryConfig(mode=CanaryMode.RAISE, ring_capacity=7, self_test_disable_verify=True)
    assert CanaryConfig.from_env(config.to_env()) == config


@pytest.mark.parametrize(
    "variable,value,message",
    [
        ("KV_CANARY_MODE", "loud", "expected one of none, log, raise"),
        ("KV_CANARY_RING_CAPACITY", "many", "expected an integer"),
        ("KV_CANARY_RING_CAPACITY", "0", "ring_capacity must be >= 1"),
        ("KV_CANARY_SWEEP_INTERVAL", "-3", "sweep_interval must be >= 0"),
        ("KV_CANARY_ASSERT_WRITE_INPUTS", "maybe", "expected a boolean"),
    ],
)
def test_bad_values_are_clear_errors_naming_the_setting(variable, value, message):
    with pytest.raises(CanaryConfigError, match=message) as raised:
        CanaryConfig.from_env({variable: value})
    assert variable.removeprefix("KV_CANARY_").lower() in str(raised.value).lower()


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        CanaryConfig().mode = CanaryMode.NONE
