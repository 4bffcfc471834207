"""What the engine reports about each application of a scheduled fault (``GET /kv_canary/injections``)."""

from __future__ import annotations

import typing
from typing import Literal

# scheduled: not yet applied (step null); applied: right before forward ``step``; no_target: given up.
InjectionStatus = Literal["scheduled", "applied", "no_target"]
INJECTION_STATUSES: tuple[InjectionStatus, ...] = typing.get_args(InjectionStatus)
