"""Each engine bug mode (``kv_canary_contract.ENGINE_BUGS``), driven through the engine directly.

Per bug and mode, three runs of the engine with the canary and the read oracle (``KvShadow``):

* **bug on, triggering workload**: the mechanism does harm (some output's digest departs from the
  request run alone), and the canary reports a violation no later than that forward, and no later
  than the first misread the read oracle saw;
* **bug on, a workload that does not trigger it**: no violation, no misread, every output as alone;
* **bug off, the triggering workload**: the same.

Output tokens always equal the token oracle (the mock samples with it whatever the K/V holds), so
harm is judged on the digests (``bug_runs.py``). ``test_blind_spots`` pins what the canary cannot
see by design. docs/FAULTS.md ("Bug modes") describes each mechanism and what the canary reports.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from kv_canary_contract import ENGINE_BUGS
from mock_models.config import EngineConfig, ModelMode
from tests.unit.mock_models.bug_runs import BugRun, Driver, Workload, run

_rng = random.Random(13)


def _tokens(n: int) -> list[int]:
    return [_rng.randrange(1, 1000) for _ in range(n)]


A = _tokens(64)  # a prompt prefilled in four 16-token chunks
C = _tokens(80)  # unrelated traffic that reuses whatever slots are free
P, S1, S2, S3 = _tokens(48), _tokens(8), _tokens(8), _tokens(8)
SHORT, BIG = _tokens(40), _tokens(120)
BASE: dict[str, Any] = {"swa_window": 8, "chunked_prefill_size": 16, "max_total_tokens": 256}


def _with_output(driver: Driver, rid: str, extra: list[int]) -> list[int]:
    """A follow-up turn: the request's prompt, its outputs, and more."""
    prompt, _ = driver.prompts[rid]
    return prompt + list(driver.results[rid].output_ids) + extra


# -- chunked-prefill-abort-frees-cached-pages (SGLang #38319) -------------------------------------


def abort_mid_prefill(d: Driver) -> None:
    d.submit("a", A, 4)
    d.step(2)  # two chunks prefilled, each cached as it completed
    d.abort("a")
    d.submit("b", A[:40] + [5, 6, 7], 8)


def abort_mid_decode(d: Driver) -> None:
    d.submit("a", A, 40)
    d.step(8)  # the prompt (cached when done) and a few decodes
    d.abort("a")
    d.submit("c", C, 4)
    d.drain()
    d.submit("b", A[:60] + [5, 6, 7], 8)


def retract_under_pressure(d: Driver) -> None:
    d.submit("a", A, 60)
    d.submit("c", C, 60)  # together they outgrow the pool: one is retracted
    d.drain()
    d.submit("b", A[:60] + [5, 6, 7], 8)


def prompt_then_reader(d: Driver) -> None:
    d.submit("a", A, 4)
    d.drain()
    d.submit("c", C, 4)
    d.drain()
    d.submit("b", A[:60] + [5, 6, 7], 8)


# -- waiting-rematch-stale-protected-len (SGLang #23392) ------------------------------------------


def wait_while_the_prefix_is_cached(d: Driver) -> None:
    d.submit("q", P + S1, 24)  # admitted; caches P as it prefills
    d.submit("r", P + S2, 24)  # refused at first (pool): matched nothing, waits, admitted on P later
    d.drain()
    d.submit("s", P + S3, 8)  # reads P after r's release freed it


def wait_then_unrelated_traffic(d: Driver) -> None:
    d.submit("q", P + S1, 24)
    d.submit("r", P + S2, 24)
    d.drain()
    d.submit("c", C, 4)  # reuses the freed slots, up to those of P's window
    d.drain()
    d.submit("s", P + S3, 8)


def one_at_a_time(d: Driver) -> None:
    for rid, suffix in (("q", S1), ("r", S2), ("s", S3)):
        d.submit(rid, P + suffix, 24)
        d.drain()


