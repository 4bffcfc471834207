"""Launch the per-forward Triton kernel: three launches a forward, sized from what the host knows.

``TritonForward`` holds, per install, everything that does not change between forwards (the
record buffers of each group, phase and K/V half; the real-K/V descriptor table; the tags) and
turns a forward's rows into the HEAD write, HEAD verify and TAIL launches of
``forward_triton._forward_kernel``.

Launch shapes: verify blocks of 32 lanes on one warp for small forwards (their reductions then
need no barrier), 128 on four warps, 256 on eight for forwards of half a million entries and
more, at most 64 lanes on two warps when the TAIL hashes real K/V (each lane then gathers many
rows). A request's verify blocks are spread over ``splits`` programs, enough to fill the GPU
without launching programs that find no work. Without the host's lengths (graph capture) the
longest prefix is unknown: the launch is sized for ``verify_capacity`` entries, and programs
loop, so a longer prefix is still verified whole.
"""

from __future__ import annotations

import dataclasses

import torch

from kv_canary.device_state import CanaryDeviceState
from kv_canary.forward_rows import ForwardRows
from kv_canary.kernels.forward_triton import _forward_kernel
from kv_canary.kernels.group_layout import GroupLayout
from kv_canary.kernels.launch_cache import LaunchCache
from kv_canary.kernels.settings import KernelSettings
from kv_canary.launch_tags import Phase

# (entries up to, block, warps), tuned on an H100 for the verify kernel this one folds in.
_VERIFY_SHAPES = ((4096, 32, 1), (1 << 19, 128, 4), (1 << 62, 256, 8))
_BLOCK_WITH_REAL_KV, _WARPS_WITH_REAL_KV = 64, 2
# Write blocks: runs of a decode (one token) or a short extend take the small block, longer runs
# loop over the large one. Two sizes only: every block size is a compiled variant of each launch
# kind, and a variant that hashes real K/V takes a minute of Triton compile time.
_SHORT_RUN_WRITE_BLOCK, _LONG_RUN_WRITE_BLOCK = 32, 256
_REQUEST_BLOCK = 256  # a program reads the batch's lengths in vectors of this many requests
_TARGET_PROGRAMS = 2048  # an H200's 132 SMs about sixteen times over
_LAUNCHES = LaunchCache(_forward_kernel)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _LaunchKind:
    """What one of a forward's three launches fixes once per install: its buffers and constexprs."""

    phase: Phase
    verify: bool
    write: bool
    static: tuple[torch.Tensor, ...]  # the canary's own buffers, in the kernel's parameter order
    constexprs: dict[str, object]  # all but the block sizes and whether the engine records tokens
    hashes: bool  # the verify programs hash real K/V


