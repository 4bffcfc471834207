"""The engine's configuration: one frozen value, validated once, passed down to every part."""

from __future__ import annotations

import dataclasses
import enum
import typing

import torch

from kv_canary_contract import (
    CANARY_SETTINGS,
    FEATURE_SETTINGS,
    MODES,
    EngineSettings,
    engine_setting_problems,
    feature_enabled,
)
from kv_canary_contract.engine_settings import Disaggregation
from kv_canary_contract.modes import DSV4_COMPRESS_RATIO


class ModelMode(enum.Enum):
    """The contract's model modes (``kv_canary_contract.MODEL_MODES``) as an enum."""

    MHA = "mha"  # every layer full attention over one K/V pool
    SWA = "swa"  # full and sliding-window layers; the window layers live in an SWA sub-pool
    DSV4 = "dsv4"  # DeepSeek-V4-style: a K-only (latent) SWA sub-pool plus a compressed pool


class MemBackend(enum.Enum):
    """Whose classes hold the engine's memory (request rows, KV pools, allocators, radix cache)."""

    MOCK = "mock"  # the engine's own
    SGLANG = "sglang"  # SGLang 0.5.23's real ones (mha and swa; needs .ci/install-sglang)


_KV_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# The contract's engine settings this config holds (the others are the canary's, in CanaryConfig);
# their bounds and the rules between them are the contract's (``engine_setting_problems``).
CONTRACT_SETTINGS = tuple(name for name in EngineSettings.model_fields if name not in CANARY_SETTINGS)


