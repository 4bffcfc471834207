"""End to end through install_canary: clean forwards stay clean, each planted fault is caught."""

from __future__ import annotations

import pytest

from kv_canary import CanaryConfig, CanaryMode, KernelBackend, KvCanaryError, KvCanaryViolationError, RealKvHashMode
from kv_canary.launch_tags import KvHalf, Phase, PoolGroupKind
from kv_canary.records import RecordWord
from tests.unit.canary.devices import DEVICES
from tests.unit.canary.fake_engine import FakeEngine, TinyModel

# Triton runs on CPU in its interpreter, far slower than compiled: kernel parity is tested on CPU
# (test_kernel_parity), the detection paths with Triton on CUDA, plus one clean run on CPU.
BACKEND_DEVICES = [
    pytest.param(KernelBackend.TORCH, device.values[0], id=f"torch-{device.id}", marks=device.marks)
    for device in DEVICES
] + [
    pytest.param(KernelBackend.TRITON, device.values[0], id=f"triton-{device.id}", marks=device.marks)
    for device in DEVICES
    if device.id == "cuda"
]


def make_engine(backend: KernelBackend, device: str = "cpu", **overrides) -> FakeEngine:
    config = CanaryConfig(
        backend=backend,
        stats_interval=0,
        health_check_interval=0,
        verify_capacity=512,
        write_capacity=256,
        max_requests_per_forward=8,
        **overrides,
    )
    return FakeEngine(config, device=device)


def serve_shared_prefix_traffic(engine: FakeEngine, decode_steps: int = 4):
    """Two requests sharing a 6-token prefix: prefill, extend, a few batched decodes."""
    first = engine.add_request([11, 12, 13, 14, 15, 16, 17, 18])
    engine.forward([first])
    second = engine.add_request([11, 12, 13, 14, 15, 16, 40, 41, 42], share_prefix_with=first, shared_len=6)
    engine.forward([second])
    for step in range(decode_steps):
        engine.forward([first, second], new_tokens=[[100 + step], [200 + step]])
    return first, second


def reported(engine: FakeEngine):
    engine.canary.flush()
    return engine.canary.violations


@pytest.mark.parametrize(
    "backend,device", BACKEND_DEVICES + [pytest.param(KernelBackend.TRITON, "cpu", id="triton-interpreted-cpu")]
)
def test_clean_traffic_with_prefix_sharing_has_no_violations(backend, device):
    engine = make_engine(backend, device)
    serve_shared_prefix_traffic(engine, decode_steps=6)
    assert reported(engine) == []
    stats = engine.canary.stats_snapshot()
    assert stats["violations_total"] == 0
    assert all(runs == 2 + 6 for runs in stats["kernel_runs"].values())  # one verify per forward per tag
    assert stats["slots_verified"]["HEAD_K_FULL"] > 0


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_overwritten_head_record_is_caught_before_the_forward(backend, device):
    engine = make_engine(backend, device)
    first, second = serve_shared_prefix_traffic(engine)
    slot = engine.slot_of(second, 7)
    engine.canary.group(PoolGroupKind.FULL).records(Phase.HEAD, KvHalf.K)[slot, RecordWord.POSITION] += 3
    engine.forward([first, second], new_tokens=[[1], [2]])
    # The record itself fails on position; its successor's chain hash covered that position.
    assert {(v.launch_tag, v.position, v.fail_reasons) for v in reported(engine)} == {
        ("HEAD_K_FULL", 7, ("position",)),
        ("HEAD_K_FULL", 8, ("chain_hash",)),
    }
    assert [v.slot_idx for v in reported(engine) if v.position == 7] == [slot]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_remapped_req_to_token_entry_breaks_the_chain(backend, device):
    engine = make_engine(backend, device)
    first, second = serve_shared_prefix_traffic(engine)
    engine.req_pool.req_to_token[second.row, 7] = engine.slot_of(first, 7)
    engine.forward([second], new_tokens=[[3]])
    reasons = {reason for v in reported(engine) for reason in v.fail_reasons}
    tags = {v.launch_tag for v in reported(engine)}
    assert "chain_hash" in reasons and "token" in reasons
    assert {"HEAD_K_FULL", "HEAD_V_FULL", "TAIL_K_FULL", "TAIL_V_FULL"} <= tags


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_live_slot_reused_by_another_request_is_caught(backend, device):
    engine = make_engine(backend, device)
    first, _second = serve_shared_prefix_traffic(engine)
    victim = engine.slot_of(first, 8)  # first's own (unshared) slot
    engine.free_slots.insert(0, victim)  # a double free: the allocator hands it out again
    third = engine.add_request([5, 6, 7])
    engine.forward([third])
    engine.forward([first], new_tokens=[[9]])
    hits = [v for v in reported(engine) if v.slot_idx == victim]
    assert hits and all(v.launch_tag.startswith(("HEAD_", "TAIL_")) for v in hits)
    assert {"position", "chain_hash"} & {r for v in hits for r in v.fail_reasons}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_changed_real_kv_byte_is_caught_by_the_tail_hash(backend, device):
    engine = make_engine(backend, device, real_kv_hash=RealKvHashMode.PARTIAL)
    first, second = serve_shared_prefix_traffic(engine)
    slot = engine.slot_of(first, 2)  # shared prefix slot
    engine.pool.v_buffer[1][slot].view(-1)[1] += 0.5  # inside the first 16 bytes of the row
    engine.forward([second], new_tokens=[[4]])
    violations = reported(engine)
    assert {(v.launch_tag, v.slot_idx, v.fail_reasons) for v in violations} == {
        ("TAIL_V_FULL", slot, ("real_kv_hash",))
    }


