"""The speculative-decoding bug modes (``kv_canary_contract.ENGINE_BUGS``), as ``test_engine_bug_modes``
runs the others: bug on with its trigger (harm, and the canary no later than it), bug on without it
and bug off with it (clean). ``draft-decode-positions-off-by-one`` harms nothing the canary guards:
its test pins that (the drafts collapse, outputs and the target's KV stay exact, nothing reported).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from kv_canary_contract import ENGINE_BUGS
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.speculative.scheduler import SpeculativeScheduler
from tests.unit.mock_models.bug_runs import BugRun, Driver, run

_rng = random.Random(29)


def _tokens(n: int) -> list[int]:
    return [_rng.randrange(1, 1000) for _ in range(n)]


P, X, Y, Z, W = _tokens(32), _tokens(24), _tokens(4), _tokens(36), _tokens(30)
# One request row: each request is admitted on the row the one before it left, its stale entries included.
SETTINGS: dict[str, Any] = {
    "swa_window": 8,
    "chunked_prefill_size": 16,
    "max_total_tokens": 256,
    "max_running_requests": 1,
}
MODES = ("mha", "swa", "dsv4")


def _config(mode: str, *, bugs: tuple[str, ...], steps: int = 3) -> EngineConfig:
    return EngineConfig(model_mode=ModelMode(mode), bugs=bugs, speculative_num_steps=steps, **SETTINGS)


# -- drafter-writes-unallocated-lookahead (vLLM #42971) -------------------------------------------


def prefix_hit_on_a_reused_row(d: Driver) -> None:
    d.submit("a", P + X, 4)  # cached whole; its row is freed with its slots still written in it
    d.drain()
    # A prefix hit (inside a's window-resident tail, so SWA modes match it too) on a's row: its lookahead
    # positions hold a's last slots, which the radix tree caches.
    d.submit("b", (P + X)[:52] + Y, 8)
    d.drain()
    # Reads a's cached sequence to its end. One token: no verify round of its own, whose lookahead on
    # this row would be the mechanism again (through entries no request wrote: the padding slot).
    prompt, _ = d.prompts["a"]
    d.submit("c", prompt + list(d.results["a"].output_ids) + [7, 7], 1)


def no_prefix_hit(d: Driver) -> None:
    d.submit("a", P + X, 4)
    d.drain()
    d.submit("b", Z, 8)  # the same row, nothing matched: its lookahead gets slots in time
    d.drain()
    d.submit("c", W, 8)


def _assert_clean(result: BugRun) -> None:
    assert result.violations == [], [record.format() for record in result.violations[:5]]
    assert result.shadow.events == [], result.shadow.events[:5]
    assert result.first_wrong_output() is None
    assert result.outputs_match_the_token_oracle()


LOOKAHEAD = "drafter-writes-unallocated-lookahead"


def test_these_are_the_bug_modes_that_need_speculative_decoding_and_apply_to_every_mode():
    speculative = {
        bug.name for bug in ENGINE_BUGS.values() if any(need.setting == "speculative_num_steps" for need in bug.needs)
    }
    assert speculative == {LOOKAHEAD, LATE}
    assert all(ENGINE_BUGS[name].modes == MODES for name in speculative)


@pytest.mark.parametrize("mode", MODES)
def test_unallocated_lookahead_is_caught_no_later_than_its_first_wrong_output(mode):
    result = run(_config(mode, bugs=(LOOKAHEAD,)), prefix_hit_on_a_reused_row)
    harm = result.first_wrong_output()
    assert harm is not None, "the triggering workload did no harm: the mechanism did not fire"
    caught = result.first_violation
    assert caught is not None and caught <= harm, f"first violation at forward {caught}, first wrong output at {harm}"
    if result.first_misread is not None:
        assert caught <= result.first_misread
    assert result.outputs_match_the_token_oracle()


@pytest.mark.parametrize("mode", MODES)
def test_unallocated_lookahead_stays_silent_without_a_prefix_hit(mode):
    _assert_clean(run(_config(mode, bugs=(LOOKAHEAD,)), no_prefix_hit))


@pytest.mark.parametrize("mode", MODES)
def test_without_the_bug_a_prefix_hit_on_a_reused_row_is_harmless(mode):
    _assert_clean(run(_config(mode, bugs=()), prefix_hit_on_a_reused_row))


# -- draft-decode-positions-off-by-one (SGLang #25015) --------------------------------------------

LATE = "draft-decode-positions-off-by-one"


def _accepted_drafts(mode: str, bugs: tuple[str, ...]) -> tuple[BugRun, list[int]]:
    accepted: list[int] = []

    def decode_with_drafts(d: Driver) -> None:
        scheduler = d.engine.scheduler
        assert isinstance(scheduler, SpeculativeScheduler)
        process = scheduler.process_forward

        def counting(batch: Any, **kwargs: Any) -> Any:
            accepted.extend(window.accepted - 1 for window in getattr(batch, "windows", ()))
            return process(batch, **kwargs)

        scheduler.process_forward = counting
        for index in range(3):
            d.submit(f"r{index}", _tokens(20), 24)

    return run(_config(mode, bugs=bugs), decode_with_drafts), accepted


@pytest.mark.parametrize("mode", MODES)
def test_late_draft_positions_collapse_acceptance_and_harm_nothing_the_canary_guards(mode):
    assert not ENGINE_BUGS[LATE].detected and not ENGINE_BUGS[LATE].harms_outputs  # so no library scenario
    buggy, accepted = _accepted_drafts(mode, (LATE,))
    _, accepted_without = _accepted_drafts(mode, ())
    assert max(accepted_without) == 3  # whole windows accepted without the bug
    assert max(accepted) <= 1  # only the first draft, drafted at the right position, can be accepted
    _assert_clean(buggy)  # outputs and the target's KV exact: nothing for the canary to report
