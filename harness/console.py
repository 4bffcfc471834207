"""The ``kv-canary`` console script.

The script is installed with the runtime alone too (a distribution's scripts cannot depend on
its extras), into environments without the harness's dependencies: there it says what to
install instead of failing on an import.
"""

from __future__ import annotations

import importlib.util
import sys

EXIT_BAD_INPUT = 2
_HARNESS_IMPORTS = ("click", "pydantic", "requests", "tqdm", "yaml")


def main() -> None:
    missing = [name for name in _HARNESS_IMPORTS if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"kv-canary: the command line needs the harness extra ({', '.join(missing)} not installed); "
            "pip install 'kv-canary[harness,mock-server,report]'",
            file=sys.stderr,
        )
        sys.exit(EXIT_BAD_INPUT)
    # Imported only once its dependencies are known to be there (see the module docstring).
    from harness.cli import main as run_command_line

    run_command_line()
