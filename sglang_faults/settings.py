"""The injector's two settings, read from the environment once, in the scheduler process."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

PORT_VARIABLE = "KV_CANARY_FAULT_INJECTOR_PORT"
TOKEN_VARIABLE = "KV_CANARY_FAULT_INJECTOR_TOKEN"
MIN_TOKEN_LENGTH = 32
LOOPBACK = "127.0.0.1"


class InjectorSettingsError(ValueError):
    """The variables are set but cannot be used; the message names the variable and the fix."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class InjectorSettings:
    port: int
    token: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> InjectorSettings | None:
        """None (no injector) unless both variables are set; both or neither."""
        environ = os.environ if environ is None else environ
        port, token = environ.get(PORT_VARIABLE), environ.get(TOKEN_VARIABLE)
        if port is None and token is None:
            return None
        if port is None or token is None:
            missing = PORT_VARIABLE if port is None else TOKEN_VARIABLE
            raise InjectorSettingsError(f"{missing} is not set; the fault injector needs both or neither")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise InjectorSettingsError(f"{PORT_VARIABLE}={port!r}: expected a TCP port, 1-65535")
        if len(token) < MIN_TOKEN_LENGTH:
            raise InjectorSettingsError(
                f"{TOKEN_VARIABLE} is {len(token)} characters; use at least {MIN_TOKEN_LENGTH} random ones "
                "(the harness passes secrets.token_hex(32))"
            )
        return cls(port=int(port), token=token)