# -- unfinished-cache-drops-swa-evicted-len (SGLang #30845, #27770) -------------------------------


def read_where_the_window_slid_past(d: Driver) -> None:
    d.submit("a", A, 4)
    d.drain()
    d.submit("b", A[:30] + [5, 6, 7], 8)  # its window [22, 30) slid out while A was prefilled


def read_inside_the_resident_tail(d: Driver) -> None:
    d.submit("a", A, 4)
    d.drain()
    d.submit("b", A[:60] + [5, 6, 7], 8)  # its window [52, 60) is the prompt's resident tail


# -- eviction-leaves-phantom-prefix (vLLM #50630) -------------------------------------------------


def prefix_evicted_then_again(d: Driver) -> None:
    d.submit("a", SHORT, 4)
    d.drain()
    d.submit("b", BIG, 4)  # needs every slot: A is evicted whole
    d.drain()
    d.submit("a2", SHORT, 4)


def leaf_evicted_then_again(d: Driver) -> None:
    d.submit("a", SHORT, 4)
    d.drain()
    d.submit("x", SHORT[:24] + _X_SUFFIX, 4)  # shares A's first 24 tokens: the branch forks there
    d.drain()
    d.submit("b", BIG[:60], 4)  # evicts A's leaf only; the shared node stays
    d.drain()
    d.submit("a2", SHORT, 4)


_X_SUFFIX = _tokens(16)

# -- overlap-frees-in-flight-page (SGLang #36738) -------------------------------------------------

R = _tokens(20)


def finish_then_follow_up(d: Driver) -> None:
    d.submit("r", R, 5)  # 25 tokens: its overrun token completes a page when page_size is 1 (not 2)
    d.drain()
    d.submit("q", _with_output(d, "r", [3, 4, 5]), 6)


# -- paged-match-aliases-boundary-page (SGLang #38840) --------------------------------------------

D, DX, DY = _tokens(30), _tokens(8), _tokens(10)


def diverge_inside_a_page(d: Driver) -> None:
    d.submit("a", D, 4)
    d.drain()
    d.submit("b", D[:22] + DX, 4)  # diverges inside page [20, 24)
    d.drain()
    d.submit("c", D + [9, 9], 4)


def diverge_on_a_page_boundary(d: Driver) -> None:
    d.submit("a", D, 4)
    d.drain()
    d.submit("b", D[:20] + DY, 4)
    d.drain()
    d.submit("c", D + [9, 9], 4)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class BugCase:
    bug: str
    mode: str
    trigger: Workload
    quiet: Workload  # with the bug on, a workload that does not trigger it
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    quiet_settings: dict[str, Any] | None = None  # the quiet run's, where a setting is what keeps it quiet

    @property
    def id(self) -> str:
        return f"{self.bug}-{self.mode}-{self.trigger.__name__}"

    def config(self, *, bug: bool, quiet: bool = False) -> EngineConfig:
        settings = self.quiet_settings if quiet and self.quiet_settings is not None else self.settings
        return EngineConfig(model_mode=ModelMode(self.mode), bugs=(self.bug,) if bug else (), **(BASE | settings))


