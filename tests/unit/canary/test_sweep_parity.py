"""The Triton sweep launch against the torch reference, byte for byte, over random radix trees.

Two identical installs hold records written for a random radix tree (nodes of int32 or int64
slots, list or ``RadixKey`` keys, SWA tombstones, nodes whose K/V left the device); the tree is
then damaged (record words, K/V bytes, SWA mapping entries) and swept in slices of a few nodes
by both backends, and in one flat walk as a self-walking cache gives it. Records are never
written by a sweep, so counters and violation rows (sorted multisets) must agree after each slice.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from kv_canary.config import CanaryConfig, KernelBackend, RealKvHashMode
from kv_canary.kernels import write_reference
from kv_canary.launch_tags import Phase
from kv_canary.plans import PREV_UNKNOWN, SweepSlice, WritePlan
from kv_canary.sweep.radix_cursor import RadixCursor
from kv_canary.sweep.radix_walker import walk_radix_cache
from tests.unit.canary.canary_pools import Install, assert_same_state, layer_buffers, make_install
from tests.unit.canary.devices import DEVICES
from tests.unit.canary.fake_radix import FakeRadixCache, FakeRadixNode

SLOTS = 300
SWA_SLOTS = 300
WINDOW = 8


def random_tree(rng: random.Random, device: str) -> FakeRadixCache:
    cache = FakeRadixCache()
    free = rng.sample(range(1, SLOTS), SLOTS - 1)
    nodes: list[FakeRadixNode | None] = [None]
    for _ in range(rng.randint(5, 9)):
        parent = rng.choice(nodes)
        length = rng.choice([1, 2, 5, 13])
        tokens = [rng.randrange(50_000) for _ in range(length)]
        slots = torch.tensor([free.pop() for _ in range(length)], dtype=rng.choice([torch.int32, torch.int64]))
        node = cache.add(
            parent,
            tokens,
            slots.to(device),
            swa_tombstone=rng.random() < 0.2,
            key_object=rng.random() < 0.5,
            lock_ref=rng.randint(0, 1),
        )
        if rng.random() < 0.1:
            node.value = None  # its K/V left the device: skipped with everything below it
        nodes.append(node)
    return cache


def write_records(installs: list[Install], cache: FakeRadixCache) -> None:
    """Records as the engine's forwards left them, the same in both installs, with SWA slots for some
    tokens (the others slid out of their window): node after node, parents first."""
    levels: list[list[Listed]] = []
    root_value = cache.root_node.value
    assert root_value is not None
    pending = [(child, root_value, 0, 0) for child in cache.root_node.children.values()]
    while pending:
        node, parent_value, position, level = pending.pop()
        if node.value is None:
            continue
        while len(levels) <= level:
            levels.append([])
        levels[level].append(Listed(key=node.key, value=node.value, parent_value=parent_value, position=position))
        pending += [(child, node.value, position + len(node.value), level + 1) for child in node.children.values()]
    for install in installs:
        mapping = install.mapping
        if mapping is not None:
            slots = torch.cat([node.value.long().cpu() for nodes in levels for node in nodes])
            mapping[slots[slots % 3 != 0]] = slots[slots % 3 != 0].to(mapping.device)
        for nodes in levels:
            plan = write_plan(nodes, device=install.records()[0].device)
            for group in install.groups:
                group_plan = plan if group.full_to_swa_index_mapping is None else plan_in_swa(plan, group)
                for half, buffers in group.halves.items():
                    for phase, real_kv in ((Phase.HEAD, None), (Phase.TAIL, buffers.real_kv)):
                        write_reference.write_canaries(
                            records=group.records(phase, half),
                            plan=group_plan,
                            launch_tag=group.launch_tag(phase, half),
                            state=install.state,
                            real_kv=real_kv,
                            assert_inputs=False,
                        )


@dataclasses.dataclass(frozen=True)
class Listed:
    key: object
    value: torch.Tensor
    parent_value: torch.Tensor  # empty for the root's children: they start sequences
    position: int


def write_plan(level: list[Listed], *, device: torch.device) -> WritePlan:
    """One run per node of the level, chained from its parent's last slot (full-pool slots), on the
    records' device (built on the CPU)."""
    entries = sum(len(node.value) for node in level)
    plan = WritePlan.allocate(capacity=entries, request_capacity=len(level), device="cpu")
    start = 0
    for index, node in enumerate(level):
        length, position = len(node.value), node.position
        plan.entry_starts[index], plan.entry_counts[index] = start, length
        plan.pred_slots[index] = 0 if node.parent_value.numel() == 0 else int(node.parent_value[-1])
        plan.slot_indices[start : start + length] = node.value.cpu()
        tokens = torch.tensor(getattr(node.key, "token_ids", node.key))
        plan.tokens[start : start + length] = plan.expected_tokens[start : start + length] = tokens
        plan.positions[start : start + length] = torch.arange(position, position + length)
        plan.expected_positions[start : start + length] = plan.positions[start : start + length]
        start += length
    plan.num_requests.fill_(len(level))
    return on_device(plan, device)


