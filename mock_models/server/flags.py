"""The server's engine-setting flags, generated from the contract's ``EngineSettings``, and the
configs they make.

One flag per setting (``page_size`` -> ``--page-size``), with its choices; its bounds and the rules
between settings are the contract's (``engine_setting_problems``), checked under the names a
scenario uses before any config is built. A flag left out keeps the server's default:
``EngineConfig``'s for the engine's settings; for the canary's (``CANARY_SETTINGS``) ``KV_CANARY_*``
from the environment, else ``CanaryConfig``'s.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable, Mapping

import click

import kv_canary_contract
from kv_canary import CanaryConfig, CanaryMode
from kv_canary.config import ENV_PREFIX
from kv_canary_contract import CANARY_SETTINGS, EngineSettings, engine_setting_problems, setting_bounds, setting_flag
from mock_models.config import CONTRACT_SETTINGS, EngineConfig, MemBackend, ModelMode

# The canary settings under their CanaryConfig names (a scenario and a flag say real_kv and
# canary_mode; the canary's config and its KV_CANARY_* variables say real_kv_hash and mode).
CANARY_CONFIG_FIELDS: Mapping[str, str] = {
    "sweep_interval": "sweep_interval",
    "real_kv": "real_kv_hash",
    "canary_mode": "mode",
    "stats_interval": "stats_interval",
    "swa_divergence_interval": "swa_divergence_interval",
    "check_lost_writes": "check_lost_writes",
}
# Values the server takes beyond a scenario's: it also serves with the canary off.
_SERVER_ONLY_CHOICES: Mapping[str, tuple[str, ...]] = {"canary_mode": (CanaryMode.NONE.value,)}

_ENGINE_DEFAULTS = EngineConfig()
_CANARY_DEFAULTS = CanaryConfig()


class EngineSettingsError(ValueError):
    """Engine-setting flags the contract refuses (out of bounds, or not usable together in the mode)."""


def engine_setting_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add one click option per engine setting, in ``EngineSettings`` order."""
    for name in reversed(EngineSettings.model_fields):
        command = click.option(setting_flag(name), name, type=_click_type(name), default=None, help=_help(name))(
            command
        )
    return command


def build_configs(
    *, model_mode: str, device: str, mem_backend: str, settings: Mapping[str, object | None]
) -> tuple[EngineConfig, CanaryConfig]:
    """The engine's and the canary's config from the flags (``None``: not given); raises ValueError
    (EngineSettingsError, EngineConfigError, CanaryConfigError) for settings the server cannot use."""
    given = {name: value for name, value in settings.items() if value is not None}
    problems = engine_setting_problems(given, mode=kv_canary_contract.model_mode(model_mode))
    if problems:
        raise EngineSettingsError("; ".join(f"{problem.loc[0]}: {problem.message}" for problem in problems))
    canary_overrides: dict[str, typing.Any] = {
        CANARY_CONFIG_FIELDS[name]: _canary_value(CANARY_CONFIG_FIELDS[name], value)
        for name, value in given.items()
        if name in CANARY_SETTINGS
    }
    engine_values: dict[str, typing.Any] = {name: value for name, value in given.items() if name in CONTRACT_SETTINGS}
    canary_config = CanaryConfig.from_env(None, **canary_overrides)
    config = EngineConfig(
        model_mode=ModelMode(model_mode), device=device, mem_backend=MemBackend(mem_backend), **engine_values
    )
    return config, canary_config


def server_default(name: str) -> object:
    """What the server uses for a setting whose flag is left out (with no KV_CANARY_* variable set)."""
    if name in CANARY_SETTINGS:
        default = getattr(_CANARY_DEFAULTS, CANARY_CONFIG_FIELDS[name])
        return default.value if isinstance(default, enum.Enum) else default
    return getattr(_ENGINE_DEFAULTS, name)


class _NameList(click.ParamType):
    """``a,b``: a list of names (``setting_argument`` writes lists this way); the contract judges the names."""

    name = "name,..."

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        return [item.strip() for item in str(value).split(",") if item.strip()]


def _click_type(name: str) -> click.ParamType:
    # Numbers are bounded by engine_setting_problems in build_configs, whose messages name the
    # setting as a scenario does (page_size, not --page-size).
    kinds = typing.get_args(EngineSettings.model_fields[name].annotation) or (
        EngineSettings.model_fields[name].annotation,
    )
    choices = [arg for arg in kinds if isinstance(arg, str)]
    if choices:
        return click.Choice([*_SERVER_ONLY_CHOICES.get(name, ()), *choices])
    if bool in kinds:
        return click.BOOL
    if float in kinds:
        return click.FLOAT
    if any(typing.get_origin(kind) is list for kind in kinds):
        return _NameList()
    return click.INT


def _help(name: str) -> str:
    description = EngineSettings.model_fields[name].description or ""
    least, greatest = setting_bounds(name)
    bounds = f"; {least} to {greatest}" if least is not None else ""
    if name in CANARY_SETTINGS:
        variable = ENV_PREFIX + CANARY_CONFIG_FIELDS[name].upper()
        return f"{description} [default: ${variable}, else {server_default(name)}{bounds}]"
    return f"{description} [default: {server_default(name)}{bounds}]"


def _canary_value(field: str, value: object) -> object:
    """A flag's text as the CanaryConfig field takes it (its enums by value)."""
    default = next(f.default for f in dataclasses.fields(CanaryConfig) if f.name == field)
    return type(default)(value) if isinstance(default, enum.Enum) else value
