"""A generation request as the engine tracks it, and the result handed back when it finishes."""

from __future__ import annotations

import dataclasses
import time

from kv_canary_contract.token_oracle import OracleState
from mock_models.engine.memory_protocols import EngineRadixNode


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class GenerationResult:
    rid: str
    output_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens reused from the radix cache at admission
    finish_reason: str  # "length": max_new_tokens were generated
    attention_checksum: float  # digest of the final hidden states at every sampled position (sum of output_digests)
    e2e_latency: float  # seconds from submission to finish
    # Per output token: the forward that sampled it, and the digest of the hidden state it was sampled
    # from. Tokens come from the token oracle whatever the KV holds; the digests show what a corrupted
    # read did to the model's output (compare with a clean run of the same request).
    output_steps: tuple[int, ...] = ()
    output_digests: tuple[float, ...] = ()


@dataclasses.dataclass(kw_only=True, slots=True, eq=False)
class Request:
    """Positions ``[0, kv_len)`` have K/V in the cache. Their slots are owned in three runs:

    * ``[0, tree_owned_len)``: by radix nodes this request locks (``last_node``);
    * ``[tree_owned_len, kv_len)``: by the request itself, its slots in ``own_slots``, indexed
      from ``own_start`` (the prefix matched at admission);
    * in SWA modes, private positions below ``swa_released_len`` have had their SWA slots
      released as they slid out of the window.

    ``own_slots`` also holds the slots of a forward still in flight (overlap scheduling), up to
    ``allocated_len``. A retraction returns everything and sends the request back to the queue with
    its outputs: it prefills ``prefill_len`` tokens (prompt and outputs) again when readmitted.
    """

    rid: str
    origin_input_ids: list[int]
    max_new_tokens: int
    oracle_state: OracleState  # the oracle's hash of token_ids, advanced per sampled token
    output_ids: list[int] = dataclasses.field(default_factory=list)
    # What the model is fed: prompt + sampled tokens. A separate list from the record
    # (token_ids, req_token_ids) so that a fault can change only what is fed.
    fill_ids: list[int] = dataclasses.field(default_factory=list)
    submit_time: float = dataclasses.field(default_factory=time.perf_counter)
    output_steps: list[int] = dataclasses.field(default_factory=list)  # forward that sampled each output
    carried_digests: list[float] = dataclasses.field(default_factory=list)  # of outputs before a retraction

    req_pool_idx: int = 0  # 0 until admitted
    cached_tokens: int = 0
    last_node: EngineRadixNode | None = None
    kv_len: int = 0
    tree_owned_len: int = 0
    own_start: int = 0
    own_slots: list[int] = dataclasses.field(default_factory=list)
    own_swa_slots: list[int] = dataclasses.field(default_factory=list)
    swa_released_len: int = 0
    full_pages_reserved: int = 0  # pages still promised to this request, not yet allocated
    swa_slots_reserved: int = 0
    finish_reason: str | None = None  # "length", or "abort" for a request dropped while running
    prefill_len: int = 0  # tokens computed before the next sample: the prompt (plus outputs after a retraction)
    first_match_len: int | None = None  # prefix matched at its first admission attempt, if that one was refused
    epoch: int = 0  # admissions so far: a batch item planned under an earlier admission is stale
    digest_base: int = 0  # outputs sampled before this admission (their digests are carried_digests)
    retractions: int = 0

    def __post_init__(self) -> None:
        if not self.fill_ids:
            self.fill_ids = list(self.origin_input_ids)

    @property
    def token_ids(self) -> list[int]:
        """The record: prompt and every sampled token."""
        return self.origin_input_ids + self.output_ids

    @property
    def prompt_len(self) -> int:
        return len(self.origin_input_ids)

    @property
    def allocated_len(self) -> int:
        """Positions with a slot: ``kv_len`` plus those a forward in flight writes."""
        return self.own_start + len(self.own_slots)

    @property
    def needs_prefill(self) -> bool:
        return self.kv_len < self.prefill_len

    @property
    def prefill_scheduled(self) -> bool:
        """Every prefill token has a forward, done or in flight: the next forward decodes."""
        return self.allocated_len >= self.prefill_len

    @property
    def is_finished(self) -> bool:
        return len(self.output_ids) >= self.max_new_tokens

    @property
    def locked_node(self) -> EngineRadixNode:
        """The radix node whose path this running request locks."""
        if self.last_node is None:
            raise RuntimeError(f"request {self.rid} locks no radix node: it is not running")
        return self.last_node

    def own_slot(self, position: int) -> int:
        return self.own_slots[position - self.own_start]
