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

import torch
import triton

from kv_canary.buffer_group import CanaryBufferGroup
from kv_canary.device_state import CanaryDeviceState
from kv_canary.errors import KvCanaryError
from kv_canary.forward_rows import ForwardRows
from kv_canary.kernels.forward_triton import _forward_kernel
from kv_canary.kernels.launch_cache import LaunchCache
from kv_canary.kernels.layout_triton import launch_tag_base
from kv_canary.kernels.real_kv_table import RealKvTable
from kv_canary.kernels.settings import KernelSettings
from kv_canary.launch_tags import KvHalf, Phase, PoolGroupKind

# (entries up to, block, warps), tuned on an H100 for the verify kernel this one folds in.
_VERIFY_SHAPES = ((4096, 32, 1), (1 << 19, 128, 4), (1 << 62, 256, 8))
_BLOCK_WITH_REAL_KV, _WARPS_WITH_REAL_KV = 64, 2
_MIN_WRITE_BLOCK, _MAX_WRITE_BLOCK = 16, 1024
_REQUEST_BLOCK = 256  # a program reads the batch's lengths in vectors of this many requests
_TARGET_PROGRAMS = 2048  # an H200's 132 SMs about sixteen times over
_LAUNCHES = LaunchCache(_forward_kernel)


class UnsupportedGroupLayoutError(KvCanaryError, ValueError):
    """The install's pool groups are not a layout the fused kernel handles."""


