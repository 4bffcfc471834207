"""The record layout, fail bits, ring columns and plan sentinels as Triton constants.

Every number a kernel needs about the canary's data layout is derived here from the Python
definitions (``RecordWord``, ``FailReason``, ``RingField``, ``LaunchTag``, the plan sentinels),
so no kernel spells a word offset, a fail bit or a tag as a literal.
"""

from __future__ import annotations

import triton.language as tl

from kv_canary.device_state import GROUP_INDEX, RING_FIELDS, RingField
from kv_canary.launch_tags import FailReason, KvHalf, LaunchTag, Phase, PoolGroupKind
from kv_canary.plans import PADDING_POSITION, PADDING_ROW, PREV_SEQUENCE_START, PREV_UNKNOWN, TOKEN_UNKNOWN
from kv_canary.records import RECORD_WORDS, RecordWord

RECORD_WORDS_C: tl.constexpr = tl.constexpr(RECORD_WORDS)
WORD_TOKEN: tl.constexpr = tl.constexpr(int(RecordWord.TOKEN))
WORD_POSITION: tl.constexpr = tl.constexpr(int(RecordWord.POSITION))
WORD_PREV_HASH: tl.constexpr = tl.constexpr(int(RecordWord.PREV_HASH))
WORD_REAL_KV_HASH: tl.constexpr = tl.constexpr(int(RecordWord.REAL_KV_HASH))

FAIL_CHAIN_HASH: tl.constexpr = tl.constexpr(int(FailReason.CHAIN_HASH))
FAIL_POSITION: tl.constexpr = tl.constexpr(int(FailReason.POSITION))
FAIL_TOKEN: tl.constexpr = tl.constexpr(int(FailReason.TOKEN))
FAIL_REAL_KV_HASH: tl.constexpr = tl.constexpr(int(FailReason.REAL_KV_HASH))
FAIL_WRITE_TOKEN: tl.constexpr = tl.constexpr(int(FailReason.WRITE_TOKEN))
FAIL_WRITE_POSITION: tl.constexpr = tl.constexpr(int(FailReason.WRITE_POSITION))
FAIL_LOST_WRITE: tl.constexpr = tl.constexpr(int(FailReason.LOST_WRITE))

VERIFY_ENTRIES_FULL: tl.constexpr = tl.constexpr(GROUP_INDEX[PoolGroupKind.FULL])
VERIFY_ENTRIES_SWA: tl.constexpr = tl.constexpr(GROUP_INDEX[PoolGroupKind.SWA])

RING_FIELDS_C: tl.constexpr = tl.constexpr(RING_FIELDS)
RING_LAUNCH_TAG: tl.constexpr = tl.constexpr(int(RingField.LAUNCH_TAG))
RING_FAIL_BITS: tl.constexpr = tl.constexpr(int(RingField.FAIL_BITS))
RING_SLOT: tl.constexpr = tl.constexpr(int(RingField.SLOT))
RING_POSITION: tl.constexpr = tl.constexpr(int(RingField.POSITION))
RING_STORED_TOKEN: tl.constexpr = tl.constexpr(int(RingField.STORED_TOKEN))
RING_EXPECTED_TOKEN: tl.constexpr = tl.constexpr(int(RingField.EXPECTED_TOKEN))
RING_STEP: tl.constexpr = tl.constexpr(int(RingField.STEP))
RING_STORED_POSITION: tl.constexpr = tl.constexpr(int(RingField.STORED_POSITION))
RING_STORED_PREV_HASH: tl.constexpr = tl.constexpr(int(RingField.STORED_PREV_HASH))
RING_EXPECTED_PREV_HASH: tl.constexpr = tl.constexpr(int(RingField.EXPECTED_PREV_HASH))
RING_STORED_REAL_KV_HASH: tl.constexpr = tl.constexpr(int(RingField.STORED_REAL_KV_HASH))
RING_EXPECTED_REAL_KV_HASH: tl.constexpr = tl.constexpr(int(RingField.EXPECTED_REAL_KV_HASH))

PREV_SEQUENCE_START_C: tl.constexpr = tl.constexpr(PREV_SEQUENCE_START)
PREV_UNKNOWN_C: tl.constexpr = tl.constexpr(PREV_UNKNOWN)
TOKEN_UNKNOWN_C: tl.constexpr = tl.constexpr(TOKEN_UNKNOWN)
PADDING_POSITION_C: tl.constexpr = tl.constexpr(PADDING_POSITION)
PADDING_ROW_C: tl.constexpr = tl.constexpr(PADDING_ROW)


def launch_tag_base(phase: Phase, group: PoolGroupKind) -> int:
    """The tag of a phase's K half in a group; its V half's tag is ``base + HALF_TAG_STEP``."""
    return int(LaunchTag.of(phase, KvHalf.K, group))


HALF_TAG_STEP = int(LaunchTag.HEAD_V_FULL) - int(LaunchTag.HEAD_K_FULL)
HALF_TAG_STEP_C: tl.constexpr = tl.constexpr(HALF_TAG_STEP)
