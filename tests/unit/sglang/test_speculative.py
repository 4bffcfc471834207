"""Speculative decoding as SGLang 0.5.23 lays it out, on its real pools, allocators and ForwardBatch:
TARGET_VERIFY forwards (EAGLE chains) are planned from ``seq_lens`` and ``spec_info.draft_token_num``,
rejected drafts leave no violation, drafts written one position off are caught, and what the canary
cannot plan (trees, a draft worker's forwards and runner) is refused by name."""

from __future__ import annotations

import pytest
import torch

from kv_canary import CanaryAlreadyInstalledError, CanaryConfig, KernelBackend, UnsupportedForwardModeError
from kv_canary.integrations.sglang import KvCanaryInstallError, install_into_model_runner
from tests.unit.sglang import sglang_imports as sgl
from tests.unit.sglang.sglang_engine import Request, SglangEngine

pytestmark = pytest.mark.sglang

CONFIG = CanaryConfig(
    backend=KernelBackend.TORCH,
    stats_interval=0,
    health_check_interval=0,
    verify_capacity=512,
    write_capacity=256,
    max_requests_per_forward=8,
    sweep_interval=1,
)
DRAFT_TOKENS = 4  # the last sampled token and three drafts


def verify_input(draft_tokens: int, *, topk: int = 1):
    from sglang.srt.speculative.eagle_info import EagleVerifyInput

    return EagleVerifyInput.create_idle_input(
        topk=topk, spec_steps=draft_tokens - 1, num_verify_tokens=draft_tokens, device="cpu"
    )


def verify(engine: SglangEngine, request: Request, window: list[int], *, accepted: int, shift: int = 0, topk: int = 1):
    """One target-verify forward of ``window`` (the last sampled token, then the drafts), then keep its
    first ``accepted`` tokens and free the rejected drafts' slots, as EAGLE does at page size 1."""
    start = request.kv_len
    slots = engine.allocator.alloc(len(window))
    engine.req_to_token_pool.req_to_token[request.row, start : start + len(window)] = slots.to(torch.int32)
    spec_info = verify_input(len(window), topk=topk)
    positions = torch.arange(start, start + len(window)) + shift
    batch = sgl.ForwardBatch(
        forward_mode=sgl.ForwardMode.TARGET_VERIFY,
        batch_size=1,
        input_ids=torch.tensor(window),
        req_pool_indices=torch.tensor([request.row]),
        seq_lens=torch.tensor([start]),  # the committed length: the verify window comes after it
        seq_lens_cpu=torch.tensor([start]),
        seq_lens_sum=start,
        out_cache_loc=slots.to(torch.int64),
        positions=positions,
        spec_info=spec_info,
    )
    spec_info.draft_token, spec_info.positions = batch.input_ids, positions
    engine.model_runner.model.forward(batch.input_ids, batch.positions, batch)
    request.tokens += window[:accepted]
    request.kv_len = len(request.tokens)
    engine.allocator.free(slots[accepted:])
    if engine.window is not None:
        engine._release_out_of_window([request])


def prefilled(engine: SglangEngine, prompt: list[int]) -> Request:
    request = engine.add_request(prompt)
    engine.forward([request])
    return request


@pytest.mark.parametrize("mode, tree", [("mha", "radix"), ("swa", "unified-python")])
def test_verify_rounds_with_accepted_and_rejected_drafts_stay_clean(mode, tree):
    engine = SglangEngine(CONFIG, mode=mode, tree=tree)
    request = prefilled(engine, list(range(10, 22)))
    token = 100
    for accepted in (1, 4, 2, 3, 1, 4):
        window = list(range(token, token + DRAFT_TOKENS))
        verify(engine, request, window, accepted=accepted)
        token += 10
    engine.finish(request)
    reader = engine.add_request(request.tokens + [7])  # reads the verified tokens back from the tree
    engine.forward([reader])
    engine.forward([reader], [[8]])
    assert reader.tree_len == len(request.tokens)
    assert engine.reported() == []


def test_a_window_fed_one_position_off_is_caught_at_its_verify_forward():
    engine = SglangEngine(CONFIG, mode="mha", tree=None)
    request = prefilled(engine, list(range(10, 22)))
    verify(engine, request, [100, 101, 102, 103], accepted=2)
    assert engine.reported() == []
    verify(engine, request, [110, 111, 112, 113], accepted=3, shift=1)
    engine.forward([request], [[120]])
    violations = engine.reported()
    assert min(v.step for v in violations) == 3  # the shifted verify forward itself
    assert {v.launch_tag for v in violations if v.step == 3 and "write_position" in v.fail_reasons} >= {"HEAD_K_FULL"}
    assert any("position" in v.fail_reasons and v.step == 4 for v in violations)  # the next forward reads them


def test_an_eagle_tree_verify_is_refused_by_name():
    engine = SglangEngine(CONFIG, mode="mha", tree=None)
    request = prefilled(engine, list(range(10, 22)))
    with pytest.raises(UnsupportedForwardModeError, match="topk 2: an EAGLE tree"):
        verify(engine, request, [100, 101, 102, 103], accepted=1, topk=2)


def test_a_draft_workers_forward_and_runner_are_refused():
    engine = SglangEngine(CONFIG, mode="mha", tree=None)
    request = prefilled(engine, list(range(10, 22)))
    batch = SglangEngine.forward_batch(
        decode=False,
        rows=[request.row],
        prefix=[12],
        extend=[4],
        seq_lens=[16],
        out_cache_loc=torch.tensor([40, 41, 42, 43]),
        input_ids=[1, 2, 3, 4],
        positions=[12, 13, 14, 15],
    )
    batch.forward_mode = sgl.ForwardMode.DRAFT_EXTEND_V2
    with pytest.raises(UnsupportedForwardModeError, match="DRAFT_EXTEND_V2 runs on a speculative draft worker"):
        engine.model_runner.model.forward(batch.input_ids, batch.positions, batch)

    draft_runner = SglangEngine(CanaryConfig(mode="none"), mode="mha", tree=None).model_runner
    draft_runner.is_draft_worker = True
    with pytest.raises(KvCanaryInstallError, match="speculative draft worker's model runner"):
        install_into_model_runner(draft_runner, CONFIG)


def test_a_second_install_on_the_same_runner_is_refused():
    engine = SglangEngine(CONFIG, mode="mha", tree=None)
    with pytest.raises(CanaryAlreadyInstalledError, match="already installed on this model"):
        install_into_model_runner(engine.model_runner, CONFIG)