class TritonForward:
    def __init__(
        self,
        *,
        groups: tuple[CanaryBufferGroup, ...],
        state: CanaryDeviceState,
        settings: KernelSettings,
        real_kv: RealKvTable,
    ) -> None:
        kinds = tuple(group.kind for group in groups)
        halves = {tuple(group.halves) for group in groups}
        if kinds not in ((PoolGroupKind.FULL,), (PoolGroupKind.SWA,), (PoolGroupKind.FULL, PoolGroupKind.SWA)) or (
            halves not in ({(KvHalf.K,)}, {(KvHalf.K, KvHalf.V)})
        ):
            raise UnsupportedGroupLayoutError(
                f"kv_canary: the Triton kernels guard a FULL group, an SWA group, or both (in that order), with "
                f"the same K/V halves each; got groups {[kind.value for kind in kinds]} with halves "
                f"{[[half.value for half in group.halves] for group in groups]}. Use KV_CANARY_BACKEND=torch"
            )
        self._groups = groups
        self._state = state
        self._settings = settings
        swa = next((group for group in groups if group.kind is PoolGroupKind.SWA), None)
        self._mapping = swa.full_to_swa_index_mapping if swa is not None else state.step
        self._window = (swa.window or 0) if swa is not None else 0
        self._real_kv = real_kv
        self._departures = torch.zeros(1, dtype=torch.int64, device=state.step.device)
        self._records = {phase: _records(groups, phase, state.step) for phase in (Phase.HEAD, Phase.TAIL)}
        self._tags = {
            phase: tuple(launch_tag_base(phase, group.kind) for group in groups) + (0,) * (2 - len(groups))
            for phase in (Phase.HEAD, Phase.TAIL)
        }
        self._constexprs = {
            "NUM_GROUPS": len(groups),
            "FIRST_GROUP_SWA": kinds[0] is PoolGroupKind.SWA,
            "NUM_HALVES": len(groups[0].halves),
        }

    def before_forward(self, rows: ForwardRows, *, verify: object = None, write: object = None) -> None:
        """HEAD write (advancing the step counter), then HEAD verify: two launches, ordered by the stream.

        ``verify`` and ``write`` (the torch backend's per-tag kernels) play no part here."""
        self.write_head(rows)
        self.verify_head(rows)

    def after_forward(self, rows: ForwardRows, *, verify: object = None, write: object = None) -> None:
        self.tail(rows)

    def write_head(self, rows: ForwardRows) -> None:
        """Launch 1: write the new slots' HEAD records (and mark their rows for the lost-write check)."""
        self._launch(rows, Phase.HEAD, verify=False, write_block=self._write_block(rows), opens_forward=True)

    def verify_head(self, rows: ForwardRows) -> None:
        """Launch 2: verify the HEAD records of every slot the forward's attention reads."""
        self._launch(rows, Phase.HEAD, verify=True, write_block=_MIN_WRITE_BLOCK, opens_forward=False)

    def tail(self, rows: ForwardRows) -> None:
        """Launch 3, after the model: verify the read slots' TAIL records and write the new slots' ones."""
        self._launch(rows, Phase.TAIL, verify=True, write_block=self._write_block(rows), opens_forward=False)

    def _launch(self, rows: ForwardRows, phase: Phase, *, verify: bool, write_block: int, opens_forward: bool) -> None:
        settings = self._settings
        write = phase is Phase.TAIL or not verify
        hashes = phase is Phase.TAIL and self._real_kv.hashes
        batch_size = rows.batch_size
        # A launch without verify programs keeps the smallest verify block, so that it compiles once.
        verify_block, warps, splits = self._verify_shape(rows, hashes) if verify else (32, 1, 1)
        if not verify:
            warps = max(1, min(4, write_block // 32))
        verify_programs = max(batch_size, 1) * splits if verify else 0
        write_programs = batch_size if write else 0
        token_ids = rows.req_token_ids
        engine = _engine_tensors(rows, self._mapping, self._state.step.device)
        state = self._state
        records = self._records[phase]
        tags = self._tags[phase]
        _LAUNCHES.launch(
            (max(verify_programs + write_programs, 1),),
            (
                *engine,
                *records,
                self._real_kv.table,
                state.ring.rows,
                state.ring.write_index,
                state.kernel_run_counters,
                state.slot_run_counters,
                state.step,
                state.verify_entries,
                state.plan_overflow,
                self._departures,
            ),
            (
                batch_size,
                rows.num_new_tokens,
                state.ring.capacity,
                self._window,
                rows.req_to_token.stride(0),
                rows.req_to_token.shape[1],
                0 if token_ids is None else token_ids.stride(0),
                1 if token_ids is None else token_ids.shape[1],
                verify_programs,
                splits,
                int(rows.is_decode),
            ),
            num_warps=warps,
            VERIFY=verify,
            WRITE=write,
            TAIL=phase is Phase.TAIL,
            OPENS_FORWARD=opens_forward,
            **self._constexprs,
            TAG_0=tags[0],
            TAG_1=tags[1],
            HAS_TOKEN_IDS=token_ids is not None,
            CHECK_TOKENS=settings.check_tokens,
            RECORD_VIOLATIONS=settings.record_violations,
            ASSERT_INPUTS=settings.assert_inputs,
            HASH_REAL_KV=self._real_kv.hashes,
            LOST_WRITES=settings.check_lost_writes if phase is Phase.TAIL else settings.poison_new_slots,
            LAYER_BLOCK=self._real_kv.layer_block,
            WORD_CHUNK=self._real_kv.word_chunk,
            REQUEST_BLOCK=_REQUEST_BLOCK,
            VERIFY_BLOCK=verify_block,
            WRITE_BLOCK=write_block,
            WRITE_BLOCK_LOG2=write_block.bit_length() - 1,
        )

    def _verify_shape(self, rows: ForwardRows, hashes_real_kv: bool) -> tuple[int, int, int]:
        """(block, warps, splits per request) for the verify programs."""
        whole_prefix = self._groups[0].kind is PoolGroupKind.FULL
        if rows.prefix_lens_host is not None:
            reads = [n if whole_prefix else min(n, self._window) for n in rows.prefix_lens_host]
            entries, longest = sum(reads), max(reads, default=0)
        else:
            entries = longest = self._settings.verify_capacity
        block, warps = next((block, warps) for limit, block, warps in _VERIFY_SHAPES if entries <= limit)
        if hashes_real_kv:
            block, warps = min(block, _BLOCK_WITH_REAL_KV), min(warps, _WARPS_WITH_REAL_KV)
        splits = max(1, min(triton.cdiv(longest, block), _TARGET_PROGRAMS // max(rows.batch_size, 1)))
        return block, warps, splits

    @staticmethod
    def _write_block(rows: ForwardRows) -> int:
        longest = rows.longest_run
        if longest is None:
            longest = _MAX_WRITE_BLOCK
        return min(_MAX_WRITE_BLOCK, max(_MIN_WRITE_BLOCK, triton.next_power_of_2(max(longest, 1))))


def _records(
    groups: tuple[CanaryBufferGroup, ...], phase: Phase, placeholder: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The record buffers of (group 0 K, group 0 V, group 1 K, group 1 V), a placeholder where none."""
    buffers = []
    for index in range(2):
        for half in (KvHalf.K, KvHalf.V):
            group = groups[index] if index < len(groups) else None
            buffers.append(group.records(phase, half) if group is not None and half in group.halves else placeholder)
    return tuple(buffers)


def _engine_tensors(rows: ForwardRows, full_to_swa: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The forward's tensors the kernel reads (a stand-in where one is absent), checked for its layout."""
    named = {
        "req_pool_indices": rows.req_pool_indices,
        "prefix_lens": rows.seq_lens if rows.is_decode else rows.prefix_lens,
        "extend_lens": rows.req_pool_indices if rows.is_decode else rows.extend_lens,
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
