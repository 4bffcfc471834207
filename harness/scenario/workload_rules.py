"""Rules of a scenario's workload: requests that fit the pool, phases that can be played as written."""

from __future__ import annotations

import collections
from collections.abc import Iterator

from harness.scenario.model import Abort, RequestSpec, Scenario, Workload
from harness.scenario.rule_problem import Rule, RuleProblem
from kv_canary_contract import MAX_REQUESTS


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
            elif request.prefix_tokens is not None and request.prefix_tokens > prefixes[request.shared_prefix]:
                yield RuleProblem(
                    loc=(*loc, "prefix_tokens"),
                    message=f"{request.prefix_tokens} is more than shared prefix '{request.shared_prefix}' has "
                    f"({prefixes[request.shared_prefix]} tokens)",
                )
            elif request.prompt_len < (used := request.prefix_tokens or prefixes[request.shared_prefix]):
                yield RuleProblem(
                    loc=(*loc, "prompt_len"),
                    message=f"{request.prompt_len} is shorter than the {used} tokens of its "
                    f"shared prefix '{request.shared_prefix}' it starts with",
                )
        elif request.prefix_tokens is not None:
            yield RuleProblem(
                loc=(*loc, "prefix_tokens"), message="takes part of a shared prefix: give shared_prefix too"
            )
        needed = request.prompt_len + request.max_new_tokens
        if needed > scenario.engine.max_total_tokens:
            yield RuleProblem(
                loc=loc,
                message=f"needs {needed} KV slots, more than engine.max_total_tokens "
                f"({scenario.engine.max_total_tokens}); it could never run",
            )
    total = sent_request_count(scenario.workload)
    if total > MAX_REQUESTS:
        yield RuleProblem(
            loc=("workload", "requests"),
            message=f"{total} requests sent in all (counts summed over the phases); a workload is capped at "
            f"{MAX_REQUESTS}",
        )


def sent_request_count(workload: Workload) -> int:
    if workload.phases is None:
        return sum(request.count for request in workload.requests)
    by_name = {request.name: request for request in workload.requests if request.name is not None}
    return sum(by_name[name].count for phase in workload.phases for name in phase.send if name in by_name)


def _request_names_are_unique(scenario: Scenario) -> Iterator[RuleProblem]:
    seen: set[str] = set()
    for index, request in enumerate(scenario.workload.requests):
        if request.name is None:
            continue
        if request.name in seen:
            yield RuleProblem(
                loc=("workload", "requests", index, "name"),
                message=f"'{request.name}' names an earlier request too; names must be unique",
            )
        seen.add(request.name)


def _phases_can_be_played(scenario: Scenario) -> Iterator[RuleProblem]:
    workload = scenario.workload
    if workload.phases is None:
        return
    by_name: dict[str, RequestSpec] = {r.name: r for r in workload.requests if r.name is not None}
    sent: set[str] = set()
    for index, phase in enumerate(workload.phases):
        loc = ("workload", "phases", index)
        if not phase.send and not phase.flush_cache:
            yield RuleProblem(loc=loc, message="does nothing; give it requests to send, or flush_cache: true")
        for position, name in enumerate(phase.send):
            if name not in by_name:
                yield RuleProblem(
                    loc=(*loc, "send", position),
                    message=f"'{name}' names no request of workload.requests ({', '.join(by_name) or 'none named'})",
                )
            sent.add(name)
        yield from _aborts_can_land(phase.send, phase.aborts, by_name, loc)
    for index, request in enumerate(workload.requests):
        if request.name is None:
            yield RuleProblem(
                loc=("workload", "requests", index),
                message="has no name, so no phase can send it; name it and send it in a phase",
            )
        elif request.name not in sent:
            yield RuleProblem(
                loc=("workload", "requests", index, "name"),
                message=f"'{request.name}' is sent by no phase; send it or remove it",
            )


def _aborts_can_land(
    send: list[str], aborts: list[Abort], by_name: dict[str, RequestSpec], loc: tuple[str | int, ...]
) -> Iterator[RuleProblem]:
    times_sent = collections.Counter(send)
    # Every forward computes at least one token of a request of the phase, so by then all have answered.
    most_forwards = sum(
        by_name[name].count * (by_name[name].prompt_len + by_name[name].max_new_tokens)
        for name in send
        if name in by_name
    )
    aborted: set[str] = set()
    for index, abort in enumerate(aborts):
        abort_loc = (*loc, "aborts", index)
        spec = by_name.get(abort.request)
        if abort.request not in times_sent:
            yield RuleProblem(
                loc=(*abort_loc, "request"),
                message=f"'{abort.request}' is not sent by this phase; a phase aborts only requests it sends",
            )
        elif spec is not None and (spec.count > 1 or times_sent[abort.request] > 1):
            yield RuleProblem(
                loc=(*abort_loc, "request"),
                message=f"'{abort.request}' is more than one request here (count {spec.count}, sent "
                f"{times_sent[abort.request]} time(s)); an abort names exactly one: give it its own entry with count 1",
            )
        if abort.request in aborted:
            yield RuleProblem(loc=(*abort_loc, "request"), message=f"'{abort.request}' is aborted twice in this phase")
        aborted.add(abort.request)
        if abort.request in times_sent and abort.after_steps >= most_forwards:
            yield RuleProblem(
                loc=(*abort_loc, "after_steps"),
                message=f"{abort.after_steps}: the phase's requests need at most {most_forwards} forwards in all, so "
                "every one has answered by then and the abort could never land; abort earlier",
            )


WORKLOAD_RULES: tuple[Rule, ...] = (_requests_fit, _request_names_are_unique, _phases_can_be_played)
