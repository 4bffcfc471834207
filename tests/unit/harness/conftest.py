"""Fixtures for the harness unit tests: scenario files written to tmp_path and loaded."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.scenario import LoadedScenario, load_scenario_file


@pytest.fixture
def write_scenario(tmp_path: Path) -> Callable[..., Path]:
    def write(text: str, name: str = "scenario.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def load_text(write_scenario: Callable[..., Path]) -> Callable[[str], LoadedScenario]:
    def load(text: str) -> LoadedScenario:
        return load_scenario_file(write_scenario(text))

    return load
