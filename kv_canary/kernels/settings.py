"""What the kernels are asked to check and how large the torch reference's plans start, from the config."""

from __future__ import annotations

import dataclasses

from kv_canary.config import CanaryConfig, RealKvHashMode


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class KernelSettings:
    check_tokens: bool  # verify: the stored token against the recorded one, where known
    record_violations: bool  # False: the self-test switch blinds every check (records are still written)
    assert_inputs: bool  # write: the written token and position against the expected ones
    poison_new_slots: bool  # HEAD write: mark the new slots' real K/V rows (lost-write check)
    check_lost_writes: bool  # TAIL write: report rows still marked
    # Torch reference: initial plan capacities (grown for eager forwards, fixed under capture).
    # Triton: ``verify_capacity`` sizes a captured launch's parallelism; nothing is cut at it.
    verify_capacity: int
    write_capacity: int
    request_capacity: int

    @classmethod
    def from_config(cls, config: CanaryConfig) -> KernelSettings:
        checks_on = not config.self_test_disable_verify
        lost_writes = config.check_lost_writes and config.real_kv_hash is not RealKvHashMode.NONE
        return cls(
            check_tokens=config.verify_tokens,
            record_violations=checks_on,
            assert_inputs=config.assert_write_inputs and checks_on,
            poison_new_slots=lost_writes,
            check_lost_writes=lost_writes and checks_on,
            verify_capacity=config.verify_capacity,
            write_capacity=config.write_capacity,
            request_capacity=config.max_requests_per_forward,
        )
