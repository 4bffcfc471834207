"""Every error kv_canary raises for its user derives from ``KvCanaryError``.

An engine can catch ``KvCanaryError`` around the canary and know it caught the canary's own
verdicts and refusals, nothing else. Each class also derives from the built-in error it always
was (``ValueError`` for a bad setting, ``RuntimeError`` for a verdict), so older handlers keep
catching it.
"""

from __future__ import annotations

from collections.abc import Sequence

from kv_canary.log_lines.violation_record import ViolationRecord


class KvCanaryError(Exception):
    """The root of every error kv_canary raises for its user."""


class CanaryConfigError(KvCanaryError, ValueError):
    """A configuration value that cannot be used; the message names the setting."""


class UnsupportedPoolError(KvCanaryError, TypeError):
    """No pool adapter knows the KV pool's class; the message lists the supported ones."""


class PoolLayoutError(KvCanaryError, ValueError):
    """The KV pool cannot be guarded as it is now (buffers not allocated yet, no sliding window
    given, a layout the real-KV hash cannot read); the message says what to change."""


class UnsupportedForwardModeError(KvCanaryError, RuntimeError):
    """A forward the canary cannot plan (speculative verify, draft extend, dLLM, split prefill)."""


class KvCanaryViolationError(KvCanaryError, RuntimeError):
    """Raised in mode ``raise``: ``records`` are the violations that triggered it, ``lines`` their log lines."""

    def __init__(self, records: Sequence[ViolationRecord]) -> None:
        self.records = tuple(records)
        super().__init__(f"kv_canary detected {len(self.records)} KV-cache violation(s):\n" + "\n".join(self.lines))

    @property
    def lines(self) -> list[str]:
        return [record.format() for record in self.records]


class KvCanaryHealthError(KvCanaryError, RuntimeError):
    """A launch tag's kernel-run counter stalled; ``stalled_tags`` names them."""

    def __init__(self, message: str, stalled_tags: tuple[str, ...]) -> None:
        super().__init__(message)
        self.stalled_tags = stalled_tags
