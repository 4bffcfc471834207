"""``--server-command``: split as a shell would, and its program found, before any server is started."""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Sequence


class ServerCommandError(ValueError):
    """A server command that cannot start anything; the message says why and what to give instead."""


def split_server_command(text: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(text))
    except ValueError as error:
        raise ServerCommandError(
            f"--server-command {text!r}: {error}; it is split as a shell would, so quote as in a shell"
        ) from None
    check_server_program(argv)
    return argv


def check_server_program(argv: Sequence[str]) -> None:
    if not argv:
        raise ServerCommandError(
            "--server-command is empty; give the command that starts a server, e.g. 'python -m mock_models.server'"
        )
    if shutil.which(argv[0]) is None:
        raise ServerCommandError(
            f"--server-command: program {argv[0]!r} not found (not on PATH, or not an executable file)"
        )
