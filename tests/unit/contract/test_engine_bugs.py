"""The engine bug modes' table and the one rule that judges a ``bugs`` list: ``kv-canary validate``
and the mock server refuse the same lists, for the same reasons."""

from __future__ import annotations

import re
import textwrap

import pytest
from click.testing import CliRunner

from harness.cli import cli
from kv_canary_contract import (
    ENGINE_BUGS,
    MODEL_MODES,
    EngineSettings,
    engine_bug,
    engine_setting_problems,
    model_mode,
)
from mock_models.config import EngineConfig, EngineConfigError, MemBackend, ModelMode
from mock_models.engine.bugs import EngineBugs
from mock_models.server.flags import EngineSettingsError, build_configs

KEBAB = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
REPORT = re.compile(r"(sgl-project/sglang|vllm-project/vllm)#\d+")


@pytest.mark.parametrize("bug", list(ENGINE_BUGS.values()), ids=lambda bug: bug.name)
def test_every_entry_names_its_report_modes_and_needs(bug):
    assert KEBAB.fullmatch(bug.name)
    assert bug.reports and all(REPORT.fullmatch(report) for report in bug.reports)
    assert bug.mechanism and bug.trigger
    assert bug.modes and set(bug.modes) <= set(MODEL_MODES)
    assert all(need.setting in EngineSettings.model_fields for need in bug.needs)


def problems(bugs: list[str], mode: str = "mha", **settings: object) -> list[str]:
    return [
        f"{'.'.join(map(str, problem.loc))}: {problem.message}"
        for problem in engine_setting_problems({"bugs": bugs, **settings}, mode=model_mode(mode))
    ]


def test_a_bug_list_is_judged_name_by_name_at_its_index():
    assert problems(["eviction-leaves-phantom-prefix"]) == []
    assert problems(["no-such-bug"]) == ["bugs.0: unknown bug 'no-such-bug'; known bugs: " + ", ".join(ENGINE_BUGS)]
    assert problems(["eviction-leaves-phantom-prefix", "eviction-leaves-phantom-prefix"]) == [
        "bugs.1: bug eviction-leaves-phantom-prefix is listed twice"
    ]
    assert problems(["unfinished-cache-drops-swa-evicted-len"], mode="mha") == [
        "bugs.0: bug unfinished-cache-drops-swa-evicted-len does not apply to mode mha; it applies to modes swa, dsv4"
    ]
    assert problems(["unfinished-cache-drops-swa-evicted-len"], mode="dsv4") == []


def test_a_bug_needs_its_settings():
    (paged,) = problems(["paged-match-aliases-boundary-page"])
    assert paged.startswith("bugs.0: bug paged-match-aliases-boundary-page needs page_size > 1") and "is 1" in paged
    assert problems(["paged-match-aliases-boundary-page"], page_size=4, max_total_tokens=256) == []
    (overlap,) = problems(["overlap-frees-in-flight-page"])
    assert "needs overlap_schedule: true" in overlap and "overlap_schedule is not set" in overlap
    assert "overlap_schedule is false" in problems(["overlap-frees-in-flight-page"], overlap_schedule=False)[0]
    assert problems(["overlap-frees-in-flight-page"], overlap_schedule=True) == []


def test_the_server_and_the_engine_refuse_what_the_contract_refuses():
    with pytest.raises(EngineSettingsError, match=r"bugs: bug paged-match-aliases-boundary-page needs page_size > 1"):
        build_configs(
            model_mode="swa", device="cpu", mem_backend="mock", settings={"bugs": ["paged-match-aliases-boundary-page"]}
        )
    with pytest.raises(EngineConfigError, match=r"EngineConfig.bugs.0: unknown bug 'nope'"):
        EngineConfig(bugs=("nope",))
    with pytest.raises(EngineConfigError, match=r"bug modes re-enact mechanisms in the mock engine's own memory code"):
        EngineConfig(model_mode=ModelMode.MHA, mem_backend=MemBackend.SGLANG, bugs=("eviction-leaves-phantom-prefix",))
    engine, _ = build_configs(
        model_mode="mha", device="cpu", mem_backend="mock", settings={"bugs": ["eviction-leaves-phantom-prefix"]}
    )
    assert engine.bugs == ("eviction-leaves-phantom-prefix",)


def test_an_engine_asks_for_bugs_by_their_table_names():
    bugs = EngineBugs(["eviction-leaves-phantom-prefix"])
    assert bugs.on("eviction-leaves-phantom-prefix") and not bugs.on("paged-match-aliases-boundary-page")
    with pytest.raises(KeyError, match="known bugs"):
        bugs.on("eviction-leaves-phantom-prefixes")  # a misspelt mechanism fails whether or not it is on
    with pytest.raises(KeyError, match="'nope' is not an engine bug"):
        EngineBugs(["nope"])
    assert engine_bug("eviction-leaves-phantom-prefix").reports == ("vllm-project/vllm#50630",)


def test_validate_points_at_the_bugs_line_and_exits_2(tmp_path):
    scenario = tmp_path / "bugged.yaml"
    scenario.write_text(
        textwrap.dedent(
            """\
            name: bugged
            description: A scenario that turns bugs on.
            model_modes: [mha, swa]
            engine:
              overlap_schedule: true
              bugs:
                - overlap-frees-in-flight-page
                - unfinished-cache-drops-swa-evicted-len
                - no-such-bug
            workload:
              requests:
                - {prompt_len: 8, max_new_tokens: 4}
            expect:
              detected: false
            """
        )
    )
    result = CliRunner().invoke(cli, ["validate", str(scenario)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert f"{scenario}:8: engine.bugs[1]: bug unfinished-cache-drops-swa-evicted-len does not apply to mode mha; " in (
        result.output
    )
    assert any(line.startswith(f"{scenario}:9: engine.bugs[2]: unknown bug 'no-such-bug'") for line in lines)
    assert "bugs[0]" not in result.output  # needs overlap_schedule, which is on
