"""``corrupt_canary``: flip one bit of a slot's canary record, as a stray write into it would.

The HEAD record of the K half (guarded in every mode) is hit, so the next forward's HEAD verify
reads it; the word (token, position or prev_hash) and the bit are drawn per application. A
flipped token or position also breaks the chain hash its successor slot expects. With several
ranks, the record of ``target.rank``'s canary is hit, and no other rank's.
"""

from __future__ import annotations

import functools

from kv_canary.launch_tags import KvHalf, Phase, PoolGroupKind
from kv_canary.records import RecordWord
from mock_models.engine.model_runner import ModelRunner
from mock_models.faults.targets import FaultContext, NoTarget, on_target_rank, pick_cached_unused_slot, pick_live_slot

_WORDS = (RecordWord.TOKEN, RecordWord.POSITION, RecordWord.PREV_HASH)
_LOW_BITS = 8  # token and position are small: a low bit always changes them


def corrupt_canary(context: FaultContext) -> str:
    engine, target = context.engine, context.target
    manager = engine.canary
    kind = PoolGroupKind.SWA if target.group == "swa" else PoolGroupKind.FULL
    group = manager.group(kind) if manager is not None else None
    if group is None:
        raise NoTarget(f"the canary guards no {kind.value} group here")
    ref = pick_cached_unused_slot(engine, target) if target.slot == "cached_unused" else pick_live_slot(context)
    index = ref.swa_slot if kind is PoolGroupKind.SWA else ref.full_slot
    word = context.rng.choice(_WORDS)
    bit = context.rng.randrange(62 if word is RecordWord.PREV_HASH else _LOW_BITS)
    where = on_target_rank(context, functools.partial(flip_record_bit, kind=kind, index=index, word=word, bit=bit))
    return (
        f"flipped bit {bit} of the {word.name.lower()} word of the HEAD K record of {kind.value} slot {index}"
        f"{where}: {ref.describe()}"
    )


def flip_record_bit(runner: ModelRunner, *, kind: PoolGroupKind, index: int, word: RecordWord, bit: int) -> None:
    """On the rank whose runner this is (a job: it crosses to that rank's process by name)."""
    group = runner.canary.group(kind) if runner.canary is not None else None
    if group is None:  # every rank installs the same canary: rank 0 checked it has this group
        raise RuntimeError(f"rank {runner.layout.rank}: the canary guards no {kind.value} group")
    group.records(Phase.HEAD, KvHalf.K)[index, word] ^= 1 << bit
