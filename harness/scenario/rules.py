"""Rules a well-shaped scenario must also meet: the contract's (what the server would refuse, in
every mode the scenario lists) and the harness's own (expectations that can be checked).

Each rule yields problems located at the exact key (a pydantic-style location tuple), so that
the loader can point at the file line; all rules run, so an author sees every problem at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from harness.scenario.model import Fault, Scenario, ViolationPattern
from harness.scenario.modes import launch_tags_of_mode, mode_has_full_and_swa_groups
from harness.scenario.patterns import alternatives, matches_any
from harness.scenario.problems import Location
from harness.scenario.rule_problem import Rule, RuleProblem
from harness.scenario.workload_rules import WORKLOAD_RULES
from kv_canary.launch_tags import FailReason, LaunchTag
from kv_canary_contract import engine_setting_problems, fault_problems, rank_count

KNOWN_LAUNCH_TAGS = tuple(tag.name for tag in LaunchTag)
KNOWN_FAIL_REASONS = tuple(reason.log_names()[0] for reason in FailReason)


def _swa_divergence_has_a_mode(scenario: Scenario) -> Iterator[RuleProblem]:
    """Checked only in modes with both groups; in the others the expectation is left alone."""
    if scenario.expect.swa_divergence is not None and not any(
        mode_has_full_and_swa_groups(mode) for mode in scenario.model_modes
    ):
        yield RuleProblem(
            loc=("expect", "swa_divergence"),
            message="checked only in modes with FULL and SWA groups (swa), and model_modes has none",
        )


def _unique_modes(scenario: Scenario) -> Iterator[RuleProblem]:
    for index, mode in enumerate(scenario.model_modes):
        if mode in scenario.model_modes[:index]:
            yield RuleProblem(loc=("model_modes", index), message=f"mode '{mode}' is listed twice")


def _overrides_name_listed_modes(scenario: Scenario) -> Iterator[RuleProblem]:
    for mode in scenario.per_mode:
        if mode not in scenario.model_modes:
            yield RuleProblem(
                loc=("per_mode", mode),
                message=f"mode {mode} is not in model_modes, so it never runs; list it or drop the override",
            )
    for mode in scenario.not_applicable:
        if mode in scenario.model_modes:
            yield RuleProblem(
                loc=("not_applicable", mode),
                message=f"mode {mode} is in model_modes; a scenario runs in a mode or says why not, not both",
            )


def _fault_fits_the_contract(scenario: Scenario) -> Iterator[RuleProblem]:
    """What the server would refuse at ``POST /kv_canary/inject``, for every mode the scenario runs in."""
    engine = scenario.engine.model_dump()
    for loc, fault in _faults_with_locations(scenario):
        for mode in scenario.model_modes:
            for problem in fault_problems(fault, mode=mode, engine=engine):
                yield RuleProblem(loc=(*loc, *problem.loc), message=problem.message)


def _faults_with_locations(scenario: Scenario) -> Iterator[tuple[Location, Fault]]:
    if scenario.fault is not None:
        yield ("fault",), scenario.fault
    for name, fault in (scenario.faults or {}).items():
        yield ("faults", name), fault


def _engine_fits_the_contract(scenario: Scenario) -> Iterator[RuleProblem]:
    """What the server would refuse at start-up, for every mode the scenario runs in."""
    for mode in scenario.model_modes:
        for problem in engine_setting_problems(scenario.engine.model_dump(), mode=mode):
            yield RuleProblem(loc=("engine", *problem.loc), message=problem.message)


def _one_fault_key(scenario: Scenario) -> Iterator[RuleProblem]:
    if scenario.fault is not None and scenario.faults is not None:
        yield RuleProblem(
            loc=("faults",), message="fault and faults are both set; put the single fault under faults with a name"
        )


def _detection_is_decidable(scenario: Scenario) -> Iterator[RuleProblem]:
    expect = scenario.expect
    if scenario.has_culprit and expect.detected is None:
        yield RuleProblem(
            loc=("expect", "detected"),
            message="required when a fault is injected or an engine bug is on: true if the canary must catch it, "
            "false if it must stay silent",
        )
    if not scenario.has_culprit and expect.detected:
        yield RuleProblem(
            loc=("expect", "detected"),
            message="nothing is injected and no engine bug is on, so nothing can be detected; add a fault or a bug "
            "(engine.bugs), or set detected: false",
        )
    if expect.detected:
        if scenario.injects_fault:
            unbounded = [name for name, _ in scenario.named_faults() if fault_bound(scenario, name) is None]
            if unbounded:
                yield RuleProblem(
                    loc=("expect", "within_steps"),
                    message="required with detected: true"
                    + (f" (faults without their own: {', '.join(unbounded)})" if scenario.faults else "")
                    + "; it bounds the detection latency and how long to step",
                )
        elif expect.within_steps is not None:
            yield RuleProblem(
                loc=("expect", "within_steps"),
                message="an engine bug has no injection step to count from; its detection is judged against the "
                "first wrong output instead (drop the key)",
            )
        return
    if expect.within_steps is not None:
        yield RuleProblem(loc=("expect", "within_steps"), message="a latency bound needs detected: true")
    if expect.violations:
        yield RuleProblem(
            loc=("expect", "violations"),
            message="violation patterns need detected: true; detected: false allows zero violations",
        )
    if expect.faults:
        yield RuleProblem(loc=("expect", "faults"), message="per-fault expectations need detected: true")


def fault_bound(scenario: Scenario, name: str) -> int | None:
    """The latency bound of fault ``name``: its own (expect.faults), else the scenario's."""
    own = scenario.expect.faults.get(name)
    if own is not None and own.within_steps is not None:
        return own.within_steps
    return scenario.expect.within_steps


