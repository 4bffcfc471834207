"""The canary's configuration: one frozen value, read from the environment once, at the edge."""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping
from typing import Any

from kv_canary.errors import CanaryConfigError

ENV_PREFIX = "KV_CANARY_"


class CanaryMode(enum.Enum):
    NONE = "none"
    LOG = "log"
    RAISE = "raise"


class RealKvHashMode(enum.Enum):
    """How much of a slot's real K/V bytes the TAIL record's hash covers."""

    NONE = "none"
    PARTIAL = "partial"  # the first PARTIAL_REAL_KV_BYTES of the slot's row, in every layer
    ALL = "all"  # every byte of the slot's row, in every layer


PARTIAL_REAL_KV_BYTES = 16


class KernelBackend(enum.Enum):
    AUTO = "auto"  # Triton on CUDA tensors, the torch reference elsewhere
    TRITON = "triton"
    TORCH = "torch"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CanaryConfig:
    mode: CanaryMode = CanaryMode.LOG
    real_kv_hash: RealKvHashMode = RealKvHashMode.PARTIAL
    backend: KernelBackend = KernelBackend.AUTO
    # Violation rows kept on device between two drains; the count survives overflow.
    ring_capacity: int = 1024
    # The torch reference's plan sizes under CUDA-graph capture (eager forwards grow them). The Triton
    # kernels plan inside their launches and need none; verify_capacity sizes a captured launch's
    # parallelism there, and longer forwards are still verified whole.
    verify_capacity: int = 1 << 16
    write_capacity: int = 1 << 14
    max_requests_per_forward: int = 1024
    sweep_interval: int = 0  # forwards between radix sweep steps; 0 = no sweep
    # A sweep step verifies the next radix nodes of its round, up to these many nodes and cached
    # tokens (at least one node); a round covers the cache, resuming where the last step stopped.
    sweep_step_nodes: int = 256
    sweep_step_tokens: int = 1 << 18
    stats_interval: int = 100  # forwards between kv_canary_stats lines; 0 = off
    health_check_interval: int = 100  # forwards between kernel-run-counter checks; 0 = off
    health_check_warmup: int = 100
    swa_divergence_interval: int = 0  # forwards between kv_canary_swa_divergence lines; 0 = off
    # Per interval of this many forwards, the first violation of each (slot, launch tag, reasons) is
    # logged in full and its repeats are counted into one kv_canary violation_repeats line; 0 logs
    # every violation. Mode raise always logs and raises every violation.
    violation_repeat_interval: int = 100
    assert_write_inputs: bool = True  # write side: written token/position against expected
    verify_tokens: bool = True  # verify side: stored token against the expected token, when known
    # Mark every new slot's real K/V rows before the model runs and report rows it left marked (a lost
    # or misdirected K/V write). Needs real_kv_hash partial or all; writes into the engine's KV pool.
    check_lost_writes: bool = False
    # Self-test switch: no check records anything (the verify kernels, and the write kernels'
    # input assertions); records are still written. Exists so the harness can prove that its
    # fault scenarios fail when the canary is blind; never set it in production.
    self_test_disable_verify: bool = False

    def __post_init__(self) -> None:
        for name in (
            "ring_capacity",
            "verify_capacity",
            "write_capacity",
            "max_requests_per_forward",
            "sweep_step_nodes",
            "sweep_step_tokens",
        ):
            _require(getattr(self, name) >= 1, name, "must be >= 1")
        for name in (
            "sweep_interval",
            "stats_interval",
            "health_check_interval",
            "health_check_warmup",
            "swa_divergence_interval",
            "violation_repeat_interval",
        ):
            _require(getattr(self, name) >= 0, name, "must be >= 0 (0 turns it off)")
        _require(
            not (self.check_lost_writes and self.real_kv_hash is RealKvHashMode.NONE),
            "check_lost_writes",
            "needs real_kv_hash partial or all (the check reads the rows the real-KV hash reads); "
            "set KV_CANARY_REAL_KV_HASH, or turn the check off",
        )

    @property
    def enabled(self) -> bool:
        return self.mode is not CanaryMode.NONE

    def replace(self, **changes: Any) -> CanaryConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> CanaryConfig:
        """Build the config from ``KV_CANARY_<FIELD>`` variables; explicit overrides win."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            key = ENV_PREFIX + field.name.upper()
            if key in environ:
                values[field.name] = _parse_field(field, environ[key], key)
        values.update(overrides)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The inverse of ``from_env``: what a child process needs to rebuild this config."""
        env = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, bool):
                value = "1" if value else "0"
            env[ENV_PREFIX + field.name.upper()] = str(value)
        return env


_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _parse_field(field: dataclasses.Field[Any], raw: str, key: str) -> object:
    default = field.default
    text = raw.strip()
    if isinstance(default, enum.Enum):
        allowed = [member.value for member in type(default)]
        if text.lower() not in allowed:
            raise CanaryConfigError(f"{key}={raw!r}: expected one of {', '.join(allowed)}")
        return type(default)(text.lower())
    if isinstance(default, bool):
        if text.lower() not in _BOOL_WORDS:
            raise CanaryConfigError(f"{key}={raw!r}: expected a boolean (1/0, true/false)")
        return _BOOL_WORDS[text.lower()]
    try:
        return int(text)
    except ValueError:
        raise CanaryConfigError(f"{key}={raw!r}: expected an integer") from None


def _require(condition: bool, name: str, what: str) -> None:
    if not condition:
        raise CanaryConfigError(f"CanaryConfig.{name} {what} ({ENV_PREFIX}{name.upper()})")
