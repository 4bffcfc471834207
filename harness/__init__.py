"""The end-to-end driver: scenarios, runner, expectation checker, report, CLI and pytest plugin."""