def plan_in_swa(plan: WritePlan, group) -> WritePlan:
    mapping = group.full_to_swa_index_mapping
    pred = mapping[plan.pred_slots.long().clamp(min=0)]
    pred = torch.where(pred == 0, PREV_UNKNOWN, pred)
    pred = torch.where(plan.pred_slots == 0, 0, pred)
    return dataclasses.replace(
        plan, slot_indices=mapping[plan.slot_indices.long()].to(torch.int32), pred_slots=pred.to(torch.int32)
    )


def on_device(plan: WritePlan, device: torch.device) -> WritePlan:
    return WritePlan(**{name: getattr(plan, name).to(device) for name in plan.__slots__})


def damage(installs: list[Install], rng: random.Random) -> None:
    for _ in range(rng.randint(1, 5)):
        kind = rng.random()
        slot = rng.randrange(1, SLOTS)
        if kind < 0.5:
            buffer_index, word, bit = rng.randrange(len(installs[0].records())), rng.randrange(4), rng.randrange(63)
            for install in installs:
                install.records()[buffer_index][slot, word] ^= 1 << bit
        elif kind < 0.8:
            buffer_index = rng.randrange(len(layer_buffers(installs[0].pool)))
            for install in installs:
                buffer = layer_buffers(install.pool)[buffer_index]
                buffer[slot % buffer.shape[0], 1] += 1
        else:
            for install in installs:
                if install.mapping is not None:
                    install.mapping[slot] = 0


def sweep_in_slices(installs: list[Install], cache: FakeRadixCache, device: str, max_nodes: int) -> None:
    cursors = [RadixCursor(device=torch.device(device)) for _ in installs]
    for _ in range(30):
        slices = [cursor.next_slice(cache, max_nodes=max_nodes, max_tokens=40) for cursor in cursors]
        for install, listed in zip(installs, slices, strict=True):
            install.kernels.sweep.verify(SweepSlice(segments=listed.segments), verify=install.kernels.verify)
        assert_same_state(installs[0], installs[1])
        if slices[0].round_completed:
            return
    raise AssertionError("a round of the sweep did not end")


MODES = ["mha", "swa", "dsv4"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
def test_swept_slices_match_the_reference_byte_for_byte(mode, device):
    run_case(mode, seed=MODES.index(mode), device=device)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(3, 12))
@pytest.mark.parametrize("mode", MODES)
def test_many_swept_trees_match_the_reference_byte_for_byte(mode, seed, device):
    run_case(mode, seed=seed, device=device)


def run_case(mode: str, *, seed: int, device: str) -> None:
    rng = random.Random(seed * 7 + len(mode))
    real_kv = RealKvHashMode.PARTIAL if seed % 3 != 1 else RealKvHashMode.NONE
    installs = [
        make_install(
            backend,
            mode,
            CanaryConfig(backend=backend, real_kv_hash=real_kv, ring_capacity=4096, verify_tokens=seed % 3 != 2),
            slots=SLOTS,
            swa_slots=SWA_SLOTS,
            window=WINDOW,
            device=device,
        )
        for backend in (KernelBackend.TORCH, KernelBackend.TRITON)
    ]
    cache = random_tree(rng, device)
    write_records(installs, cache)
    sweep_in_slices(installs, cache, device, max_nodes=100)
    assert int(installs[0].state.ring.write_index) == 0, "a clean tree sweeps clean"
    damage(installs, rng)
    sweep_in_slices(installs, cache, device, max_nodes=rng.choice([1, 3]))

    for install in installs:  # the same tree as a self-walking cache would give it, all at once
        walk = walk_radix_cache(cache, device=device)
        swa_walk = walk_radix_cache(cache, device=device, swa_resident_only=True)
        kinds = {group.kind.value for group in install.groups}
        install.kernels.sweep.verify(
            SweepSlice(walk=walk if "FULL" in kinds else None, swa_walk=swa_walk if "SWA" in kinds else None),
            verify=install.kernels.verify,
        )
    assert_same_state(installs[0], installs[1])