class EngineConfigError(ValueError):
    """A setting that cannot be used; the message names the setting and what to do."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EngineConfig:
    model_mode: ModelMode = ModelMode.MHA
    device: str = "cpu"
    page_size: int = 1
    max_total_tokens: int = 4096  # full-pool slots, not counting the padding page
    swa_window: int = 64  # tokens of history a window layer reads (besides the token itself)
    swa_max_total_tokens: int | None = None  # SWA sub-pool slots; None = derived, see swa_pool_size
    max_running_requests: int = 32
    chunked_prefill_size: int = 512  # prompt tokens one EXTEND forward may compute, over all requests
    max_context_len: int = 4096  # prompt + generated tokens of one request
    seed: int = 0  # seeds the model weights and the token oracle
    vocab_size: int = 1024
    kv_dtype: str = "float32"
    compress_ratio: int = DSV4_COMPRESS_RATIO  # dsv4: tokens pooled into one compressed entry
    # True: a double free raises DoubleFreeError. False: it is logged at ERROR and ignored, so a
    # server under fault injection keeps serving while the canary reports what went wrong.
    strict_allocator: bool = False
    mem_backend: MemBackend = MemBackend.MOCK
    # none | prefill_decode: a prefill engine hands each prompt's KV and canary records to a decode
    # engine (mock_models/engine/disaggregation/)
    disaggregation: str = "none"
    host_tier_tokens: int = 0  # host KV slots evicted radix prefixes are offloaded to (engine/host_tier/)
    speculative_num_steps: int = 0  # draft tokens per EAGLE-style round (engine/speculative/)
    # Ranks (processes joined by torch.distributed), each with its shard of the KV pool and its own
    # canary: tp splits every layer's attention heads, pp the layers. 1 and 1: one process, as ever.
    tp: int = 1
    pp: int = 1
    # Prepare forward T+1 before forward T's results are processed, as SGLang's overlap scheduler does.
    overlap_schedule: bool = False
    # Share of max_new_tokens whose pages admission reserves; below 1 a decode short of pages retracts.
    new_token_ratio: float = 1.0
    bugs: tuple[str, ...] = ()  # engine bug modes (kv_canary_contract.ENGINE_BUGS) this engine re-enacts
    # Random delays (mock_models/engine/jitter.py) of up to this many microseconds between scheduling,
    # the forward, K/V writes and frees, drawn from jitter_seed; 0: none.
    jitter_max_us: int = 0
    jitter_seed: int = 0

    def __post_init__(self) -> None:
        # Callers may pass the enums' values ("swa", "sglang"), as the server's flags and the tests do.
        model_mode: object = self.model_mode
        if not isinstance(model_mode, ModelMode):
            object.__setattr__(self, "model_mode", _enum_value(ModelMode, model_mode, "model_mode"))
        mem_backend: object = self.mem_backend
        if not isinstance(mem_backend, MemBackend):
            object.__setattr__(self, "mem_backend", _enum_value(MemBackend, mem_backend, "mem_backend"))
        bugs: object = self.bugs
        if not isinstance(bugs, tuple):
            object.__setattr__(self, "bugs", tuple(typing.cast("list[str]", bugs)))
        if self.mem_backend is MemBackend.SGLANG:
            _require(
                not self.bugs,
                "bugs",
                f"= {list(self.bugs)}: bug modes re-enact mechanisms in the mock engine's own memory code; "
                "use mem_backend mock",
            )
            _require(
                self.model_mode in (ModelMode.MHA, ModelMode.SWA),
                "mem_backend",
                f"= sglang runs model modes mha and swa (got {self.model_mode.value}); use mem_backend mock for dsv4",
            )
            _require(
                not any(feature_enabled(self.contract_settings(), name) for name in FEATURE_SETTINGS),
                "mem_backend",
                "= sglang runs without disaggregation, host_tier_tokens and speculative_num_steps (the mock "
                "engine implements them on its own memory); use mem_backend mock",
            )
        if self.device != "cpu":
            _require(
                self.disaggregation == "none" and self.host_tier_tokens == 0,
                "device",
                f"= {self.device}: disaggregation and host_tier_tokens copy KV bytes by address on the host "
                "(mock_models/engine/kv_copy.py), so they run on the CPU only",
            )
        _require(
            self.mem_backend is MemBackend.MOCK or self.ranks == 1,
            "mem_backend",
            f"= sglang runs one rank (got tp {self.tp}, pp {self.pp}); use mem_backend mock for several ranks",
        )
        _require(
            self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            f"{self.device!r}: use 'cpu' or 'cuda[:N]'",
        )
        for name in ("max_context_len", "vocab_size", "compress_ratio"):
            _require(getattr(self, name) >= 1, name, f"= {getattr(self, name)}: must be >= 1")
        _require(self.kv_dtype in _KV_DTYPES, "kv_dtype", f"{self.kv_dtype!r}: use one of {', '.join(_KV_DTYPES)}")
        _require(self.vocab_size < 2**31, "vocab_size", "must fit in int32 (records store tokens as int32)")
        disaggregations = typing.get_args(Disaggregation)
        _require(
            self.disaggregation in disaggregations,
            "disaggregation",
            f"{self.disaggregation!r}: use one of {', '.join(disaggregations)}",
        )
        problems = engine_setting_problems(
            self.contract_settings(), mode=self.model_mode.value, compress_ratio=self.compress_ratio
        )
        if problems:
            raise EngineConfigError(
                "; ".join(f"EngineConfig.{'.'.join(map(str, problem.loc))}: {problem.message}" for problem in problems)
            )
        if self.swa_max_total_tokens is not None:
            _require(self.has_swa_pool, "swa_max_total_tokens", "is only meaningful in swa and dsv4 modes")
            least = self.swa_request_budget(uncached_tokens=self.max_total_tokens, max_new_tokens=0)
            _require(
                self.swa_max_total_tokens >= least,
                "swa_max_total_tokens",
                f"= {self.swa_max_total_tokens}: one request may hold up to {least} SWA slots "
                "(2 * (swa_window + page_size) + chunked_prefill_size, twice that chunk with overlap_schedule); "
                "raise it or lower those",
            )

    @property
    def ranks(self) -> int:
        return self.tp * self.pp

    @property
    def has_swa_pool(self) -> bool:
        return MODES[self.model_mode.value].has_swa_pool

    @property
    def overrun_tokens(self) -> int:
        """Tokens a request computes past its last output: the overlap scheduler's forward in flight
        when its results finish it (its K/V is the last output token's)."""
        return 1 if self.overlap_schedule else 0

    @property
    def torch_kv_dtype(self) -> torch.dtype:
        return _KV_DTYPES[self.kv_dtype]

    @property
    def num_pages(self) -> int:
        return self.max_total_tokens // self.page_size

    @property
    def swa_pool_size(self) -> int:
        """SWA sub-pool slots: the configured size, else half the full pool but never too small."""
        if self.swa_max_total_tokens is not None:
            return self.swa_max_total_tokens
        least = self.swa_request_budget(uncached_tokens=self.max_total_tokens, max_new_tokens=0)
        return max(self.max_total_tokens // 2, least)

    @property
    def swa_pages_in_step(self) -> bool:
        """Whether SWA slots are taken in whole pages, one SWA page per new full-pool page (SGLang's
        paged SWA allocator), rather than one per token (the engine's own)."""
        return self.mem_backend is MemBackend.SGLANG and self.page_size > 1

    def swa_request_budget(self, *, uncached_tokens: int, max_new_tokens: int) -> int:
        """SWA slots a request can hold at once, as its own (see mock_models/README.md, SWA budget).

        Out-of-window slots are released after every forward, so at most the window plus a page
        plus one chunk are private; the prompt's tail that ``cache_unfinished_req`` hands to the
        radix tree (at most a window plus a page) stays resident while the request locks it. The
        overlap scheduler allocates a forward's chunk before the previous chunk's release: one more.
        Taken in whole pages (``swa_pages_in_step``), the private run also rounds up to a page at its end.
        """
        chunks = 2 if self.overlap_schedule else 1
        bound = 2 * (self.swa_window + self.page_size) + chunks * self.chunked_prefill_size
        if self.swa_pages_in_step:
            return min(
                _align_up(uncached_tokens + max_new_tokens, self.page_size),
                _align_up(bound, self.page_size) + self.page_size,
            )
        return min(uncached_tokens + max_new_tokens, bound)

    def contract_settings(self) -> dict[str, typing.Any]:
        """The contract's engine settings this config holds, by their ``EngineSettings`` names."""
        return {name: getattr(self, name) for name in CONTRACT_SETTINGS}

    def replace(self, **changes: typing.Any) -> EngineConfig:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RankLayout:
    """Where one rank sits: rank ``tp_rank + tp * pp_rank`` of ``tp * pp``, as SGLang numbers them."""

    rank: int = 0
    tp: int = 1
    pp: int = 1

    def __post_init__(self) -> None:
        _require(0 <= self.rank < self.tp * self.pp, "rank", f"= {self.rank}: must be in [0, tp * pp)")

    @classmethod
    def of(cls, config: EngineConfig, rank: int) -> RankLayout:
        return cls(rank=rank, tp=config.tp, pp=config.pp)

    @property
    def size(self) -> int:
        return self.tp * self.pp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def pp_rank(self) -> int:
        return self.rank // self.tp

    def rank_of(self, *, tp_rank: int, pp_rank: int) -> int:
        return tp_rank + self.tp * pp_rank

    def layers(self, num_layers: int) -> range:
        """This rank's pipeline stage: a contiguous run of layers, the first stages one longer when uneven."""
        base, extra = divmod(num_layers, self.pp)
        start = self.pp_rank * base + min(self.pp_rank, extra)
        return range(start, start + base + (self.pp_rank < extra))


def _align_up(length: int, page_size: int) -> int:
    return -(-length // page_size) * page_size


def _enum_value(enum_type: type[enum.Enum], value: object, name: str) -> enum.Enum:
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)
        raise EngineConfigError(f"EngineConfig.{name} = {value!r}: use one of {allowed}") from None


def _require(condition: bool, name: str, what: str) -> None:
    if not condition:
        raise EngineConfigError(f"EngineConfig.{name} {what}")
