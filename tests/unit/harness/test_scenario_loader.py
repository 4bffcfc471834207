"""Scenario files: the design example loads as is; every bad input names its file, line and key."""

from __future__ import annotations

import re
import textwrap

import pytest

from harness.scenario import ScenarioValidationError, load_scenario_file, load_scenarios
from harness.scenario.loader import MAX_SCENARIO_BYTES
from tests.unit.harness.samples import BASELINE_MHA, DESIGN_EXAMPLE, DETECT_EVICTION


def test_the_design_example_is_accepted():
    loaded = load_scenario_file(DESIGN_EXAMPLE)
    scenario = loaded.scenario
    assert scenario.name == "evict-locked-radix-node"
    assert scenario.model_modes == ["mha", "swa", "dsv4"]
    assert scenario.engine.sweep_interval == 8
    assert scenario.workload.shared_prefixes == {"sys": 96}
    assert scenario.fault.request_body() == {
        "kind": "evict_radix_node",
        "at_step": 20,
        "count": 1,
        "target": {"group": "full", "request": "running", "node": "deepest_locked"},
    }
    assert scenario.expect.swa_divergence.comparisons() == {
        "swa_out_of_window_tokens": ">=1",
        "swa_full_idx_divergence": ">=1",
    }


def test_docs_design_md_shows_the_design_example(load_text):
    text = (DESIGN_EXAMPLE.parents[4] / "docs" / "DESIGN.md").read_text()
    block = text.split("## Scenario files", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    documented, frozen = load_text(block).scenario, load_scenario_file(DESIGN_EXAMPLE).scenario
    assert documented.model_dump(exclude={"description"}) == frozen.model_dump(exclude={"description"})


def test_engine_defaults_are_documented_values(load_text):
    engine = load_text(BASELINE_MHA).scenario.engine
    assert (
        engine.page_size,
        engine.max_total_tokens,
        engine.swa_window,
        engine.sweep_interval,
        engine.real_kv,
        engine.canary_mode,
    ) == (1, 4096, 64, 0, "partial", "log")
    assert engine.max_running_requests is None  # not passed: the server's default applies


# Each case: a scenario whose bad line ends with '# <-', the key the error must name, and a
# fragment of its message.
BAD_SCENARIOS = {
    "unknown key": (
        """\
        name: a
        description: x
        model_modes: [mha]
        engine:
          sweep_intervl: 8  # <-
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        expect: {detected: false}
        """,
        "engine.sweep_intervl",
        "allowed here: page_size",
    ),
    "wrong type": (
        """\
        name: a
        description: x
        model_modes: [mha]
        engine:
          page_size: "8"  # <-
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        expect: {detected: false}
        """,
        "engine.page_size",
        "valid integer",
    ),
    "unknown fault kind": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        fault:
          kind: corrupt_everything  # <-
          at_step: 3
        expect: {detected: true, within_steps: 4}
        """,
        "fault.kind",
        "'corrupt_everything'",
    ),
    "mode outside mha|swa|dsv4": (
        """\
        name: a
        description: x
        model_modes:
          - mha
          - gqa  # <-
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        expect: {detected: false}
        """,
        "model_modes[1]",
        "'mha', 'swa' or 'dsv4'",
    ),
    "bad comparison": (
        """\
        name: a
        description: x
        model_modes: [swa]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        expect:
          detected: false
          swa_divergence:
            swa_out_of_window_tokens: "at least one"  # <-
        """,
        "expect.swa_divergence.swa_out_of_window_tokens",
        "should match pattern",
    ),
    "not kebab-case": (
        """\
        name: Evict_Node  # <-
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        expect: {detected: false}
        """,
        "name",
        "'Evict_Node'",
    ),
    "detected false with violation patterns": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        expect:
          detected: false
          violations:  # <-
            - {launch_tag: "HEAD_*"}
        """,
        "expect.violations",
        "need detected: true",
    ),
    "detected false with a latency bound": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        expect:
          detected: false
          within_steps: 8  # <-
        """,
        "expect.within_steps",
        "needs detected: true",
    ),
    "a fault but detected missing": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        fault: {kind: double_free, at_step: 5}
        expect:  # <-
          within_steps: 8
        """,
        "expect.detected",
        "required when a fault is injected",
    ),
    "detected true without a fault": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        expect:
          detected: true  # <-
          within_steps: 8
        """,
        "expect.detected",
        "nothing is injected",
    ),
    "detected true without a bound": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        fault: {kind: double_free, at_step: 5}
        expect:  # <-
          detected: true
        """,
        "expect.within_steps",
        "required with detected: true",
    ),
    "swa_divergence without the swa mode": (
        """\
        name: a
        description: x
        model_modes: [mha, dsv4]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        expect:
          detected: false
          swa_divergence: {verify_swa_lt_verify_full: true}  # <-
        """,
        "expect.swa_divergence",
        "modes with FULL and SWA groups",
    ),
    "swa target in a mode without swa": (
        """\
        name: a
        description: x
        model_modes: [mha, swa]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        fault:
          kind: corrupt_kv_bytes
          at_step: 5
          target:
            group: swa  # <-
        expect: {detected: true, within_steps: 4}
        """,
        "fault.target.group",
        "mode mha has no SWA pool",
    ),
    "remap_swa_slot in mha": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        fault:
          kind: remap_swa_slot  # <-
          at_step: 5
        expect: {detected: true, within_steps: 4}
        """,
        "fault.kind",
        "needs an SWA pool",
    ),
    "launch tag pattern matching no tag": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        fault: {kind: double_free, at_step: 5}
        expect:
          detected: true
          within_steps: 4
          violations:
            - launch_tag: "HEAD_*|TIAL_*"  # <-
        """,
        "expect.violations[0].launch_tag",
        "'TIAL_*' matches no launch tag",
    ),
    "launch tag the mode never logs": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        fault: {kind: double_free, at_step: 5}
        expect:
          detected: true
          within_steps: 4
          violations:
            - launch_tag: "*_SWA"  # <-
        """,
        "expect.violations[0].launch_tag",
        "matches no tag that mode mha logs",
    ),
    "sweep tags with the sweep off": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        fault: {kind: corrupt_kv_bytes, at_step: 5, target: {slot: cached_unused}}
        expect:
          detected: true
          within_steps: 4
          violations:
            - launch_tag: "SWEEP_*"  # <-
        """,
        "expect.violations[0].launch_tag",
        "engine.sweep_interval is 0",
    ),
    "unknown fail reason": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        fault: {kind: double_free, at_step: 5}
        expect:
          detected: true
          within_steps: 4
          violations:
            - {launch_tag: "HEAD_*", fail_reason: "chain_hash|checksum"}  # <-
        """,
        "expect.violations[0].fail_reason",
        "'checksum' matches no fail reason",
    ),
    "two triggers": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        fault:
          kind: double_free
          at_step: 5
          probability: 0.5  # <-
          seed: 1
        expect: {detected: true, within_steps: 4}
        """,
        "fault.probability",
        "at_step, probability are all set; keep one trigger",
    ),
    "undefined shared prefix": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload:
          shared_prefixes: {sys: 4}
          requests:
            - shared_prefix: system  # <-
              prompt_len: 8
              max_new_tokens: 4
        expect: {detected: false}
        """,
        "workload.requests[0].shared_prefix",
        "not in workload.shared_prefixes (sys)",
    ),
    "duplicate key": (
        """\
        name: a
        description: x
        model_modes: [mha]
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}
        expect: {detected: false}
        name: b  # <-
        """,
        "name",
        "duplicate key",
    ),
    "malformed YAML": (
        """\
        name: a
        description: x
        model_modes: [mha
        workload: {requests: [{prompt_len: 8, max_new_tokens: 4}]}  # <-
        expect: {detected: false}
        """,
        "(document)",
        "malformed YAML",
    ),
}


@pytest.mark.parametrize("case", BAD_SCENARIOS)
def test_bad_input_names_file_line_and_key(case, write_scenario):
    text, key, fragment = BAD_SCENARIOS[case]
    path = write_scenario(text)
    expected_line = next(
        number for number, line in enumerate(textwrap.dedent(text).splitlines(), 1) if line.endswith("# <-")
    )
    with pytest.raises(ScenarioValidationError) as caught:
        load_scenarios([path])
    formatted = [problem.format() for problem in caught.value.problems]
    assert f"{path}:{expected_line}: {key}: " in "\n".join(formatted), formatted
    assert any(fragment in line for line in formatted), formatted


def test_every_problem_of_every_file_is_collected(write_scenario):
    first = write_scenario(BAD_SCENARIOS["unknown key"][0], "first.yaml")
    second = write_scenario(BAD_SCENARIOS["launch tag pattern matching no tag"][0], "second.yaml")
    third = write_scenario(BAD_SCENARIOS["two triggers"][0] + "engine: {page_size: 0}\n", "third.yaml")
    with pytest.raises(ScenarioValidationError) as caught:
        load_scenarios([first, second, third])
    assert {problem.path for problem in caught.value.problems} == {first, second, third}


def test_an_empty_file_says_what_a_scenario_needs(write_scenario):
    path = write_scenario("# nothing yet\n")
    with pytest.raises(ScenarioValidationError, match=rf"{re.escape(str(path))}:1: \(document\): is empty"):
        load_scenarios([path])


def test_a_file_that_is_not_a_mapping_is_refused(write_scenario):
    with pytest.raises(ScenarioValidationError, match="is a YAML list, not a mapping"):
        load_scenarios([write_scenario("- name: a\n")])


def test_a_huge_file_is_refused_before_parsing(write_scenario):
    path = write_scenario(BASELINE_MHA + "#" * MAX_SCENARIO_BYTES + "\n")
    with pytest.raises(ScenarioValidationError, match=f"capped at {MAX_SCENARIO_BYTES} bytes"):
        load_scenarios([path])


def test_alias_bombs_are_refused(write_scenario):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(12)
    )
    with pytest.raises(ScenarioValidationError, match="alias expansion"):
        load_scenarios([write_scenario(bomb)])


def test_duplicate_names_across_files_point_at_both(write_scenario):
    first = write_scenario(BASELINE_MHA, "a.yaml")
    second = write_scenario(BASELINE_MHA, "b/a.yaml")
    with pytest.raises(ScenarioValidationError) as caught:
        load_scenarios([first.parent])
    (problem,) = caught.value.problems
    assert problem.format() == (
        f"{second}:1: name: 'baseline-mha' is already the name of {first}:1; names must be unique"
    )


def test_missing_paths_are_reported(tmp_path):
    with pytest.raises(ScenarioValidationError, match="no such file or directory"):
        load_scenarios([tmp_path / "missing.yaml"])


def test_directories_expand_to_their_yaml_files(write_scenario):
    write_scenario(BASELINE_MHA, "lib/baseline.yaml")
    write_scenario(DETECT_EVICTION, "lib/deeper/eviction.yml")
    write_scenario("not: a scenario", "lib/notes.txt")
    loaded = load_scenarios([write_scenario(BASELINE_MHA, "lib/baseline.yaml").parent])
    assert [item.scenario.name for item in loaded] == ["baseline-mha", "detect-eviction"]
