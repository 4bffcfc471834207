"""Launch tags (which phase, K/V half and pool group a kernel ran for) and failure-reason bits."""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    HEAD = "HEAD"  # before the model's forward
    TAIL = "TAIL"  # after it, with the real-KV hash
    SWEEP = "SWEEP"  # periodic pass over every radix-held slot


class KvHalf(enum.Enum):
    K = "K"
    V = "V"


class PoolGroupKind(enum.Enum):
    FULL = "FULL"
    SWA = "SWA"


class LaunchTag(enum.IntEnum):
    """Stored in violation rows and indexing the run counters; values are part of the ring format."""

    HEAD_K_FULL = 0
    HEAD_V_FULL = 1
    TAIL_K_FULL = 2
    TAIL_V_FULL = 3
    SWEEP_K_FULL = 4
    SWEEP_V_FULL = 5
    HEAD_K_SWA = 6
    HEAD_V_SWA = 7
    TAIL_K_SWA = 8
    TAIL_V_SWA = 9
    SWEEP_K_SWA = 10
    SWEEP_V_SWA = 11

    @classmethod
    def of(cls, phase: Phase, half: KvHalf, group: PoolGroupKind) -> LaunchTag:
        return cls[f"{phase.value}_{half.value}_{group.value}"]

    @property
    def phase(self) -> Phase:
        return Phase(self.name.split("_")[0])

    @property
    def half(self) -> KvHalf:
        return KvHalf(self.name.split("_")[1])

    @property
    def group(self) -> PoolGroupKind:
        return PoolGroupKind(self.name.split("_")[2])


class FailReason(enum.IntFlag):
    """Bits of a violation row's reason word; names are the log line's ``fail_reason`` words."""

    CHAIN_HASH = 1
    POSITION = 2
    TOKEN = 4
    REAL_KV_HASH = 8
    WRITE_TOKEN = 16
    WRITE_POSITION = 32
    LOST_WRITE = 64  # a new slot's real K/V still holds the poison written before the model ran

    def log_names(self) -> list[str]:
        return [reason.name.lower() for reason in FailReason if reason & self and reason.name is not None]

    @classmethod
    def from_log_names(cls, names: list[str]) -> FailReason:
        bits = cls(0)
        for name in names:
            bits |= cls[name.upper()]
        return bits