def _cases() -> list[BugCase]:
    cases = []
    for mode in ("mha", "swa", "dsv4"):
        bug = "chunked-prefill-abort-frees-cached-pages"
        if mode == "mha":  # SWA modes cache a chunked prompt only when it is done
            cases.append(BugCase(bug=bug, mode=mode, trigger=abort_mid_prefill, quiet=prompt_then_reader))
        cases.append(BugCase(bug=bug, mode=mode, trigger=abort_mid_decode, quiet=prompt_then_reader))
        if mode != "dsv4":
            cases.append(
                BugCase(
                    bug=bug,
                    mode=mode,
                    trigger=retract_under_pressure,
                    quiet=prompt_then_reader,
                    settings={"new_token_ratio": 0.0, "max_total_tokens": 224},
                )
            )
        bug = "waiting-rematch-stale-protected-len"
        # In dsv4 only the window is guarded: unrelated traffic must reuse the slots of P's window.
        trigger = wait_then_unrelated_traffic if mode == "dsv4" else wait_while_the_prefix_is_cached
        cases.append(
            BugCase(bug=bug, mode=mode, trigger=trigger, quiet=one_at_a_time, settings={"max_total_tokens": 128})
        )
        if mode != "mha":
            cases.append(
                BugCase(
                    bug="unfinished-cache-drops-swa-evicted-len",
                    mode=mode,
                    trigger=read_where_the_window_slid_past,
                    quiet=read_inside_the_resident_tail,
                )
            )
        cases.append(
            BugCase(
                bug="eviction-leaves-phantom-prefix",
                mode=mode,
                trigger=prefix_evicted_then_again,
                quiet=leaf_evicted_then_again,
                settings={"max_total_tokens": 128},
            )
        )
        cases.append(
            BugCase(
                bug="overlap-frees-in-flight-page",
                mode=mode,
                trigger=finish_then_follow_up,
                quiet=finish_then_follow_up,
                settings={"overlap_schedule": True, "max_total_tokens": 128},
                quiet_settings={"overlap_schedule": True, "max_total_tokens": 128, "page_size": 2},
            )
        )
        cases.append(
            BugCase(
                bug="paged-match-aliases-boundary-page",
                mode=mode,
                trigger=diverge_inside_a_page,
                quiet=diverge_on_a_page_boundary,
                settings={"page_size": 4, "max_total_tokens": 128},
            )
        )
    return cases


CASES = _cases()


def test_every_bug_mode_is_exercised_in_every_mode_it_applies_to():
    covered = {(case.bug, case.mode) for case in CASES}
    assert covered == {(bug.name, mode) for bug in ENGINE_BUGS.values() for mode in bug.modes}


def _assert_clean(result: BugRun) -> None:
    assert result.violations == [], [record.format() for record in result.violations[:5]]
    assert result.shadow.events == [], result.shadow.events[:5]
    assert result.first_wrong_output() is None
    assert result.outputs_match_the_token_oracle()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_bug_is_caught_no_later_than_its_first_wrong_output(case: BugCase):
    result = run(case.config(bug=True), case.trigger)
    harm = result.first_wrong_output()
    assert harm is not None, "the triggering workload did no harm: the mechanism did not fire"
    caught = result.first_violation
    assert caught is not None and caught <= harm, f"first violation at forward {caught}, first wrong output at {harm}"
    if result.first_misread is not None:
        assert caught <= result.first_misread
    # Caught by the HEAD verify of the forward that first reads the damage, before its model runs.
    assert any(record.launch_tag.startswith("HEAD_") for record in result.violations if record.step == caught)
    assert result.outputs_match_the_token_oracle()  # the tokens cannot show it: the sampler is the oracle


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_bug_stays_silent_without_its_trigger(case: BugCase):
    _assert_clean(run(case.config(bug=True, quiet=True), case.quiet))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_without_the_bug_the_trigger_is_harmless(case: BugCase):
    _assert_clean(run(case.config(bug=False), case.trigger))


def test_blind_spots():
    """In dsv4 the canary guards the window's SWA K only: a full-pool slot freed under the radix tree and
    reused is seen only where it is inside a reader's window. Recycled slots outside every window
    change only the compressed pool's entries, which a later read mixes into its output, unguarded
    by design (docs/FAULTS.md, What cannot be seen)."""
    case = next(case for case in CASES if case.bug == "waiting-rematch-stale-protected-len" and case.mode == "dsv4")
    result = run(case.config(bug=True), wait_while_the_prefix_is_cached)
    assert result.first_wrong_output() is not None  # harm through the compressed pool
    assert result.violations == [] and result.shadow.events == []  # detected: false, and the oracle agrees
