"""Engine bug modes: public reports of KV-cache bugs whose mechanism the mock engine can re-enact in
its own scheduler, radix cache and allocator code paths, switched on by name (the ``bugs`` engine
setting, the server's ``--bugs`` flag).

A bug mode is not a poke into memory: the engine's logic misbehaves the way the report describes,
and only when the workload that triggers it occurs. One ``EngineBug`` entry here (name, report,
mechanism, trigger, the modes and settings it needs) plus the branch in the engine's code that
re-enacts it is all a new bug mode takes; ``bug_problems`` judges a ``bugs`` list for the scenario
validator and the server alike. docs/FAULTS.md ("Bug modes") describes each one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType

from kv_canary_contract.modes import MODEL_MODES, MODES, ModelMode
from kv_canary_contract.problems import ContractProblem

_SWA_MODES = tuple(mode for mode in MODEL_MODES if MODES[mode].has_swa_pool)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SettingNeed:
    """An engine setting the mechanism needs: ``holds(value)``, described as ``wants``."""

    setting: str
    holds: Callable[[object], bool]
    wants: str  # e.g. "page_size > 1"
    why: str


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EngineBug:
    name: str  # kebab-case; what engine.bugs lists
    reports: tuple[str, ...]  # the public reports it re-enacts, first the main one
    mechanism: str  # what the engine does wrong, in a sentence
    trigger: str  # the workload that makes it misbehave
    modes: tuple[ModelMode, ...] = MODEL_MODES
    needs: tuple[SettingNeed, ...] = ()


def _greater_than_one(value: object) -> bool:
    return isinstance(value, int) and value > 1


def _is_true(value: object) -> bool:
    return value is True


_BUGS = (
    EngineBug(
        name="chunked-prefill-abort-frees-cached-pages",
        reports=("sgl-project/sglang#38319", "sgl-project/sglang#38355"),
        mechanism="cache_unfinished_req hands a prefilling request's whole pages to the radix tree after every "
        "chunk, but the abort/retract release path frees from the request's protected length as it was at "
        "admission, so it frees pages the tree still holds",
        trigger="a request aborted or retracted after at least one chunk of its prompt was cached; a later request "
        "that matches that prefix reads pages handed to someone else",
    ),
    EngineBug(
        name="waiting-rematch-stale-protected-len",
        reports=("sgl-project/sglang#23392", "sgl-project/sglang#24193"),
        mechanism="a waiting request keeps the protected length of its first prefix match; rematched at admission "
        "to a longer prefix another request cached meanwhile, its release frees that shared radix KV as its own",
        trigger="a request that waits (admission refused) while another request caches a longer shared prefix, then "
        "is admitted and finishes or is aborted; a request reading that prefix afterwards reads recycled pages",
    ),
    EngineBug(
        name="unfinished-cache-drops-swa-evicted-len",
        reports=("sgl-project/sglang#30845", "sgl-project/sglang#27770"),
        mechanism="caching an unfinished request (a prompt prefilled in chunks, at its end) inserts without its "
        "SWA-evicted length, so positions whose SWA rows were released while the earlier chunks ran enter the "
        "radix tree as live nodes instead of tombstones",
        trigger="a prompt longer than a chunk plus the window, prefilled in chunks; a later request whose matched "
        "prefix ends where the window had slid past: its window maps to no SWA slot",
        modes=_SWA_MODES,
    ),
    EngineBug(
        name="eviction-leaves-phantom-prefix",
        reports=("vllm-project/vllm#50630",),
        mechanism="evicting the last node of a cached prefix (the whole prefix gone) frees its pages but leaves the "
        "node findable, so a later lookup of that prefix hits pages now holding another request's KV",
        trigger="prefix A cached, an unrelated request B large enough to evict all of A, then A again",
    ),
    EngineBug(
        name="overlap-frees-in-flight-page",
        reports=("sgl-project/sglang#36738",),
        mechanism="with overlap scheduling, a request finished while its overrun forward is in flight is cached "
        "with the committed length that counts the overrun token, but its tail is freed from the length written "
        "before that forward: the page the in-flight forward writes goes into the radix tree and back to the free "
        "list at once",
        trigger="overlap scheduling and a request finishing so that its overrun token completes a page (every "
        "finish with page_size 1); the next allocation reuses the page while the tree still maps it",
        needs=(
            SettingNeed(
                setting="overlap_schedule",
                holds=_is_true,
                wants="overlap_schedule: true",
                why="only the overlap scheduler runs a forward ahead of the results that finish a request",
            ),
        ),
    ),
    EngineBug(
        name="paged-match-aliases-boundary-page",
        reports=("sgl-project/sglang#38840",),
        mechanism="the paged prefix match does not round the matched length down to a page, so a node is split "
        "inside a page: the matching request continues writing into that boundary page, which the tree's other "
        "node still maps, and each owner frees it",
        trigger="page_size > 1 and a request sharing a cached prefix that diverges inside a page",
        needs=(
            SettingNeed(
                setting="page_size",
                holds=_greater_than_one,
                wants="page_size > 1",
                why="with one token per page every match ends on a page boundary",
            ),
        ),
    ),
)

ENGINE_BUGS: Mapping[str, EngineBug] = MappingProxyType({bug.name: bug for bug in _BUGS})
ENGINE_BUG_NAMES: tuple[str, ...] = tuple(ENGINE_BUGS)


def engine_bug(name: str) -> EngineBug:
    """The table entry of ``name``; KeyError naming the known bugs if there is none."""
    try:
        return ENGINE_BUGS[name]
    except KeyError:
        raise KeyError(f"{name!r} is not an engine bug; known bugs: {', '.join(ENGINE_BUG_NAMES)}") from None


def bug_problems(bugs: Sequence[str], *, mode: ModelMode, settings: Mapping[str, object]) -> Iterator[ContractProblem]:
    """Every reason the engine refuses ``bugs`` in ``mode`` with ``settings`` (all settings, defaults
    filled in); each problem is located at ``("bugs", index)``."""
    for index, name in enumerate(bugs):
        loc = ("bugs", index)
        if name in bugs[:index]:
            yield ContractProblem(loc=loc, message=f"bug {name} is listed twice")
            continue
        bug = ENGINE_BUGS.get(name)
        if bug is None:
            yield ContractProblem(loc=loc, message=f"unknown bug '{name}'; known bugs: {', '.join(ENGINE_BUG_NAMES)}")
            continue
        if mode not in bug.modes:
            yield ContractProblem(
                loc=loc,
                message=f"bug {name} does not apply to mode {mode}; it applies to modes {', '.join(bug.modes)}",
            )
        for need in bug.needs:
            value = settings.get(need.setting)
            if not need.holds(value):
                yield ContractProblem(
                    loc=loc,
                    message=f"bug {name} needs {need.wants} ({need.why}); {need.setting} is {_yaml_text(value)}",
                )


def _yaml_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "not set" if value is None else str(value)
