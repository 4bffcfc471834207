"""Random traffic through the engine and its canary, per mode: zero false positives, every fault caught.

See ``engine_machine.py`` for what each machine does and checks. Case counts come from the
Hypothesis profile (``conftest.py``): a few in the default run, thousands under ``soak``.
"""

from __future__ import annotations

from typing import Any

from tests.reliability.engine_machine import CleanEngineMachine, FaultEngineMachine, InjectorEngineMachine

MACHINES = {"Clean": CleanEngineMachine, "Fault": FaultEngineMachine, "Injector": InjectorEngineMachine}
MODES = {"Mha": "mha", "Swa": "swa", "Dsv4": "dsv4"}

# pytest collects module-level ``Test*`` names; ``-k TestFaultSwa`` selects one machine in one mode.
for _kind, _machine in MACHINES.items():
    for _suffix, _mode in MODES.items():
        _bound: Any = type(f"{_kind}{_suffix}", (_machine,), {"mode": _mode})
        globals()[f"Test{_kind}{_suffix}"] = _bound.TestCase