def _fault_expectations_name_faults(scenario: Scenario) -> Iterator[RuleProblem]:
    names = [name for name, _ in scenario.named_faults()] if scenario.faults is not None else []
    for name in scenario.expect.faults:
        if name not in names:
            known = ", ".join(names) or "none: use faults to name several"
            yield RuleProblem(loc=("expect", "faults", name), message=f"names no fault of faults ({known})")


def _fault_windows_apart(scenario: Scenario) -> Iterator[RuleProblem]:
    """Step-triggered faults whose detection windows overlap could not be told apart in the log."""
    if not scenario.expects_detection:
        return
    stepped = sorted(
        (fault.at_step, name)
        for name, fault in scenario.named_faults()
        if fault.at_step is not None and fault_bound(scenario, name) is not None
    )
    for (first_step, first), (second_step, second) in itertools.pairwise(stepped):
        bound = fault_bound(scenario, first) or 0
        last = first_step + bound + fault_count(scenario, first) - 1
        if second_step <= last:
            yield RuleProblem(
                loc=("faults", second, "at_step"),
                message=f"{second_step} falls in fault {first}'s detection window (steps {first_step} to {last}), "
                f"so a violation there could be either's; trigger it after step {last}",
            )


def fault_count(scenario: Scenario, name: str) -> int:
    return next(fault.count for fault_name, fault in scenario.named_faults() if fault_name == name)


def _harm_and_blind_spot(scenario: Scenario) -> Iterator[RuleProblem]:
    expect = scenario.expect
    if expect.harm is not None and not scenario.has_culprit:
        yield RuleProblem(
            loc=("expect", "harm"),
            message="harm is judged against a clean twin run without the fault or bug, and there is none; "
            "a baseline's outputs are always checked against the token oracle",
        )
    if expect.blind_spot is not None and (expect.detected is not False or not scenario.has_culprit):
        yield RuleProblem(
            loc=("expect", "blind_spot"),
            message="says why a fault or bug goes unseen: it needs one, and detected: false",
        )


def _all_patterns(scenario: Scenario) -> Iterator[tuple[Location, ViolationPattern]]:
    for index, pattern in enumerate(scenario.expect.violations):
        yield ("expect", "violations", index), pattern
    for name, expectation in scenario.expect.faults.items():
        for index, pattern in enumerate(expectation.violations or ()):
            yield ("expect", "faults", name, "violations", index), pattern


def _violation_patterns_can_match(scenario: Scenario) -> Iterator[RuleProblem]:
    sweep_on = scenario.engine.sweep_interval > 0
    for pattern_loc, pattern in _all_patterns(scenario):
        tag_loc = (*pattern_loc, "launch_tag")
        for alternative in alternatives(pattern.launch_tag):
            if not matches_any(alternative, KNOWN_LAUNCH_TAGS):
                yield RuleProblem(
                    loc=tag_loc,
                    message=f"'{alternative}' matches no launch tag; known tags: {', '.join(KNOWN_LAUNCH_TAGS)}",
                )
        for alternative in alternatives(pattern.fail_reason):
            if not matches_any(alternative, KNOWN_FAIL_REASONS):
                yield RuleProblem(
                    loc=(*pattern_loc, "fail_reason"),
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
                    "widen the pattern, or narrow it for this mode under per_mode",
                )


def _swa_divergence_is_observable(scenario: Scenario) -> Iterator[RuleProblem]:
    swa_divergence = scenario.expect.swa_divergence
    if swa_divergence is None:
        return
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


def _violation_ranks_exist(scenario: Scenario) -> Iterator[RuleProblem]:
    ranks = rank_count(scenario.engine.model_dump())
    for index, pattern in enumerate(scenario.expect.violations):
        if pattern.rank is not None and pattern.rank >= ranks:
            yield RuleProblem(
                loc=("expect", "violations", index, "rank"),
                message=f"rank {pattern.rank}: the engine runs {ranks} rank{'s' if ranks > 1 else ''} (engine.tp x "
                f"engine.pp), so no line can name it; use a rank from 0 to {ranks - 1}",
            )


# The rules of a scenario as it runs in one mode (``per_mode`` merged in; model_modes is that mode).
RULES: tuple[Rule, ...] = (
    _engine_fits_the_contract,
    _one_fault_key,
    _fault_fits_the_contract,
    _detection_is_decidable,
    _fault_expectations_name_faults,
    _fault_windows_apart,
    _harm_and_blind_spot,
    _violation_patterns_can_match,
    _violation_ranks_exist,
    _swa_divergence_is_observable,
    *WORKLOAD_RULES,
)
# The rules of the file as a whole: its modes, and what it says about the others.
FILE_RULES: tuple[Rule, ...] = (_unique_modes, _overrides_name_listed_modes, _swa_divergence_has_a_mode)
# What the engine and the injector would refuse: why a mode a scenario does not list cannot run it.
CONTRACT_RULES: tuple[Rule, ...] = (_engine_fits_the_contract, _fault_fits_the_contract)


def check_rules(scenario: Scenario, rules: tuple[Rule, ...] = RULES) -> list[RuleProblem]:
    # dict.fromkeys: a rule checked per mode may find the same problem twice
    return list(dict.fromkeys(problem for rule in rules for problem in rule(scenario)))
