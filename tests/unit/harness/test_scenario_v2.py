"""Scenario format v2: one file across its modes (per_mode, not_applicable), workload phases with aborts
and cache flushes, several named faults; every problem located at the line the author wrote."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.runner.workload import plan_phases
from harness.scenario import ScenarioValidationError, load_scenarios

EVERY_MODE = """\
name: every-mode
description: One fault, three modes; dsv4 narrows the tags it can log.
model_modes: [mha, swa, dsv4]
workload:
  requests:
    - {prompt_len: 8, max_new_tokens: 4, count: 2}
fault:
  kind: double_free
  at_step: 6
  target: {group: full, request: running, slot: used}
expect:
  detected: true
  within_steps: 4
  violations:
    - {launch_tag: "HEAD_*", fail_reason: "chain_hash"}
per_mode:
  dsv4:
    fault: {at_step: null, after_warmup_steps: 1}
    expect: {violations: [{launch_tag: "HEAD_K_SWA", fail_reason: "chain_hash"}]}
"""

PHASES = """\
name: phases
description: A, then B that evicts it, then A again after a flush; B's second request aborted.
model_modes: [mha]
workload:
  requests:
    - {name: a, prompt_len: 16, max_new_tokens: 4, count: 2}
    - {name: b, prompt_len: 32, max_new_tokens: 8}
    - {name: b2, prompt_len: 32, max_new_tokens: 8}
  phases:
    - {send: [a]}
    - {send: [b, b2], concurrency: 2, aborts: [{request: b2, after_steps: 3}]}
    - {send: [a], flush_cache: true}
expect:
  detected: false
