"""Scenario files: the pydantic schema, the checkability rules and the loader that locates every problem."""

from harness.scenario.loader import LoadedScenario, expand_scenario_paths, load_scenario_file, load_scenarios
from harness.scenario.model import FAULT_KINDS, MODEL_MODES, Scenario
from harness.scenario.problems import ScenarioProblem, ScenarioValidationError

__all__ = [
    "FAULT_KINDS",
    "MODEL_MODES",
    "LoadedScenario",
    "Scenario",
    "ScenarioProblem",
    "ScenarioValidationError",
    "expand_scenario_paths",
    "load_scenario_file",
    "load_scenarios",
]
