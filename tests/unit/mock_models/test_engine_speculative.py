"""EAGLE-style speculative decoding in the mock engine: verify windows written into the KV cache,
accepted drafts committed, rejected ones rolled back; the canary guards the target's pools."""

from __future__ import annotations

import pytest

from mock_models.engine.forward_batch import ForwardBatch, ForwardMode
from mock_models.engine.speculative import SpeculativeEngine
from tests.unit.mock_models.conftest import spy_on_forwards
from tests.unit.mock_models.feature_engines import (
    MODES,
    feature_engine,
    prompts_on_shared_prefixes,
    run_checked,
    violations,
)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("page_size", [1, 4])
def test_drafts_accepted_and_rolled_back_under_eviction_stay_clean_and_exact(mode, page_size):
    engine = feature_engine(mode, page_size=page_size, speculative_num_steps=3)
    assert isinstance(engine, SpeculativeEngine)
    accepted: list[int] = []
    process = engine.scheduler.process_forward

    def counting(batch, **kwargs):
        accepted.extend(window.accepted for window in getattr(batch, "windows", ()))
        return process(batch, **kwargs)

    engine.scheduler.process_forward = counting
    prompts = prompts_on_shared_prefixes(seed=page_size, count=10)
    run_checked(engine, prompts, [12 + i % 7 for i in range(10)])
    assert violations(engine) == []
    assert sum(len(prompt) + 12 for prompt in prompts) > engine.config.max_total_tokens  # the radix cache evicts
    assert 1 in accepted and max(accepted) == 4  # drafts rejected at once, and whole windows accepted


def test_a_verify_forward_is_laid_out_as_sglangs_target_verify():
    engine = feature_engine("mha", speculative_num_steps=3)
    seen: list[ForwardBatch] = []
    spy_on_forwards(engine, lambda _engine, batch: seen.append(batch))
    rid = engine.submit(list(range(1, 21)), 9)
    engine.step()  # the prefill samples the first token
    req = engine.scheduler.running[0]
    engine.step()
    verify = seen[-1]
    assert verify.forward_mode is ForwardMode.TARGET_VERIFY and verify.spec_info is not None
    assert verify.spec_info.draft_token_num == 4 and verify.spec_info.topk == 1
    assert verify.seq_lens.tolist() == [20] == verify.extend_prefix_lens_cpu  # the committed length
    assert verify.positions.tolist() == [20, 21, 22, 23] and verify.extend_seq_lens_cpu == [4]
    assert verify.input_ids.tolist()[0] == req.output_ids[0]  # the last sampled token leads the window
    engine.run_until_idle()
    assert rid not in {r.rid for r in engine.scheduler.running} and violations(engine) == []


@pytest.mark.parametrize("mode", MODES)
def test_the_model_computes_what_plain_decoding_computes_in_fewer_forwards(mode):
    """Each accepted row's hidden state is the one plain decoding samples from at that position:
    the windows of a batch are laid out request by request, and read the right K/V."""
    prompts = prompts_on_shared_prefixes(seed=3, count=4)
    results = {}
    for steps in (0, 4):
        engine = feature_engine(mode, speculative_num_steps=steps)
        results[steps] = engine.generate(prompts, [9, 10, 11, 12])
        assert violations(engine) == []
        results[steps, "forwards"] = engine.forward_count
    assert results[4, "forwards"] < results[0, "forwards"]
    for plain, speculative in zip(results[0], results[4], strict=True):
        assert plain.output_ids == speculative.output_ids
        assert speculative.attention_checksum == pytest.approx(plain.attention_checksum, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_a_window_fed_one_position_off_is_caught_at_its_verify_forward(mode):
    engine = feature_engine(mode, speculative_num_steps=3)
    engine.submit(list(range(1, 30)), 24)
    while engine.scheduler.running == [] or engine.scheduler.running[0].needs_prefill or engine.forward_count < 3:
        engine.step()
    assert violations(engine) == []
    engine.scheduler.draft_worker.shift_next_window(engine.scheduler.running[0])
    shifted = engine.forward_count + 1
    engine.step()
    found = violations(engine)
    assert found and min(v.step for v in found) == shifted
    assert any("write_position" in v.fail_reasons for v in found if v.step == shifted)
