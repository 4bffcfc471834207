"""Why a run could not judge its scenario: each says what happened and carries the evidence."""

from __future__ import annotations


class RunnerError(Exception):
    """A run that ended without a verdict on its expectations (reported as a failure, never a pass)."""


class ServerStartError(RunnerError):
    """The server exited or never became healthy; the message ends with its log tail."""


class ServerCrashed(RunnerError):
    """The server exited while the workload was running; the message ends with its log tail."""


class EngineHttpError(RunnerError):
    """An endpoint the runner relies on answered with an error or a malformed body."""


class RunTimeout(RunnerError):
    """The run passed its wall-clock budget."""


class WorkloadDoesNotFit(RunnerError):
    """A request of the scenario is longer than the server's context; found before anything is sent."""