def test_bytes_past_the_partial_prefix_need_hash_mode_all():
    for mode, expect_caught in [(RealKvHashMode.PARTIAL, False), (RealKvHashMode.ALL, True)]:
        engine = make_engine(KernelBackend.TORCH, real_kv_hash=mode)
        first, second = serve_shared_prefix_traffic(engine)
        engine.pool.k_buffer[0][engine.slot_of(first, 2)].view(-1)[-1] += 1.0
        engine.forward([second], new_tokens=[[4]])
        assert bool(reported(engine)) is expect_caught


def test_swapped_input_token_is_caught_on_the_write_side():
    engine = make_engine(KernelBackend.TORCH)
    first, _ = serve_shared_prefix_traffic(engine)
    engine.req_pool.req_token_ids[first.row, len(first.tokens)] = 77  # what the sampler recorded
    first.tokens.append(78)  # what the engine feeds
    engine.forward([first])
    reasons = {(v.launch_tag, v.fail_reasons, v.stored_token, v.expected_token) for v in reported(engine)}
    assert ("HEAD_K_FULL", ("write_token",), 78, 77) in reasons


def test_raise_mode_raises_with_the_violation_lines():
    engine = make_engine(KernelBackend.TORCH, mode=CanaryMode.RAISE)
    first, _second = serve_shared_prefix_traffic(engine)
    engine.canary.group(PoolGroupKind.FULL).records(Phase.TAIL, KvHalf.K)[engine.slot_of(first, 0)] = 0
    engine.forward([first], new_tokens=[[1]])  # detected here, reported one step later
    with pytest.raises(KvCanaryViolationError) as raised:
        engine.forward([first], new_tokens=[[2]])
    assert raised.value.lines and all(
        line.startswith("kv_canary violation: launch_tag=TAIL_K_FULL") for line in raised.value.lines
    )


def test_the_raised_error_carries_the_records_its_lines_format():
    engine = make_engine(KernelBackend.TORCH, mode=CanaryMode.RAISE)
    first, _ = serve_shared_prefix_traffic(engine)
    engine.canary.group(PoolGroupKind.FULL).records(Phase.TAIL, KvHalf.K)[engine.slot_of(first, 0)] = 0
    engine.forward([first], new_tokens=[[1]])
    with pytest.raises(KvCanaryError) as raised:
        engine.forward([first], new_tokens=[[2]])
    error = raised.value
    assert isinstance(error, KvCanaryViolationError)
    assert error.records and {record.launch_tag for record in error.records} == {"TAIL_K_FULL"}
    assert error.lines == [record.format() for record in error.records]
    assert list(error.records) == engine.canary.violations[-len(error.records) :]