"""


def problems_of(write_scenario, text: str) -> list[str]:
    path = write_scenario(text)
    with pytest.raises(ScenarioValidationError) as caught:
        load_scenarios([path])
    return [problem.format().removeprefix(f"{path}:") for problem in caught.value.problems]


def test_a_scenario_runs_in_each_listed_mode_with_its_override_merged(load_text):
    loaded = load_text(EVERY_MODE)
    mha, dsv4 = loaded.in_mode("mha"), loaded.in_mode("dsv4")
    assert (mha.model_modes, dsv4.model_modes) == (["mha"], ["dsv4"])
    assert (mha.fault.at_step, mha.fault.after_warmup_steps) == (6, None)
    assert (dsv4.fault.at_step, dsv4.fault.after_warmup_steps) == (None, 1)
    assert dsv4.fault.target == mha.fault.target  # a mapping override merges key by key
    assert [v.launch_tag for v in dsv4.expect.violations] == ["HEAD_K_SWA"]  # a list replaces
    assert dsv4.expect.within_steps == 4


def test_modes_not_listed_say_why(load_text):
    declared = load_text(
        EVERY_MODE.replace("model_modes: [mha, swa, dsv4]", "model_modes: [mha, swa]")
        .replace(
            "  dsv4:\n    fault: {at_step: null, after_warmup_steps: 1}\n"
            '    expect: {violations: [{launch_tag: "HEAD_K_SWA", fail_reason: "chain_hash"}]}\n',
            "  swa: {}\n",
        )
        .replace("per_mode:", 'not_applicable:\n  dsv4: "the layout has no full group to free from"\nper_mode:')
    )
    assert declared.not_applicable == {"dsv4": "the layout has no full group to free from"}
    with pytest.raises(ValueError, match="does not run in mode dsv4: the layout has no full group"):
        declared.in_mode("dsv4")
    remap = load_text(
        EVERY_MODE.replace("model_modes: [mha, swa, dsv4]", "model_modes: [swa]")
        .replace("kind: double_free", "kind: remap_swa_slot")
        .replace("{group: full, request: running, slot: used}", "{group: swa, request: running, position: in_window}")
        .split("per_mode:")[0]
    )
    assert "remap_swa_slot" in remap.not_applicable["mha"]  # the contract's refusal, when the file says nothing


def test_an_old_single_mode_file_loads_as_before(load_text):
    loaded = load_text(EVERY_MODE.replace("model_modes: [mha, swa, dsv4]", "model_modes: [mha]").split("per_mode:")[0])
    assert list(loaded.modes) == ["mha"] and loaded.in_mode("mha") == loaded.scenario


def test_a_problem_in_one_mode_points_at_the_override_and_names_the_mode(write_scenario):
    text = EVERY_MODE.replace('launch_tag: "HEAD_K_SWA"', 'launch_tag: "HEAD_V_FULL"')
    (problem,) = problems_of(write_scenario, text)
    line = next(number for number, row in enumerate(text.splitlines(), 1) if "HEAD_V_FULL" in row)
    assert problem.startswith(f"{line}: per_mode.dsv4.expect.violations[0].launch_tag: ")
    assert "mode dsv4" in problem  # the message names it; others are prefixed 'in mode dsv4: '
    text = EVERY_MODE.replace("fault: {at_step: null, after_warmup_steps: 1}", "fault: {at_step: null}")
    (problem,) = problems_of(write_scenario, text)
    assert ": in mode dsv4: " in problem, problem


def test_an_override_for_a_mode_not_listed_and_a_listed_mode_called_not_applicable_are_refused(write_scenario):
    text = EVERY_MODE.replace("model_modes: [mha, swa, dsv4]", "model_modes: [mha, swa]").replace(
        "per_mode:", 'not_applicable:\n  swa: "why"\nper_mode:'
    )
    found = "\n".join(problems_of(write_scenario, text))
    assert "per_mode.dsv4: mode dsv4 is not in model_modes, so it never runs" in found
    assert "not_applicable.swa: mode swa is in model_modes" in found


def test_phases_plan_in_order_with_the_same_prompts_sent_again(load_text):
    scenario = load_text(PHASES).in_mode("mha")
    phases = plan_phases(scenario.workload, vocab_size=1000)
    assert [[request.key for request in phase.requests] for phase in phases] == [
        ["p1:a#0", "p1:a#1"],
        ["p2:b#0", "p2:b2#0"],
        ["p3:a#0", "p3:a#1"],
    ]
    assert [phase.flush_cache for phase in phases] == [False, False, True]
    assert phases[0].requests[0].input_ids == phases[2].requests[0].input_ids  # A again: a prefix hit
    (abort,) = phases[1].aborts
    assert (abort.key, abort.after_steps) == ("p2:b2#0", 3)
    assert phases[1].requests[1].rid is not None and phases[1].requests[0].rid is None  # only aborted ones
    assert phases[1].concurrency == 2 and phases[0].concurrency == 1


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        (("send: [a]}", "send: [c]}"), "workload.phases[0].send[0]", "'c' names no request"),
        (("request: b2,", "request: a,"), "workload.phases[1].aborts[0].request", "not sent by this phase"),
        (("after_steps: 3", "after_steps: 400"), "workload.phases[1].aborts[0].after_steps", "could never land"),
        (
            (
                "{name: b2, prompt_len: 32, max_new_tokens: 8}",
                "{name: b2, prompt_len: 32, max_new_tokens: 8, count: 2}",
            ),
            "workload.phases[1].aborts[0].request",
            "an abort names exactly one",
        ),
        (("    - {send: [a], flush_cache: true}\n", "    - {}\n"), "workload.phases[2]", "does nothing"),
        (("{name: b, prompt_len", "{name: a, prompt_len"), "workload.requests[1].name", "must be unique"),
    ],
)
def test_phase_problems_are_located(write_scenario, change, key, fragment):
    text = PHASES.replace(*change)
    assert text != PHASES
    found = problems_of(write_scenario, text)
    assert any(f" {key}: " in problem and fragment in problem for problem in found), found


def test_several_faults_are_named_and_their_windows_kept_apart(write_scenario, load_text):
    faults = textwrap.dedent("""\
        faults:
          first: {kind: double_free, at_step: 6, target: {group: full, request: running, slot: used}}
          second: {kind: corrupt_canary, at_step: 20, target: {group: full, request: running, slot: used}}
        """)
    text = EVERY_MODE.replace(EVERY_MODE[EVERY_MODE.index("fault:") : EVERY_MODE.index("expect:")], faults)
    text = text.split("per_mode:")[0].replace("model_modes: [mha, swa, dsv4]", "model_modes: [mha]")
    text = text.replace("max_new_tokens: 4, count: 2", "max_new_tokens: 40, count: 2")
    loaded = load_text(text)
    assert [name for name, _ in loaded.scenario.named_faults()] == ["first", "second"]
    overlapping = text.replace("at_step: 20", "at_step: 8")
    assert any(
        "faults.second.at_step: 8 falls in fault first's detection window (steps 6 to 10)" in problem
        for problem in problems_of(write_scenario, overlapping)
    )
    both = text.replace("faults:", "fault: {kind: none}\nfaults:")
    assert any("fault and faults are both set" in problem for problem in problems_of(write_scenario, both))


def test_docs_design_md_shows_a_valid_v2_example(load_text):
    design = (Path(__file__).resolve().parents[3] / "docs" / "DESIGN.md").read_text()
    section = design[design.index("### One scenario, every mode") :]
    example = section[section.index("```yaml\n") + len("```yaml\n") : section.index("```\n", section.index("```yaml"))]
    loaded = load_text(example)
    assert set(loaded.modes) == {"mha", "swa"} and set(loaded.not_applicable) == {"dsv4"}
    assert loaded.in_mode("swa").faults["second"].target.group == "swa"
    assert [len(phase.requests) for phase in plan_phases(loaded.scenario.workload, vocab_size=100)] == [2, 2, 2]


PREFIX_PARTS = """\
name: prefix-parts
description: Prompts sharing a prefix's first 22 tokens, diverging inside a page of 4.
model_modes: [mha]
workload:
  shared_prefixes: {d: 30}
  requests:
    - {name: whole, shared_prefix: d, prompt_len: 30, max_new_tokens: 4}
    - {name: part, shared_prefix: d, prefix_tokens: 22, prompt_len: 30, max_new_tokens: 4}
  phases: [{send: [whole]}, {send: [part]}]
expect:
  detected: false
"""


def test_a_request_can_start_with_part_of_a_shared_prefix(load_text, write_scenario):
    phases = plan_phases(load_text(PREFIX_PARTS).scenario.workload, vocab_size=1000)
    whole, part = phases[0].requests[0].input_ids, phases[1].requests[0].input_ids
    assert len(whole) == len(part) == 30
    assert part[:22] == whole[:22] and part[22:] != whole[22:]
    too_many = problems_of(write_scenario, PREFIX_PARTS.replace("prefix_tokens: 22", "prefix_tokens: 31"))
    assert any(
        "workload.requests[1].prefix_tokens: 31 is more than shared prefix 'd' has (30 tokens)" in p for p in too_many
    )
    no_prefix = problems_of(write_scenario, PREFIX_PARTS.replace("shared_prefix: d, prefix_tokens", "prefix_tokens"))
    assert any("prefix_tokens: takes part of a shared prefix: give shared_prefix too" in p for p in no_prefix)
