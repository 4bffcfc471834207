"""Small KV pools named like SGLang's (the canary picks its adapter by class name), for the parity tests.

``TwinInstalls`` builds the same pool and canary twice, once per kernel backend, so that the
same forwards and faults can be run through both and every byte compared.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from kv_canary.adapters import attach_canary_buffers
from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.config import CanaryConfig, KernelBackend
from kv_canary.device_state import CanaryDeviceState
from kv_canary.kernels.select import CanaryKernels, select_kernels
from kv_canary.kernels.settings import KernelSettings
from kv_canary.launch_tags import KvHalf, Phase

LAYERS = 2
ROW_ELEMENTS = 12  # float16: 24-byte rows, three words, so `partial` hashes two of them


class MHATokenToKVPool:
    def __init__(self, slots: int, device: str, *, layers: int = LAYERS, v: bool = True) -> None:
        self.page_size = 1
        self.k_buffer = [torch.zeros(slots, ROW_ELEMENTS, dtype=torch.float16, device=device) for _ in range(layers)]
        self.v_buffer = (
            [torch.zeros(slots, ROW_ELEMENTS, dtype=torch.float16, device=device) for _ in range(layers)] if v else None
        )


class SWAKVPool:
    def __init__(self, slots: int, swa_slots: int, device: str) -> None:
        self.page_size = 1
        self.full_kv_pool = MHATokenToKVPool(slots, device)
        self.swa_kv_pool = MHATokenToKVPool(swa_slots, device, layers=LAYERS + 1)
        self.full_to_swa_index_mapping = torch.zeros(slots, dtype=torch.int64, device=device)


class DeepSeekV4TokenToKVPool:
    def __init__(self, slots: int, swa_slots: int, device: str) -> None:
        self.page_size = 1
        self.swa_kv_pool = MHATokenToKVPool(swa_slots, device, v=False)
        self.full_to_swa_index_mapping = torch.zeros(slots, dtype=torch.int64, device=device)


def make_pool(mode: str, slots: int, swa_slots: int, device: str) -> object:
    if mode == "mha":
        return MHATokenToKVPool(slots, device)
    if mode == "swa":
        return SWAKVPool(slots, swa_slots, device)
    return DeepSeekV4TokenToKVPool(slots, swa_slots, device)


def layer_buffers(pool: object) -> list[torch.Tensor]:
    """Every K/V buffer of the pool, in a fixed order."""
    return [buffer for buffer, _ in layer_buffers_by_pool(pool)]


def layer_buffers_by_pool(pool: object) -> list[tuple[torch.Tensor, bool]]:
    """Every K/V buffer of the pool with whether it is indexed by SWA slots, in a fixed order."""
    pools = [(getattr(pool, name, None), name == "swa_kv_pool") for name in ("full_kv_pool", "swa_kv_pool")]
    pools = [(sub, swa) for sub, swa in pools if sub is not None] or [(pool, False)]
    return [(buffer, swa) for sub, swa in pools for buffer in (sub.k_buffer + (sub.v_buffer or []))]


@dataclasses.dataclass
class Install:
    pool: object
    groups: tuple[CanaryBufferGroup, ...]
    state: CanaryDeviceState
    kernels: CanaryKernels

    def records(self) -> list[torch.Tensor]:
        return [
            group.records(phase, half)
            for group in self.groups
            for phase in (Phase.HEAD, Phase.TAIL)
            for half in (KvHalf.K, KvHalf.V)
            if half in group.halves
        ]

    @property
    def mapping(self) -> torch.Tensor | None:
        return getattr(self.pool, "full_to_swa_index_mapping", None)

    def full_to_swa(self) -> torch.Tensor:
        """The SWA map of a pool that has one."""
        mapping = self.mapping
        assert mapping is not None, "this pool has no SWA sub-pool"
        return mapping


def make_install(
    backend: KernelBackend, mode: str, config: CanaryConfig, *, slots: int, swa_slots: int, window: int, device: str
) -> Install:
    pool = make_pool(mode, slots, swa_slots, device)
    groups = attach_canary_buffers(pool, config=config, swa_window=window)
    state = CanaryDeviceState.allocate(ring_capacity=config.ring_capacity, device=device)
    kernels = select_kernels(
        backend,
        groups=groups,
        state=state,
        settings=KernelSettings.from_config(config),
        device=torch.device(device),
        logger=logging.getLogger("kv_canary.test"),
    )
    return Install(pool=pool, groups=groups, state=state, kernels=kernels)


def sorted_ring_rows(state: CanaryDeviceState) -> list[tuple[int, ...]]:
    count = min(int(state.ring.write_index), state.ring.capacity)
    return sorted(tuple(row) for row in state.ring.rows[:count].tolist())


def differing_rows(expected: torch.Tensor, got: torch.Tensor, *, shown: int = 4) -> str:
    """Which slots' rows differ (the rows given start at slot 1), and the first words of a few of them
    (reference, then candidate)."""
    differ = (expected != got).reshape(expected.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
    rows = [row + 1 for row in differ]
    words = [
        f"slot {row + 1}: {expected[row].flatten()[:8].tolist()} vs {got[row].flatten()[:8].tolist()}"
        for row in differ[:shown]
    ]
    return f"{len(rows)} rows {rows[:16]}; " + "; ".join(words)


def assert_same_state(reference: Install, candidate: Install) -> None:
    """Records, K/V bytes, counters and violation rows agree byte for byte."""
    for index, (expected, got) in enumerate(zip(reference.records(), candidate.records(), strict=True)):
        assert torch.equal(expected, got), f"record buffer {index} differs"
    for index, (whole_expected, whole_got) in enumerate(
        zip(layer_buffers(reference.pool), layer_buffers(candidate.pool), strict=True)
    ):
        # Row 0 is the padding slot, scratch for padded entries. On the H200 the two installs' row 0
        # came out different, torn at 8-byte words: a scatter hitting it more than once keeps any of
        # the values on CUDA. The canary never trusts its bytes, so it is not compared.
        expected, got = whole_expected[1:], whole_got[1:]
        assert torch.equal(expected.view(torch.int16), got.view(torch.int16)), (
            f"K/V buffer {index} differs: {differing_rows(expected.view(torch.int16), got.view(torch.int16))}"
        )
    for name in ("kernel_run_counters", "slot_run_counters", "step", "plan_overflow", "verify_entries"):
        assert torch.equal(getattr(reference.state, name), getattr(candidate.state, name)), name
    assert int(reference.state.ring.write_index) == int(candidate.state.ring.write_index)
    assert sorted_ring_rows(reference.state) == sorted_ring_rows(candidate.state)
