"""Random traffic through the engine and its canary, per mode: zero false positives, every fault caught.

See ``engine_machine.py`` for what each machine does and checks. Case counts come from the
Hypothesis profile (``conftest.py``): a few in the default run, thousands under ``soak``.
"""

from __future__ import annotations

from tests.reliability.engine_machine import CleanEngineMachine, FaultEngineMachine, InjectorEngineMachine


class CleanMha(CleanEngineMachine):
    mode = "mha"


class CleanSwa(CleanEngineMachine):
    mode = "swa"


class CleanDsv4(CleanEngineMachine):
    mode = "dsv4"


class FaultMha(FaultEngineMachine):
    mode = "mha"


class FaultSwa(FaultEngineMachine):
    mode = "swa"


class FaultDsv4(FaultEngineMachine):
    mode = "dsv4"


TestCleanMha = CleanMha.TestCase
TestCleanSwa = CleanSwa.TestCase
TestCleanDsv4 = CleanDsv4.TestCase
TestFaultMha = FaultMha.TestCase
TestFaultSwa = FaultSwa.TestCase
TestFaultDsv4 = FaultDsv4.TestCase


class InjectorMha(InjectorEngineMachine):
    mode = "mha"


class InjectorSwa(InjectorEngineMachine):
    mode = "swa"


class InjectorDsv4(InjectorEngineMachine):
    mode = "dsv4"


TestInjectorMha = InjectorMha.TestCase
TestInjectorSwa = InjectorSwa.TestCase
TestInjectorDsv4 = InjectorDsv4.TestCase
