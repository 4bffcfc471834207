"""Running a scenario against a server process: start, inject, drive, collect, stop."""

from harness.runner.errors import RunnerError
from harness.runner.scenario_run import RunOptions, engine_server, run_scenario
from harness.runner.server_command import DEFAULT_SERVER_COMMAND
from harness.runner.server_process import ServerProcess

__all__ = ["DEFAULT_SERVER_COMMAND", "RunOptions", "RunnerError", "ServerProcess", "engine_server", "run_scenario"]
