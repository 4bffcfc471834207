"""What happened to each scheduled fault: the entries ``GET /kv_canary/injections`` answers, and
the ``kv_canary_fault`` stderr line logged each time an entry changes status.

A fault with ``count: N`` has N entries (one per application), sharing its ``fault_id``. The
line's ``detail`` runs to the end of the line (it may hold spaces, never a line break)::

    kv_canary_fault fault_id=3 kind=double_free status=applied step=24 detail=freed full slot 187 ...
"""

from __future__ import annotations

import dataclasses
import logging
import re
import typing

from kv_canary_contract import INJECTION_STATUSES, InjectionStatus

_LINE = re.compile(
    r"kv_canary_fault fault_id=(?P<fault_id>\d+) kind=(?P<kind>[a-z_]+) "
    rf"status=(?P<status>{'|'.join(INJECTION_STATUSES)}) step=(?P<step>\d+|none) detail=(?P<detail>.*)$"
)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class FaultLogLine:
    fault_id: int
    kind: str
    status: InjectionStatus
    step: int | None  # the forward the fault preceded; None unless applied
    detail: str

    def format(self) -> str:
        detail = " ".join(self.detail.split())  # one line, whatever the detail held
        step = "none" if self.step is None else str(self.step)
        return (
            f"kv_canary_fault fault_id={self.fault_id} kind={self.kind} status={self.status} step={step} "
            f"detail={detail}"
        )

    @classmethod
    def parse(cls, line: str) -> FaultLogLine | None:
        match = _LINE.search(line)
        if match is None:
            return None
        step = None if match["step"] == "none" else int(match["step"])
        return cls(
            fault_id=int(match["fault_id"]),
            kind=match["kind"],
            status=typing.cast(InjectionStatus, match["status"]),  # the pattern admits only the statuses
            step=step,
            detail=match["detail"],
        )

    @classmethod
    def find_all(cls, text: str) -> list[FaultLogLine]:
        return [parsed for line in text.splitlines() if (parsed := cls.parse(line)) is not None]


@dataclasses.dataclass(kw_only=True, slots=True)
class InjectionEntry:
    fault_id: int
    kind: str
    status: InjectionStatus = "scheduled"
    step: int | None = None
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class InjectionLog:
    """Every entry in registration order; each status change is logged as one ``kv_canary_fault`` line."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self.entries: list[InjectionEntry] = []

    def schedule(self, fault_id: int, kind: str, detail: str) -> InjectionEntry:
        entry = InjectionEntry(fault_id=fault_id, kind=kind, detail=detail)
        self.entries.append(entry)
        self._log(entry)
        return entry

    def resolve(self, entry: InjectionEntry, status: InjectionStatus, *, step: int | None, detail: str) -> None:
        entry.status, entry.step, entry.detail = status, step, detail
        self._log(entry)

    def to_json(self) -> list[dict[str, object]]:
        return [entry.to_json() for entry in self.entries]

    def _log(self, entry: InjectionEntry) -> None:
        line = FaultLogLine(
            fault_id=entry.fault_id, kind=entry.kind, status=entry.status, step=entry.step, detail=entry.detail
        )
        level = logging.WARNING if entry.status == "no_target" else logging.INFO
        self._logger.log(level, "%s", line.format())
