"""Drain the violation ring one step late and turn its rows into log lines (or an error).

Every row becomes a ``ViolationRecord`` (``records``, the HTTP endpoints' source). The log gets, per
interval of ``violation_repeat_interval`` forwards, the first violation of each (slot, launch
tag, fail reasons) in full; later ones of the same key are counted, and at the end of the
interval a ``kv_canary violation_repeats`` line says how many, so a corrupted prefix read by
thousands of requests cannot flood the log. A key is reported in full again in the next
interval, so a fault that persists stays visible. In mode ``raise`` every violation is logged
and raised, as before.
"""

from __future__ import annotations

import collections
import dataclasses
import logging

import torch

from kv_canary.config import CanaryMode
from kv_canary.device_state import CanaryDeviceState, RingField
from kv_canary.errors import KvCanaryViolationError
from kv_canary.launch_tags import FailReason, LaunchTag
from kv_canary.log_lines import RepeatedViolation, ViolationRecord, ViolationRepeatsLog
from kv_canary.observers.delayed_transfer import DelayedDeviceHostHandler, DeviceSnapshot

_TOP_REPEATED = 5  # keys named on a repeats line


@dataclasses.dataclass(slots=True)
class _Repeats:
    """Violations held back from the log during the current interval."""

    counts: collections.Counter[tuple[int, str, tuple[str, ...]]] = dataclasses.field(
        default_factory=collections.Counter
    )
    first_step: int = 0
    last_step: int = 0


class ViolationReporter:
    def __init__(
        self,
        *,
        state: CanaryDeviceState,
        mode: CanaryMode,
        logger: logging.Logger,
        handler: DelayedDeviceHostHandler,
        repeat_interval: int = 0,
        rank: int | None = None,
    ) -> None:
        self._state = state
        self._mode = mode
        self._logger = logger
        self._handler = handler
        self._rank = rank  # named on every line when the engine runs several ranks
        self._repeat_interval = 0 if mode is CanaryMode.RAISE else repeat_interval  # 0: log every violation
        self._reported_upto = 0  # write index up to which rows have been read
        self._plan_overflow_seen = 0
        self._logged_keys: set[tuple[int, str, tuple[str, ...]]] = set()
        self._repeats = _Repeats()
        self.records: list[ViolationRecord] = []
        self.dropped_rows = 0
        self.repeats_suppressed = 0  # violations counted but not logged again, over the whole run

    def step(self, forward_count: int) -> None:
        try:
            self._handler.step(compute_on_device=self._compute_on_device, postprocess_on_host=self._postprocess_on_host)
        finally:
            if self._repeat_interval and forward_count % self._repeat_interval == 0:
                self._end_interval()

    def flush(self) -> None:
        """Report what was staged, then the ring as it is now, even if the first report raised."""
        try:
            self._handler.flush(self._postprocess_on_host)
        finally:
            self._handler.step(compute_on_device=self._compute_on_device, postprocess_on_host=self._postprocess_on_host)
            self._handler.flush(self._postprocess_on_host)
            self._log_repeats()

    def _compute_on_device(self) -> tuple[DeviceSnapshot, None]:
        return {
            "rows": self._state.ring.rows,
            "write_index": self._state.ring.write_index,
            "plan_overflow": self._state.plan_overflow,
        }, None

    def _postprocess_on_host(self, snapshot: DeviceSnapshot, _context: None) -> None:
        self._report_plan_overflow(int(snapshot["plan_overflow"][0]))
        write_index = int(snapshot["write_index"][0])
        if write_index <= self._reported_upto:
            return
        capacity = self._state.ring.capacity
        first = max(self._reported_upto, write_index - capacity)
        if first > self._reported_upto:
            dropped = first - self._reported_upto
            self.dropped_rows += dropped
            self._logger.error(
                "kv_canary ring_overflow: dropped_rows=%d ring_capacity=%d total_violations=%d "
                "(raise KV_CANARY_RING_CAPACITY to keep every row)",
                dropped,
                capacity,
                write_index,
            )
        rows = snapshot["rows"]
        logged: list[ViolationRecord] = []
        for index in range(first, write_index):
            record = _to_record(rows[index % capacity], rank=self._rank)
            self.records.append(record)
            if self._is_repeat(record):
                continue
            logged.append(record)
            self._logger.error("%s", record.format())
        self._reported_upto = write_index
        if self._mode is CanaryMode.RAISE:  # every violation is logged in this mode
            raise KvCanaryViolationError(logged)

    def _is_repeat(self, record: ViolationRecord) -> bool:
        if not self._repeat_interval:
            return False
        key = (record.slot_idx, record.launch_tag, record.fail_reasons)
        if key not in self._logged_keys:
            self._logged_keys.add(key)
            return False
        repeats = self._repeats
        if not repeats.counts:
            repeats.first_step = record.step
        repeats.first_step = min(repeats.first_step, record.step)
        repeats.last_step = max(repeats.last_step, record.step)
        repeats.counts[key] += 1
        self.repeats_suppressed += 1
        return True

    def _end_interval(self) -> None:
        self._log_repeats()
        self._logged_keys.clear()

    def _log_repeats(self) -> None:
        repeats, self._repeats = self._repeats, _Repeats()
        if not repeats.counts:
            return
        line = ViolationRepeatsLog(
            repeats=sum(repeats.counts.values()),
            keys=len(repeats.counts),
            first_step=repeats.first_step,
            last_step=repeats.last_step,
            top=tuple(
                RepeatedViolation(slot_idx=slot, launch_tag=tag, fail_reasons=reasons, repeats=count)
                for (slot, tag, reasons), count in repeats.counts.most_common(_TOP_REPEATED)
            ),
            rank=self._rank,
        )
        self._logger.error("%s", line.format())

    def _report_plan_overflow(self, total: int) -> None:
        # Entries beyond a plan's capacity are neither verified nor written (a dropped write leaves
        # records that later verifies report): say so, never silently.
        if total > self._plan_overflow_seen:
            self._logger.error(
                "kv_canary plan_overflow: dropped_entries=%d total=%d (torch kernels under CUDA-graph capture: set "
                "KV_CANARY_VERIFY_CAPACITY, KV_CANARY_WRITE_CAPACITY and KV_CANARY_MAX_REQUESTS_PER_FORWARD to the "
                "largest forward a captured graph runs; Triton kernels: the forward's lengths reach past "
                "req_to_token's width or out_cache_loc)",
                total - self._plan_overflow_seen,
                total,
            )
            self._plan_overflow_seen = total


def _to_record(row: torch.Tensor, *, rank: int | None) -> ViolationRecord:
    values = row.tolist()
    return ViolationRecord(
        launch_tag=LaunchTag(values[RingField.LAUNCH_TAG]).name,
        fail_reasons=tuple(FailReason(values[RingField.FAIL_BITS]).log_names()),
        slot_idx=values[RingField.SLOT],
        position=values[RingField.POSITION],
        stored_token=values[RingField.STORED_TOKEN],
        expected_token=values[RingField.EXPECTED_TOKEN],
        step=values[RingField.STEP],
        rank=rank,
    )