class TritonForward:
    def __init__(self, *, layout: GroupLayout, state: CanaryDeviceState, settings: KernelSettings) -> None:
        self._layout = layout
        self._state = state
        self._settings = settings
        departures = torch.zeros(1, dtype=torch.int64, device=state.step.device)
        self._write_head = self._kind(Phase.HEAD, verify=False, write=True, departures=departures)
        self._verify_head = self._kind(Phase.HEAD, verify=True, write=False, departures=departures)
        self._tail = self._kind(Phase.TAIL, verify=True, write=True, departures=departures)
        self._engine: tuple[ForwardRows | None, tuple[torch.Tensor, ...]] = (None, ())

    def before_forward(self, rows: ForwardRows, *, verify: object = None, write: object = None) -> None:
        """HEAD write (advancing the step counter), then HEAD verify: two launches, ordered by the stream.

        ``verify`` and ``write`` (the torch backend's per-tag kernels) play no part here."""
        self.write_head(rows)
        self.verify_head(rows)

    def after_forward(self, rows: ForwardRows, *, verify: object = None, write: object = None) -> None:
        self.tail(rows)

    def write_head(self, rows: ForwardRows) -> None:
        """Launch 1: write the new slots' HEAD records (and mark their rows for the lost-write check)."""
        self._launch(rows, self._write_head)

    def verify_head(self, rows: ForwardRows) -> None:
        """Launch 2: verify the HEAD records of every slot the forward's attention reads."""
        self._launch(rows, self._verify_head)

    def tail(self, rows: ForwardRows) -> None:
        """Launch 3, after the model: verify the read slots' TAIL records and write the new slots' ones."""
        self._launch(rows, self._tail)

    def _kind(self, phase: Phase, *, verify: bool, write: bool, departures: torch.Tensor) -> _LaunchKind:
        layout, settings, state = self._layout, self._settings, self._state
        tail = phase is Phase.TAIL
        hashes = tail and layout.real_kv.hashes
        lost_writes = settings.check_lost_writes if tail else settings.poison_new_slots and write
        # Constexprs a launch does not use are given one value, so that each launch kind compiles few
        # variants: the HEAD verify hashes and marks nothing, the HEAD write hashes nothing.
        reads_real_kv = hashes or lost_writes
        tag_0, tag_1 = layout.tags(phase)
        static = (
            *layout.records(phase),
            layout.real_kv.table,
            state.ring.rows,
            state.ring.write_index,
            state.kernel_run_counters,
            state.slot_run_counters,
            state.step,
            state.verify_entries,
            state.plan_overflow,
            departures,
        )
        constexprs: dict[str, object] = {
            "VERIFY": verify,
            "WRITE": write,
            "TAIL": tail,
            "OPENS_FORWARD": write and not verify,
            "NUM_GROUPS": len(layout.groups),
            "FIRST_GROUP_SWA": layout.first_group_swa,
            "NUM_HALVES": layout.num_halves,
            "TAG_0": tag_0,
            "TAG_1": tag_1,
            "CHECK_TOKENS": settings.check_tokens and verify,
            "RECORD_VIOLATIONS": settings.record_violations and verify,
            "ASSERT_INPUTS": settings.assert_inputs and write,
            "HASH_REAL_KV": reads_real_kv,
            "LOST_WRITES": lost_writes,
            "LAYER_BLOCK": layout.real_kv.layer_block if reads_real_kv else 1,
            "WORD_CHUNK": layout.real_kv.word_chunk if hashes else 1,
            "REQUEST_BLOCK": _REQUEST_BLOCK,
        }
        return _LaunchKind(phase=phase, verify=verify, write=write, static=static, constexprs=constexprs, hashes=hashes)

    def _launch(self, rows: ForwardRows, kind: _LaunchKind) -> None:
        batch_size = rows.batch_size
        # A launch without verify programs keeps the smallest verify block, and one without write programs
        # the smallest write block, so that each compiles once.
        verify_block, warps, splits = self._verify_shape(rows, kind.hashes) if kind.verify else (32, 1, 1)
        write_block = _write_block(rows) if kind.write else _SHORT_RUN_WRITE_BLOCK
        if not kind.verify:
            warps = max(1, min(4, write_block // 32))
        verify_programs = max(batch_size, 1) * splits if kind.verify else 0
        write_programs = batch_size if kind.write else 0
        token_ids = rows.req_token_ids
        _LAUNCHES.launch(
            (max(verify_programs + write_programs, 1),),
            self._engine_tensors(rows),
            kind.static,
            (
                batch_size,
                rows.num_new_tokens,
                self._state.ring.capacity,
                self._layout.window,
                rows.req_to_token.stride(0),
                rows.req_to_token.shape[1],
                0 if token_ids is None else token_ids.stride(0),
                1 if token_ids is None else token_ids.shape[1],
                verify_programs,
                splits,
                int(rows.is_decode),
            ),
            num_warps=warps,
            constexprs={
                **kind.constexprs,
                "HAS_TOKEN_IDS": token_ids is not None,
                "VERIFY_BLOCK": verify_block,
                "WRITE_BLOCK": write_block,
                "WRITE_BLOCK_LOG2": write_block.bit_length() - 1,
            },
        )

    def _engine_tensors(self, rows: ForwardRows) -> tuple[torch.Tensor, ...]:
        """The forward's tensors, checked once for the forward's three launches."""
        checked_rows, tensors = self._engine
        if checked_rows is not rows:
            tensors = _engine_tensors(rows, self._layout.full_to_swa, self._state.step.device)
            self._engine = (rows, tensors)
        return tensors

    def _verify_shape(self, rows: ForwardRows, hashes_real_kv: bool) -> tuple[int, int, int]:
        """(block, warps, splits per request) for the verify programs."""
        if rows.prefix_lens_host is not None:
            if self._layout.first_group_swa:
                window = self._layout.window
                reads = [min(n, window) for n in rows.prefix_lens_host]
            else:
                reads = list(rows.prefix_lens_host)
            entries, longest = sum(reads), max(reads, default=0)
        else:
            entries = longest = self._settings.verify_capacity
        block, warps = next((block, warps) for limit, block, warps in _VERIFY_SHAPES if entries <= limit)
        if hashes_real_kv:
            block, warps = min(block, _BLOCK_WITH_REAL_KV), min(warps, _WARPS_WITH_REAL_KV)
        splits = max(1, min(-(-longest // block), _TARGET_PROGRAMS // max(rows.batch_size, 1)))
        return block, warps, splits


def _write_block(rows: ForwardRows) -> int:
    """Lanes of a write block: the small block when no request writes more tokens than it holds."""
    longest = rows.longest_run
    if longest is not None and longest <= _SHORT_RUN_WRITE_BLOCK:
        return _SHORT_RUN_WRITE_BLOCK
    return _LONG_RUN_WRITE_BLOCK


def _engine_tensors(rows: ForwardRows, full_to_swa: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The forward's tensors the kernel reads (a stand-in where one is absent), checked for its layout."""
    named = {
        "req_pool_indices": rows.req_pool_indices,
        # A decode batch given by its seq_lens has no extend lengths: a stand-in the kernel never reads.
        "prefix_lens": rows.seq_lens if rows.seq_lens is not None and rows.is_decode else rows.prefix_len_tensor(),
        "extend_lens": rows.req_pool_indices if rows.is_decode else rows.extend_len_tensor(),
        "out_cache_loc": rows.out_cache_loc,
        "input_ids": rows.input_ids,
        "positions": rows.positions,
        "req_to_token": rows.req_to_token,
        "req_token_ids": rows.req_to_token if rows.req_token_ids is None else rows.req_token_ids,
        "full_to_swa_index_mapping": full_to_swa,
    }
    for name, tensor in named.items():
        if tensor.device != device or (tensor.numel() > 1 and tensor.stride(-1) != 1):
            raise ValueError(
                f"kv_canary: {name} must be on the canary's device {device} with unit stride in its last "
                f"dimension (got {tensor.device}, strides {tensor.stride()}); pass contiguous engine tensors "
                "or select the torch kernels (KV_CANARY_BACKEND=torch)"
            )
    return tuple(named.values())
