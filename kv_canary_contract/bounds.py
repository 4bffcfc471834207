"""Numeric bounds every consumer of the contract applies: the scenario validator, the inject body,
the server's flags.

Far above what a run of the mock engine needs, low enough that a typo (a digit or three too many)
is refused up front instead of a server that cannot allocate its pools, a run that plans a
billion requests, or a fault that would be applied 10**29 times.
"""

from __future__ import annotations

MAX_TOKENS = 1 << 20  # pool slots, windows, chunks, prompt and prefix lengths
MAX_PAGE_SIZE = 1024
MAX_FORWARDS = 10_000_000  # forward counts: intervals, trigger steps, latency bounds
MAX_REQUESTS = 100_000  # requests of a workload (counts summed), running at once, fault applications
MAX_SPECULATIVE_STEPS = 16  # draft tokens per speculative round
MAX_RANKS = 8  # ranks of one engine a fault may target (fault_kinds.EngineRank names each)
MOCK_MODEL_MAX_RANKS = 2  # tp or pp of the mock server: its models have 2 attention heads and (mha, dsv4) 2 layers
MAX_JITTER_US = 1_000_000  # one injected delay, in microseconds
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # a 64-bit integer, as torch seeds take