def test_ring_overflow_keeps_the_count_and_says_rows_were_dropped(caplog):
    engine = make_engine(KernelBackend.TORCH, ring_capacity=4)
    first, second = serve_shared_prefix_traffic(engine)
    engine.canary.group(PoolGroupKind.FULL).records(Phase.HEAD, KvHalf.K)[1:40] = 0  # every cached slot
    engine.forward([first, second], new_tokens=[[1], [2]])
    violations = reported(engine)
    total = engine.canary.stats_snapshot()["violations_total"]
    assert total > 4 and len(violations) == 4
    assert engine.canary.reporter.dropped_rows == total - 4
    assert any("ring_overflow" in message for message in caplog.messages)


def test_self_test_switch_blinds_verify_but_not_the_kernels():
    engine = make_engine(KernelBackend.TORCH, self_test_disable_verify=True)
    first, _second = serve_shared_prefix_traffic(engine)
    engine.canary.group(PoolGroupKind.FULL).records(Phase.HEAD, KvHalf.K)[engine.slot_of(first, 1)] = 0
    engine.forward([first], new_tokens=[[1]])
    assert reported(engine) == []
    assert engine.canary.stats_snapshot()["kernel_runs"]["HEAD_K_FULL"] > 0


def test_self_test_switch_blinds_the_write_side_checks_too():
    engine = make_engine(KernelBackend.TORCH, self_test_disable_verify=True)
    first, _ = serve_shared_prefix_traffic(engine)
    engine.req_pool.req_token_ids[first.row, len(first.tokens)] = 77  # what the sampler recorded
    first.tokens.append(78)  # what the engine feeds: write_token when the canary can see
    engine.forward([first])
    assert reported(engine) == []


class ModelCallingItsOwnForward(TinyModel):
    def forward(self, input_ids, positions, forward_batch):
        super().forward(input_ids, positions, forward_batch)
        if self.calls == 1:
            self.forward(input_ids, positions, forward_batch)


def test_nested_forward_calls_run_the_canary_once():
    engine = FakeEngine(
        CanaryConfig(backend=KernelBackend.TORCH, stats_interval=0, health_check_interval=0),
        model_class=ModelCallingItsOwnForward,
    )
    engine.forward([engine.add_request([1, 2, 3])])
    assert engine.model.calls == 2
    assert engine.canary.forward_count == 1
    assert reported(engine) == []


def test_mode_none_installs_nothing():
    engine = FakeEngine(CanaryConfig(mode=CanaryMode.NONE))
    assert engine.canary is None
    assert "forward" not in vars(engine.model)


def test_buffer_infos_report_the_canary_records_too():
    engine = make_engine(KernelBackend.TORCH)
    pointers, lengths, item_lengths = engine.pool.get_contiguous_buf_infos()
    group = engine.canary.group(PoolGroupKind.FULL)
    k_records, v_records = ([group.records(phase, half) for phase in (Phase.HEAD, Phase.TAIL)] for half in KvHalf)
    # Two layers of K, the K records, two layers of V, the V records: each half keeps its records.
    assert len(pointers) == 4 + 4
    assert pointers[2:4] == [r.data_ptr() for r in k_records] and pointers[6:] == [r.data_ptr() for r in v_records]
    assert lengths[2:4] + lengths[6:] == [r.nbytes for r in k_records + v_records]
    assert item_lengths[2:4] + item_lengths[6:] == [32] * 4


def test_a_fresh_zeroed_slot_never_passes_for_position_zero():
    engine = make_engine(KernelBackend.TORCH)
    first = engine.add_request([5, 6])
    engine.forward([first])
    engine.canary.group(PoolGroupKind.FULL).records(Phase.HEAD, KvHalf.V)[engine.slot_of(first, 0)] = 0
    engine.forward([first], new_tokens=[[7]])
    # The zeroed record fails, and so does its successor, whose prev_hash chained from it.
    assert [(v.launch_tag, v.position, v.fail_reasons) for v in reported(engine)] == [
        ("HEAD_V_FULL", 0, ("chain_hash", "token")),
        ("HEAD_V_FULL", 1, ("chain_hash",)),
    ]
