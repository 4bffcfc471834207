"""The scenario validator and the server give the same verdict on every fault body and every set of
engine settings, both ways: what one refuses the other refuses, what one accepts the other accepts.

Bodies mix the contract's vocabulary (every kind, trigger and target value), values at and past
the bounds, and wrong types; ``tests/unit/contract/verdicts.py`` says how each side is asked.
``canary_mode: none`` is left out on purpose: the server runs with the canary off, a scenario never
does (it would have nothing to check).
"""

from __future__ import annotations

import typing

from hypothesis import given, settings
from hypothesis import strategies as st

from kv_canary_contract import (
    FAULT_KINDS,
    MAX_FORWARDS,
    MAX_PAGE_SIZE,
    MAX_RANKS,
    MAX_REQUESTS,
    MAX_TOKENS,
    MODEL_MODES,
    SEED_MAX,
    SEED_MIN,
    TARGET_VALUES,
)
from tests.reliability.conftest import FUZZ_SCALE
from tests.unit.contract.verdicts import (
    TWO_RANK_MODE,
    inject_clients,
    server_fault_verdict,
    server_settings_verdict,
    two_rank_inject_client,
    validator_verdict,
)

__all__ = ["inject_clients", "two_rank_inject_client"]  # the fixtures, for the tests below


def _around(*edges: int) -> st.SearchStrategy[int]:
    """Integers at and next to the edges that matter, and a few anywhere between."""
    near = sorted({edge + delta for edge in edges for delta in (-1, 0, 1)})
    return st.sampled_from(near) | st.integers(min(near), max(near))


T = typing.TypeVar("T")
ODD_SCALARS = st.sampled_from([None, True, "1", 1.5, "", "melt"])


def _mostly(usual: st.SearchStrategy[T], odd: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``usual`` about nine times in ten, else ``odd``: most bodies get past the shape to the rules."""
    return st.integers(0, 9).flatmap(lambda roll: odd if roll == 9 else usual)  # 0, Hypothesis's favourite: usual


@st.composite
def fault_bodies(draw: st.DrawFn) -> object:
    """Mostly well-shaped bodies: a kind, zero to two triggers, some target keys of the vocabulary."""
    body: dict[str, object] = {"kind": draw(_mostly(st.sampled_from(FAULT_KINDS), st.just("melt") | ODD_SCALARS))}
    triggers = {
        "at_step": _mostly(st.integers(0, 40), _around(0, MAX_FORWARDS) | ODD_SCALARS),
        "after_warmup_steps": _mostly(st.integers(0, 8), _around(0, MAX_FORWARDS) | ODD_SCALARS),
        "probability": _mostly(
            st.sampled_from([1e-9, 0.1, 1.0, 1]), st.sampled_from([0.0, 1.0000001, -0.5]) | ODD_SCALARS
        ),
    }
    given = draw(_mostly(st.just(1), st.sampled_from([0, 2])))
    for key in draw(st.lists(st.sampled_from(list(triggers)), min_size=given, max_size=given, unique=True)):
        body[key] = draw(triggers[key])
    if draw(_mostly(st.just("probability" in body), st.booleans())):
        body["seed"] = draw(_mostly(st.integers(0, 99), _around(SEED_MIN, SEED_MAX) | ODD_SCALARS))
    if draw(st.integers(0, 3)) == 0:
        body["count"] = draw(_mostly(st.integers(1, 3), _around(0, MAX_REQUESTS) | ODD_SCALARS))
    if draw(st.booleans()):
        target = {
            key: draw(_mostly(st.sampled_from(values), ODD_SCALARS))
            for key, values in TARGET_VALUES.items()
            if draw(st.integers(0, 2)) == 0
        }
        if "rank" in target and draw(st.booleans()):
            target["rank"] = draw(_around(0, 1, MAX_RANKS - 1))  # past the engine's ranks, past the bound
        body["target"] = draw(_mostly(st.just(target), ODD_SCALARS))
    # Not None: a scenario's `fault: null` is no fault, which the harness never sends.
    return draw(
        _mostly(
            st.just(body), st.lists(st.integers(), max_size=2) | ODD_SCALARS.filter(lambda value: value is not None)
        )
    )


@settings(max_examples=settings.default.max_examples * FUZZ_SCALE)
@given(mode=st.sampled_from(MODEL_MODES), fault=fault_bodies())
def test_the_validator_and_the_server_agree_on_every_fault_body(inject_clients, mode, fault):
    validator = validator_verdict(mode=mode, fault=fault)
    server = server_fault_verdict(inject_clients[mode], fault)
    assert validator.accepted == server.accepted, (mode, fault, validator, server)


@settings(max_examples=settings.default.max_examples * FUZZ_SCALE)
@given(fault=fault_bodies())
def test_the_validator_and_a_two_rank_server_agree_on_every_fault_body(two_rank_inject_client, fault):
    validator = validator_verdict(mode=TWO_RANK_MODE, fault=fault, tp=2)
    server = server_fault_verdict(two_rank_inject_client, fault)
    assert validator.accepted == server.accepted, (fault, validator, server)


ENGINE_SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "page_size": st.sampled_from([0, 1, 2, 3, 4, 16, MAX_PAGE_SIZE, MAX_PAGE_SIZE + 1]),
        "max_total_tokens": st.sampled_from([0, 1, 4, 6, 48, 100, 1000, 4096, MAX_TOKENS, MAX_TOKENS + 1]),
        "swa_window": _around(1, 4, MAX_TOKENS),
        "sweep_interval": _around(0, MAX_FORWARDS),
        "real_kv": st.sampled_from(["none", "partial", "all", "most"]),
        "canary_mode": st.sampled_from(["log", "raise", "loud"]),
        "max_running_requests": _around(1, MAX_REQUESTS),
        "chunked_prefill_size": _around(1, MAX_TOKENS),
        "seed": _around(0, SEED_MIN, SEED_MAX),
        "stats_interval": _around(0, MAX_FORWARDS),
        "swa_divergence_interval": _around(0, MAX_FORWARDS),
        "tp": _around(0, 1, 2, 3),
        "pp": _around(0, 1, 2, 3),
    },
)


@settings(max_examples=settings.default.max_examples * FUZZ_SCALE)
@given(mode=st.sampled_from(MODEL_MODES), engine=ENGINE_SETTINGS)
def test_the_validator_and_the_server_agree_on_every_set_of_engine_settings(mode, engine):
    validator = validator_verdict(mode=mode, engine=engine)
    server = server_settings_verdict(mode=mode, engine=engine)
    assert validator.accepted == server.accepted, (mode, engine, validator, server)
