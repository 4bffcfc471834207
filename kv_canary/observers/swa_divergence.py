"""Every ``swa_divergence_interval`` forwards, log how the SWA group's view of the live tokens diverges.

Two kinds of signal, both for installs with a FULL and an SWA group:

* ``verify_full`` / ``verify_swa``: the verify entries of the two groups, accumulated on device
  over every forward since install by the HEAD verify (``CanaryDeviceState.verify_entries``, so
  graph replays count too). The SWA group reads only its window, so it should verify fewer
  entries than the FULL group.
* ``swa_full_idx_divergence`` / ``swa_out_of_window_tokens``: over the live tokens of the most
  recent forward (positions ``[0, prefix_len + extend_len)`` of each request, through
  ``req_to_token``), how many map through ``full_to_swa_index_mapping`` to an SWA slot other
  than their full index, and how many map to 0 (slid out of the window, or evicted).

Counts are computed on device at the logging step and read on the host one step later.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

from kv_canary.device_state import GROUP_INDEX
from kv_canary.forward_rows import ForwardRows
from kv_canary.launch_tags import PoolGroupKind
from kv_canary.log_lines import SwaDivergenceLog
from kv_canary.observers.delayed_transfer import DeviceSnapshot

if TYPE_CHECKING:
    from kv_canary.manager import CanaryManager


class SwaDivergenceReporter:
    def __init__(self, *, manager: CanaryManager) -> None:
        swa_group = manager.group(PoolGroupKind.SWA)
        if manager.config.swa_divergence_interval < 1 or swa_group is None or manager.group(PoolGroupKind.FULL) is None:
            raise ValueError(
                "SwaDivergenceReporter needs swa_divergence_interval >= 1 and an install with both a "
                "FULL and an SWA pool group"
            )
        self._manager = manager
        self._interval = manager.config.swa_divergence_interval
        mapping = swa_group.full_to_swa_index_mapping
        assert mapping is not None  # every SWA group has one (CanaryBufferGroup checks)
        self._full_to_swa = mapping
        self._handler = manager.new_delayed_handler()

    def step(self, forward_count: int) -> None:
        self._handler.step(
            compute_on_device=functools.partial(self._compute_on_device, forward_count),
            postprocess_on_host=self._postprocess_on_host,
        )

    def flush(self) -> None:
        self._handler.flush(self._postprocess_on_host)

    def _compute_on_device(self, forward_count: int) -> tuple[DeviceSnapshot, None] | None:
        rows = self._manager.latest_rows
        if forward_count % self._interval or rows is None:
            return None
        divergence, out_of_window = count_live_token_mappings(rows, self._full_to_swa)
        # The device step counter, not the host forward count: it advances in the same pre-ops as
        # the verify totals, so both describe the same forwards even under CUDA-graph replay.
        return {
            "forward_ct": self._manager.state.step,
            "verify_totals": self._manager.state.verify_entries,
            "live": torch.stack([divergence, out_of_window]),
        }, None

    def _postprocess_on_host(self, snapshot: DeviceSnapshot, _context: None) -> None:
        totals = snapshot["verify_totals"].tolist()
        verify_full, verify_swa = totals[GROUP_INDEX[PoolGroupKind.FULL]], totals[GROUP_INDEX[PoolGroupKind.SWA]]
        divergence, out_of_window = snapshot["live"].tolist()
        line = SwaDivergenceLog(
            forward_ct=int(snapshot["forward_ct"][0]),
            verify_full=verify_full,
            verify_swa=verify_swa,
            swa_full_idx_divergence=divergence,
            swa_out_of_window_tokens=out_of_window,
        )
        self._manager.logger.info("%s", line.format())


def count_live_token_mappings(rows: ForwardRows, full_to_swa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(live tokens mapped to another non-zero index, live tokens mapped to 0), as device scalars."""
    device = full_to_swa.device
    lengths = rows.prefix_len_tensor().to(device=device, dtype=torch.int64) + rows.extend_len_tensor().to(
        device=device, dtype=torch.int64
    )
    row = rows.req_pool_indices.to(device=device, dtype=torch.int64)
    if rows.prefix_lens_host is not None and rows.extend_lens_host is not None:
        # Host lengths size the gather exactly.
        total = sum(rows.prefix_lens_host) + sum(rows.extend_lens_host)
        request = torch.repeat_interleave(torch.arange(rows.batch_size, device=device), lengths, output_size=total)
        position = torch.arange(total, device=device) - (torch.cumsum(lengths, 0) - lengths)[request]
        full_slots = rows.req_to_token[row[request], position].to(torch.int64)
        live = torch.ones_like(full_slots, dtype=torch.bool)
    else:
        # Without them, mask the requests' whole rows rather than read the lengths on the host.
        position = torch.arange(rows.req_to_token.shape[1], device=device)
        full_slots = rows.req_to_token[row].to(torch.int64)
        live = position[None, :] < lengths[:, None]
    swa_slots = full_to_swa[full_slots]
    divergence = (live & (swa_slots != 0) & (swa_slots != full_slots)).sum()
    out_of_window = (live & (swa_slots == 0)).sum()
    return divergence, out_of_window
