"""``python -m harness``: the kv-canary command line without installing the package."""

from harness.cli import main

main()
