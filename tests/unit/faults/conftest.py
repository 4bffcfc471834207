"""An in-process engine with the canary and the fault injector, and a staggered shared-prefix workload."""

from __future__ import annotations

import dataclasses
import random
import typing

import pytest
import torch

from kv_canary import CanaryConfig, KernelBackend, RealKvHashMode, ViolationRecord
from kv_canary_contract import Fault
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.engine import Engine
from mock_models.faults import FaultInjector
from mock_models.faults.fault_request import resolve
from mock_models.faults.injection_log import InjectionEntry

torch.set_num_threads(1)

WINDOW = 16
SHARED = [random.Random(5).randrange(1, 1000) for _ in range(24)]


@dataclasses.dataclass(kw_only=True, slots=True)
class FaultRun:
    engine: Engine
    injector: FaultInjector

    def inject(self, **body: object) -> int:
        spec = resolve(Fault.model_validate(body), self.engine.config, canary_installed=self.engine.canary is not None)
        return self.injector.schedule(spec)

    def submit(self, count: int, *, prompt_len: int = 32, max_new_tokens: int = 24, seed: int = 0) -> None:
        rng = random.Random(seed)
        for _ in range(count):
            suffix = [rng.randrange(1, 1000) for _ in range(prompt_len - len(SHARED))]
            self.engine.submit(SHARED + suffix, max_new_tokens)

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.engine.step()

    def until_idle(self) -> None:
        self.engine.run_until_idle(max_steps=2000)

    @property
    def entries(self) -> list[InjectionEntry]:
        return self.injector.log.entries

    def violations(self) -> list[ViolationRecord]:
        self.engine.canary.flush()
        return self.engine.canary.violations

    def violations_from(self, step: int) -> list[ViolationRecord]:
        found = self.violations()
        assert not [v for v in found if v.step < step], "a violation before the injection"
        return found


@pytest.fixture
def fault_run():
    def make(
        mode: str = "mha",
        *,
        sweep_interval: int = 4,
        real_kv_hash: RealKvHashMode = RealKvHashMode.PARTIAL,
        check_lost_writes: bool = False,
        **engine_settings: typing.Any,
    ) -> FaultRun:
        config = EngineConfig(model_mode=ModelMode(mode), swa_window=WINDOW, max_total_tokens=1024, **engine_settings)
        canary = CanaryConfig(
            backend=KernelBackend.TORCH,
            sweep_interval=sweep_interval,
            stats_interval=0,
            real_kv_hash=real_kv_hash,
            health_check_interval=0,
            verify_capacity=4096,
            write_capacity=1024,
            max_requests_per_forward=32,
            check_lost_writes=check_lost_writes,
        )
        engine = Engine(config, canary_config=canary)
        return FaultRun(engine=engine, injector=FaultInjector.install(engine))

    return make
