"""Hostile scenario files: every one is a ScenarioValidationError naming file, line and key, never a crash.

`kv-canary validate` turns those into exit status 2 and one `file:line: key: message` line each;
the fuzz tests throw random text, random documents and mutations of the library at the loader.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cli import EXIT_BAD_INPUT, cli
from harness.runner.server_command import server_argv
from harness.scenario.loader import MAX_SCENARIO_BYTES, load_scenario_file, load_scenario_text, load_scenarios
from harness.scenario.problems import ScenarioValidationError
from kv_canary_contract import MAX_TOKENS
from tests.reliability.conftest import FUZZ_SCALE

REPO_ROOT = Path(__file__).resolve().parents[2]
LIBRARY = sorted((REPO_ROOT / "scenarios").glob("*.yaml"))
VALID = """\
name: tiny
description: A clean run.
model_modes: [mha]
engine: {page_size: 1, max_total_tokens: 512}
workload:
  requests:
    - {prompt_len: 8, max_new_tokens: 4}
expect:
  detected: false
"""


def with_engine(line: str) -> str:
    return VALID.replace("engine: {page_size: 1, max_total_tokens: 512}", line)


# (document, key the first problem names, a fragment of its message)
HOSTILE_DOCUMENTS = {
    "malformed": ("name: [unclosed\n", "(document)", "malformed YAML"),
    "tab indent": ("name:\tx\n", "(document)", "malformed YAML"),
    "nul character": ("name: a\x00b\n", "(document)", "U+0000"),
    "control character": (VALID + "\x07", "(document)", "not allowed in YAML"),
    "deeply nested list": ("[" * 5000 + "]" * 5000, "(document)", "nested too deeply"),
    "deeply nested block": ("".join("  " * i + "a:\n" for i in range(1500)), "(document)", "nested too deeply"),
    "alias bomb": (
        "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",
        "(document)",
        "YAML nodes",
    ),
    "recursive alias": ("a: &a [*a]\n", "(document)", "nested too deeply"),
    "python tag": ("!!python/object/apply:os.system ['true']\n", "(document)", "constructor"),
    "two documents": (VALID + "---\n" + VALID, "(document)", "another document"),
    "empty": ("", "(document)", "is empty"),
    "a list": ("- 1\n- 2\n", "(document)", "not a mapping"),
    "unknown key": (VALID + "colour: blue\n", "colour", "unknown key"),
    "misspelt nested key": (with_engine("engine: {page_sise: 1}"), "engine.page_sise", "allowed here"),
    "wrong type": (with_engine("engine: {page_size: '4'}"), "engine.page_size", "valid integer"),
    "float for int": (with_engine("engine: {page_size: 1.5}"), "engine.page_size", "valid integer"),
    "bool for int": (with_engine("engine: {page_size: true}"), "engine.page_size", "valid integer"),
    "negative": (with_engine("engine: {page_size: -4}"), "engine.page_size", "greater than or equal to 1"),
    "zero pool": (with_engine("engine: {max_total_tokens: 0}"), "engine.max_total_tokens", "greater than"),
    "absurd pool": (
        with_engine("engine: {max_total_tokens: 1000000000000}"),
        "engine.max_total_tokens",
        "less than or equal to",
    ),
    "absurd page": (with_engine("engine: {page_size: 1048576}"), "engine.page_size", "less than or equal"),
    "infinite interval": (with_engine("engine: {sweep_interval: .inf}"), "engine.sweep_interval", "valid integer"),
    "not a number": (with_engine("engine: {sweep_interval: .nan}"), "engine.sweep_interval", "valid integer"),
    "huge seed": (with_engine("engine: {seed: 100000000000000000000000000}"), "engine.seed", "less than"),
    "unknown mode": (VALID.replace("[mha]", "[mha, gqa]"), "model_modes[1]", "mha"),
    "unknown fault kind": (VALID + "fault: {kind: flip_everything, at_step: 1}\n", "fault.kind", "corrupt_kv_bytes"),
    "uncheckable expectation": (
        VALID.replace("detected: false", "detected: true"),
        "expect.detected",
        "nothing is injected",
    ),
    "absurd request count": (
        VALID.replace("max_new_tokens: 4}", "max_new_tokens: 4, count: 10000000000}"),
        "workload.requests[0].count",
        "less than or equal",
    ),
    "too many requests in all": (
        VALID.replace(
            "    - {prompt_len: 8, max_new_tokens: 4}\n", "    - {prompt_len: 8, max_new_tokens: 4, count: 60000}\n" * 2
        ),
        "workload.requests",
        "capped at",
    ),
    "absurd shared prefix": (
        VALID.replace("  requests:", f"  shared_prefixes: {{p: {MAX_TOKENS + 1}}}\n  requests:"),
        "workload.shared_prefixes.p",
        "less than or equal",
    ),
    "non-string key": (VALID + "1: 2\n", "[1]", "Keys should be strings"),
    "unhashable key": ("? [a, b]\n: 1\n", "(document)", "unhashable"),
    "duplicate key": (VALID + "name: again\n", "name", "duplicate key"),
}


@pytest.mark.parametrize("name", HOSTILE_DOCUMENTS)
def test_a_hostile_document_is_a_validation_error_naming_the_key(name):
    document, key, fragment = HOSTILE_DOCUMENTS[name]
    with pytest.raises(ScenarioValidationError) as raised:
        load_scenario_text(document, Path("hostile.yaml"))
    problems = raised.value.problems
    assert any(problem.key == key and fragment in problem.message for problem in problems), [
        problem.format() for problem in problems
    ]
    assert all(problem.format().startswith("hostile.yaml") for problem in problems)
    if name == "non-string key":
        assert problems[0].line == 10  # the key's own line, not the document's first


def test_unreadable_oversized_undecodable_and_special_files_are_reported_not_raised(tmp_path, monkeypatch):
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * MAX_SCENARIO_BYTES)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    locked = tmp_path / "locked.yaml"
    locked.write_text(VALID)
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opening it to read would block for ever
    real_read_text = Path.read_text

    def read_text(path: Path, *args, **kwargs) -> str:
        if path == locked:
            raise PermissionError(13, "Permission denied")
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(ScenarioValidationError) as raised:
        load_scenarios([huge, latin, locked, fifo, tmp_path / "missing.yaml"])
    messages = {problem.path.name: problem.message for problem in raised.value.problems}
    assert "capped at" in messages["huge.yaml"] and "not UTF-8" in messages["latin.yaml"]
    assert messages["locked.yaml"] == "cannot be read: Permission denied"
    assert messages["pipe.yaml"] == "is not a regular file or a directory"
    assert messages["missing.yaml"] == "no such file or directory"


def test_validate_exits_2_with_one_line_per_problem_and_no_traceback(tmp_path):
    for name, (document, _, _) in HOSTILE_DOCUMENTS.items():
        (tmp_path / (name.replace(" ", "-") + ".yaml")).write_text(document)
    result = CliRunner().invoke(cli, ["validate", str(tmp_path)])
    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert "problem(s); nothing was run." in result.output
    for name in HOSTILE_DOCUMENTS:
        assert str(tmp_path / (name.replace(" ", "-") + ".yaml")) in result.output, name


def test_the_installed_command_exits_2_on_hostile_files(tmp_path):
    """Through a real process, as CI and users run it."""
    (tmp_path / "deep.yaml").write_text("[" * 5000 + "]" * 5000)
    (tmp_path / "nul.yaml").write_text("name: \x00\n")
    (tmp_path / "absurd.yaml").write_text(with_engine("engine: {max_total_tokens: 99999999999}"))
    done = subprocess.run(
        [sys.executable, "-m", "harness", "validate", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == EXIT_BAD_INPUT, done.stderr
    assert "Traceback" not in done.stderr and "3 problem(s)" in done.stderr


# -- fuzz -----------------------------------------------------------------------------------------------

HOSTILE_SCALARS: st.SearchStrategy[object] = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        -1,
        1,
        2**31,
        2**63,
        2**70,
        -(2**70),
        0.5,
        1e308,
        -1e-9,
        math.inf,
        -math.inf,
        math.nan,
        "",
        " ",
        "x" * 300,
        "HEAD_*|",
        "*",
        ">=",
        "==-1",
        "mha",
        "none",
        "kind",
        "\u202e",
        "0x10",
        "1e3",
        "~",
        "null",
        [],
        {},
    ]
)
SCENARIO_WORDS = st.sampled_from(
    [
        "name",
        "description",
        "model_modes",
        "engine",
        "workload",
        "fault",
        "expect",
        "page_size",
        "max_total_tokens",
        "swa_window",
        "sweep_interval",
        "real_kv",
        "requests",
        "prompt_len",
        "max_new_tokens",
        "count",
        "shared_prefix",
        "shared_prefixes",
        "kind",
        "at_step",
        "target",
        "detected",
        "within_steps",
        "violations",
        "launch_tag",
        "fail_reason",
        "swa_divergence",
        "seed",
    ]
)
YAML_VALUES = st.recursive(
    HOSTILE_SCALARS | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(SCENARIO_WORDS | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


def loads_or_rejects(text: str) -> None:
    """The property: a ScenarioValidationError, or a scenario the runner can build a server for."""
    try:
        loaded = load_scenario_text(text, Path("fuzz.yaml"))
    except ScenarioValidationError as error:
        assert error.problems and all(problem.format().startswith("fuzz.yaml") for problem in error.problems)
        return
    scenario = loaded.scenario
    for mode in scenario.model_modes:
        argv = server_argv(
            server_command=("serve",),
            engine=scenario.engine,
            mode=mode,
            port=1,
            device="cpu",
            swa_divergence_interval=None,
        )
        assert all(isinstance(arg, str) for arg in argv)


@settings(max_examples=settings.default.max_examples * FUZZ_SCALE)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_random_text_is_loaded_or_rejected_never_raised(text):
    loads_or_rejects(text)


@settings(max_examples=settings.default.max_examples * FUZZ_SCALE)
@given(st.dictionaries(SCENARIO_WORDS, YAML_VALUES, max_size=8))
def test_random_documents_are_loaded_or_rejected_never_raised(document):
    loads_or_rejects(yaml.safe_dump(document, allow_unicode=True))


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def mutated_library_scenarios(draw: st.DrawFn) -> dict:
    document = copy.deepcopy(yaml.safe_load(draw(st.sampled_from(LIBRARY)).read_text()))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(document)))
        if not path:
            continue
        *parents, last = path
        container = document
        for part in parents:
            container = container[part]
        action = draw(st.sampled_from(["replace", "delete", "add", "rename"]))
        if action == "replace":
            container[last] = draw(YAML_VALUES)
        elif action == "delete":
            del container[last]
        elif action == "add" and isinstance(container, dict):
            container[draw(SCENARIO_WORDS | st.text(min_size=1, max_size=8))] = draw(YAML_VALUES)
        elif action == "rename" and isinstance(container, dict):
            container[str(last) + draw(st.sampled_from(["s", "_", "X"]))] = container.pop(last)
    return document


@settings(max_examples=settings.default.max_examples * FUZZ_SCALE)
@given(mutated_library_scenarios())
def test_mutations_of_library_scenarios_are_loaded_or_rejected_never_raised(document):
    loads_or_rejects(yaml.safe_dump(document, allow_unicode=True))


@settings(max_examples=settings.default.max_examples * FUZZ_SCALE)
@given(
    st.sampled_from(LIBRARY),
    st.lists(
        st.tuples(
            st.integers(0, 4000),
            st.sampled_from(
                list(":-[]{}&*!|>%@`'\"#,?\t\n ") + ["\x00", "\ufeff", "\u2028", "  ", "\n- ", ": &a", " *a", "!!str "]
            ),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_byte_edits_of_library_files_are_loaded_or_rejected_never_raised(path, edits):
    text = path.read_text()
    for wanted_offset, insert in edits:
        offset = min(wanted_offset, len(text))
        text = text[:offset] + insert + text[offset + (len(insert) == 1) :]
    loads_or_rejects(text)


def test_the_library_itself_loads():
    assert LIBRARY and all(load_scenario_file(path).scenario.name == path.stem for path in LIBRARY)
