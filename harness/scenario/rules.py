"""Rules a well-shaped scenario must also meet: the contract's (what the server would refuse, in
every mode the scenario lists) and the harness's own (expectations that can be checked).

Each rule yields problems located at the exact key (a pydantic-style location tuple), so that
the loader can point at the file line; all rules run, so an author sees every problem at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

from harness.scenario.model import Scenario
from harness.scenario.modes import launch_tags_of_mode, mode_has_full_and_swa_groups
from harness.scenario.patterns import alternatives, matches_any
from harness.scenario.problems import Location
from kv_canary.launch_tags import FailReason, LaunchTag
from kv_canary_contract import MAX_REQUESTS, engine_setting_problems, fault_problems, rank_count

KNOWN_LAUNCH_TAGS = tuple(tag.name for tag in LaunchTag)
KNOWN_FAIL_REASONS = tuple(reason.log_names()[0] for reason in FailReason)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RuleProblem:
    loc: Location
    message: str


Rule = Callable[[Scenario], Iterator[RuleProblem]]


def _unique_modes(scenario: Scenario) -> Iterator[RuleProblem]:
    for index, mode in enumerate(scenario.model_modes):
        if mode in scenario.model_modes[:index]:
            yield RuleProblem(loc=("model_modes", index), message=f"mode '{mode}' is listed twice")


def _fault_fits_the_contract(scenario: Scenario) -> Iterator[RuleProblem]:
    """What the server would refuse at ``POST /kv_canary/inject``, for every mode the scenario runs in."""
    if scenario.fault is None:
        return
    ranks = rank_count(scenario.engine.model_dump())
    for mode in scenario.model_modes:
        for problem in fault_problems(scenario.fault, mode=mode, ranks=ranks):
            yield RuleProblem(loc=("fault", *problem.loc), message=problem.message)


def _engine_fits_the_contract(scenario: Scenario) -> Iterator[RuleProblem]:
    """What the server would refuse at start-up, for every mode the scenario runs in."""
    for mode in scenario.model_modes:
        for problem in engine_setting_problems(scenario.engine.model_dump(), mode=mode):
            yield RuleProblem(loc=("engine", *problem.loc), message=problem.message)


def _detection_is_decidable(scenario: Scenario) -> Iterator[RuleProblem]:
    expect = scenario.expect
    if scenario.injects_fault and expect.detected is None:
        yield RuleProblem(
            loc=("expect", "detected"),
            message="required when a fault is injected: true if the canary must catch it, false if it must stay silent",
        )
    if not scenario.injects_fault and expect.detected:
        yield RuleProblem(
            loc=("expect", "detected"),
            message="nothing is injected, so nothing can be detected; add a fault or set detected: false",
        )
    if expect.detected:
        if expect.within_steps is None:
            yield RuleProblem(
                loc=("expect", "within_steps"),
                message="required with detected: true; it bounds the detection latency and how long to step",
            )
        return
    if expect.within_steps is not None:
        yield RuleProblem(loc=("expect", "within_steps"), message="a latency bound needs detected: true")
    if expect.violations:
        yield RuleProblem(
            loc=("expect", "violations"),
            message="violation patterns need detected: true; detected: false allows zero violations",
        )


def _violation_patterns_can_match(scenario: Scenario) -> Iterator[RuleProblem]:
    sweep_on = scenario.engine.sweep_interval > 0
    for index, pattern in enumerate(scenario.expect.violations):
        tag_loc = ("expect", "violations", index, "launch_tag")
        for alternative in alternatives(pattern.launch_tag):
            if not matches_any(alternative, KNOWN_LAUNCH_TAGS):
                yield RuleProblem(
                    loc=tag_loc,
                    message=f"'{alternative}' matches no launch tag; known tags: {', '.join(KNOWN_LAUNCH_TAGS)}",
                )
        for alternative in alternatives(pattern.fail_reason):
            if not matches_any(alternative, KNOWN_FAIL_REASONS):
                yield RuleProblem(
                    loc=("expect", "violations", index, "fail_reason"),
                    message=f"'{alternative}' matches no fail reason; known reasons: {', '.join(KNOWN_FAIL_REASONS)}",
                )
        for mode in dict.fromkeys(scenario.model_modes):
            if matches_any(pattern.launch_tag, launch_tags_of_mode(mode, sweep=sweep_on)):
                continue
            if not sweep_on and matches_any(pattern.launch_tag, launch_tags_of_mode(mode, sweep=True)):
                yield RuleProblem(
                    loc=tag_loc,
                    message="matches only SWEEP tags, but engine.sweep_interval is 0 "
                    "(no sweep); turn the sweep on or widen the pattern",
                )
            elif matches_any(pattern.launch_tag, KNOWN_LAUNCH_TAGS):
                yield RuleProblem(
                    loc=tag_loc,
                    message=f"matches no tag that mode {mode} logs "
                    f"({', '.join(launch_tags_of_mode(mode, sweep=True))}); "
                    "widen the pattern or split the scenario per mode",
                )


def _swa_divergence_is_observable(scenario: Scenario) -> Iterator[RuleProblem]:
    swa_divergence = scenario.expect.swa_divergence
    if swa_divergence is None:
        return
    if not any(mode_has_full_and_swa_groups(mode) for mode in scenario.model_modes):
        yield RuleProblem(
            loc=("expect", "swa_divergence"),
            message="checked only in modes with FULL and SWA groups (swa), and model_modes has none",
        )
    if scenario.engine.swa_divergence_interval == 0:
        yield RuleProblem(
            loc=("engine", "swa_divergence_interval"),
            message="0 turns off the divergence lines that expect.swa_divergence is checked on",
        )
    if not swa_divergence.model_fields_set:
        yield RuleProblem(
            loc=("expect", "swa_divergence"),
            message="lists nothing to check; give a comparison such as swa_out_of_window_tokens: '>=1'",
        )


def _requests_fit(scenario: Scenario) -> Iterator[RuleProblem]:
    prefixes = scenario.workload.shared_prefixes
    for index, request in enumerate(scenario.workload.requests):
        loc = ("workload", "requests", index)
        if request.shared_prefix is not None:
            if request.shared_prefix not in prefixes:
                known = ", ".join(prefixes) or "none defined"
                yield RuleProblem(
                    loc=(*loc, "shared_prefix"),
                    message=f"'{request.shared_prefix}' is not in workload.shared_prefixes ({known})",
                )
            elif request.prompt_len < prefixes[request.shared_prefix]:
                yield RuleProblem(
                    loc=(*loc, "prompt_len"),
                    message=f"{request.prompt_len} is shorter than its "
                    f"shared prefix '{request.shared_prefix}' ({prefixes[request.shared_prefix]} tokens)",
                )
        needed = request.prompt_len + request.max_new_tokens
        if needed > scenario.engine.max_total_tokens:
            yield RuleProblem(
                loc=loc,
                message=f"needs {needed} KV slots, more than engine.max_total_tokens "
                f"({scenario.engine.max_total_tokens}); it could never run",
            )
    total = sum(request.count for request in scenario.workload.requests)
    if total > MAX_REQUESTS:
        yield RuleProblem(
            loc=("workload", "requests"),
            message=f"{total} requests in all (counts summed); a workload is capped at {MAX_REQUESTS}",
        )


def _violation_ranks_exist(scenario: Scenario) -> Iterator[RuleProblem]:
    ranks = rank_count(scenario.engine.model_dump())
    for index, pattern in enumerate(scenario.expect.violations):
        if pattern.rank is not None and pattern.rank >= ranks:
            yield RuleProblem(
                loc=("expect", "violations", index, "rank"),
                message=f"rank {pattern.rank}: the engine runs {ranks} rank{'s' if ranks > 1 else ''} (engine.tp x "
                f"engine.pp), so no line can name it; use a rank from 0 to {ranks - 1}",
            )


RULES: tuple[Rule, ...] = (
    _unique_modes,
    _engine_fits_the_contract,
    _fault_fits_the_contract,
    _detection_is_decidable,
    _violation_patterns_can_match,
    _violation_ranks_exist,
    _swa_divergence_is_observable,
    _requests_fit,
)


def check_rules(scenario: Scenario) -> list[RuleProblem]:
    # dict.fromkeys: a rule checked per mode may find the same problem twice
    return list(dict.fromkeys(problem for rule in RULES for problem in rule(scenario)))
