"""Drain the violation ring one step late and turn its rows into log lines (or an error)."""

from __future__ import annotations

import logging

import torch

from kv_canary.config import CanaryMode
from kv_canary.device_state import CanaryDeviceState, RingField
from kv_canary.errors import KvCanaryViolationError
from kv_canary.launch_tags import FailReason, LaunchTag
from kv_canary.log_lines import ViolationRecord
from kv_canary.observers.delayed_transfer import DelayedDeviceHostHandler, DeviceSnapshot


class ViolationReporter:
    def __init__(
        self, *, state: CanaryDeviceState, mode: CanaryMode, logger: logging.Logger, handler: DelayedDeviceHostHandler
    ) -> None:
        self._state = state
        self._mode = mode
        self._logger = logger
        self._handler = handler
        self._reported_upto = 0  # write index up to which rows have been read
        self._plan_overflow_seen = 0
        self.records: list[ViolationRecord] = []
        self.dropped_rows = 0

    def step(self, forward_count: int) -> None:
        del forward_count  # every forward's ring is staged
        self._handler.step(compute_on_device=self._compute_on_device, postprocess_on_host=self._postprocess_on_host)

    def flush(self) -> None:
        """Report what was staged, then the ring as it is now, even if the first report raised."""
        try:
            self._handler.flush(self._postprocess_on_host)
        finally:
            self._handler.step(compute_on_device=self._compute_on_device, postprocess_on_host=self._postprocess_on_host)
            self._handler.flush(self._postprocess_on_host)

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
        records = []
        for index in range(first, write_index):
            record = _to_record(rows[index % capacity])
            records.append(record)
            self._logger.error("%s", record.format())
        self.records.extend(records)
        self._reported_upto = write_index
        if self._mode is CanaryMode.RAISE:
            raise KvCanaryViolationError(records)

    def _report_plan_overflow(self, total: int) -> None:
        # Entries beyond a plan's capacity are neither verified nor written (a dropped write leaves
        # records that later verifies report): say so, never silently.
        if total > self._plan_overflow_seen:
            self._logger.error(
                "kv_canary plan_overflow: dropped_entries=%d total=%d (set KV_CANARY_VERIFY_CAPACITY, "
                "KV_CANARY_WRITE_CAPACITY and KV_CANARY_MAX_REQUESTS_PER_FORWARD to the largest "
                "forward a captured graph runs)",
                total - self._plan_overflow_seen,
                total,
            )
            self._plan_overflow_seen = total


def _to_record(row: torch.Tensor) -> ViolationRecord:
    values = row.tolist()
    return ViolationRecord(
        launch_tag=LaunchTag(values[RingField.LAUNCH_TAG]).name,
        fail_reasons=tuple(FailReason(values[RingField.FAIL_BITS]).log_names()),
        slot_idx=values[RingField.SLOT],
        position=values[RingField.POSITION],
        stored_token=values[RingField.STORED_TOKEN],
        expected_token=values[RingField.EXPECTED_TOKEN],
        step=values[RingField.STEP],
    )
