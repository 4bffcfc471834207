"""Hypothesis state machines: random traffic through the mock engine with the canary on.

``CleanEngineMachine`` interleaves arrivals (on shared prefixes, cut anywhere, so radix nodes
split), forwards, aborts (mid-prefill, between chunks cached as they complete, and mid-decode),
cache flushes and, through small pools, eviction, SWA tombstoning and (with ``new_token_ratio``
below 1) retraction; half the cases run the overlap scheduler; decodes run past the window.
After every rule: no violation, no misread (``KvShadow``), every finished request equals the token
oracle, and the engine's bookkeeping adds up.

``FaultEngineMachine`` does the same and injects one fault of a random kind of the contract (docs/DESIGN.md) before a
random forward. The canary must stay silent before it and, if the corruption is ever read (or
swept), report a violation no later than the first forward that reads (or sweeps) it.
"""

from __future__ import annotations

import random
import time

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kv_canary import CanaryConfig, CanaryMode, RealKvHashMode
from kv_canary_contract import TARGET_VALUES, Fault, fault_kinds_in_mode, model_mode
from mock_models.config import EngineConfig, ModelMode
from mock_models.engine.build import build_engine
from mock_models.engine.disaggregation import DisaggregatedEngine
from mock_models.engine.engine import Engine
from mock_models.faults import FaultInjector
from mock_models.faults.fault_request import FaultRequestError
from mock_models.faults.fault_request import resolve as resolve_fault
from tests.reliability.engine_invariants import check_engine_idle, check_engine_invariants
from tests.reliability.kv_shadow import KvShadow
from tests.reliability.local_faults import KV_BYTE_SLOTS, PendingFault, apply_fault
from tests.reliability.soak_stats import record_case

PREFIXES = 3
MAX_PROMPT_SUFFIX = 16
MAX_NEW_TOKENS = 24
MAX_CONTEXT = 128
DRAIN_LIMIT = 2000  # forwards; a case that needs more is stuck
FILLER_TOKENS = (1001, 1002, 1003, 1004, 1005, 1006)  # outside the prefixes' and suffixes' token ranges


def engine_settings(draw: st.DrawFn, mode: str, *, faults: bool) -> tuple[EngineConfig, CanaryConfig]:
    page_size = draw(st.sampled_from([1, 2, 4]))
    window = draw(st.sampled_from([4, 6, 8, 16]))
    chunk = draw(st.sampled_from([8, 16, 64]))
    # Below 1, admission reserves part of each decode and a decode short of pages retracts requests.
    new_token_ratio = draw(st.sampled_from([1.0, 0.5, 0.0]))
    retracting = new_token_ratio < 1
    # 96..224 tokens: two to four requests of up to 80 tokens fill it, so the radix cache evicts; with
    # retraction a smaller pool and several requests at once make decodes run short of pages.
    pages = draw(st.integers(96 // page_size, (128 if retracting else 224) // page_size))
    least_swa_pool = mode != "mha" and draw(st.booleans())
    engine = EngineConfig(
        model_mode=ModelMode(mode),
        page_size=page_size,
        max_total_tokens=pages * page_size,
        swa_window=window,
        chunked_prefill_size=chunk,
        max_running_requests=draw(st.integers(2 if retracting else 1, 4)),
        max_context_len=MAX_CONTEXT,
        strict_allocator=not faults,
        overlap_schedule=draw(st.booleans()),
        new_token_ratio=new_token_ratio,
    )
    if least_swa_pool:  # the least SWA pool allowed, for SWA pressure
        engine = engine.replace(
            swa_max_total_tokens=engine.swa_request_budget(uncached_tokens=engine.max_total_tokens, max_new_tokens=0)
        )
    # Fault cases too run without a real-KV hash: record checks alone must then see every fault
    # but corrupt_kv_bytes (which finds no target, or in the injector goes unread by the oracle).
    real_kv = draw(st.sampled_from([RealKvHashMode.PARTIAL, RealKvHashMode.ALL, RealKvHashMode.NONE]))
    canary = CanaryConfig(
        mode=CanaryMode.LOG,
        real_kv_hash=real_kv,
        sweep_interval=draw(st.sampled_from([1, 2, 3, 5])),
        verify_capacity=2048,
        write_capacity=256,
        max_requests_per_forward=8,
        stats_interval=5,
        health_check_interval=4,
        health_check_warmup=4,
        swa_divergence_interval=3 if mode == "swa" else 0,
        check_lost_writes=real_kv is not RealKvHashMode.NONE,
    )
    return engine, canary


class CleanEngineMachine(RuleBasedStateMachine):
    mode = "mha"
    machine = "clean"

    def __init__(self) -> None:
        super().__init__()
        self.engine: Engine | None = None
        self.started = time.perf_counter()
        self.live: dict[str, tuple[list[int], int]] = {}
        self.counts = {"submitted": 0, "finished": 0, "aborted": 0, "flushed": 0}

    # -- set-up -------------------------------------------------------------------------------------

    @initialize(data=st.data(), prefix_seed=st.integers(0, 2**16))
    def build(self, data: st.DataObject, prefix_seed: int) -> None:
        engine_config, canary_config = data.draw(
            st.composite(lambda draw: engine_settings(draw, self.mode, faults=self.machine != "clean"))(),
            label="settings",
        )
        engine_config = engine_config.replace(**self.draw_feature(data, engine_config))
        if getattr(self, "kind", None) == "swap_next_token":
            engine_config = engine_config.replace(overlap_schedule=False)  # why: fault_kinds
        self.engine = build_engine(engine_config, canary_config=canary_config)
        # The shadow follows forwards: a feature that moves KV outside them (a transfer, a load-back
        # from the host) is judged by the canary, the oracle and the bookkeeping alone.
        self.shadow = KvShadow(self.engine) if self.shadowed(engine_config) else None
        rng = random.Random(prefix_seed)
        # Prefix tokens from a small range and suffix tokens from a tiny one: requests often share
        # more than the prefix they were built on, which splits radix nodes at odd places.
        self.prefixes = [[rng.randrange(1, 40) for _ in range(rng.randrange(4, 41))] for _ in range(PREFIXES)]
        self.evictions = 0
        evict = self.engine.radix_cache.evict

        def counting_evict(num_tokens: int) -> int:
            self.evictions += 1
            return evict(num_tokens)

        self.engine.radix_cache.evict = counting_evict
        self.retractions = 0
        retract = self.engine.kv_cache.retract

        def counting_retract(req) -> None:
            self.retractions += 1
            retract(req)

        self.engine.kv_cache.retract = counting_retract

    def draw_feature(self, data: st.DataObject, config: EngineConfig) -> dict[str, object]:
        """Engine-feature settings for this case (none: a plain engine)."""
        del data, config
        return {}

    @staticmethod
    def shadowed(config: EngineConfig) -> bool:
        return config.disaggregation == "none" and config.host_tier_tokens == 0

    # -- rules --------------------------------------------------------------------------------------

    @rule(
        prefix=st.integers(-1, PREFIXES - 1),
        cut=st.integers(0, 40),
        suffix=st.lists(st.integers(1, 6), max_size=MAX_PROMPT_SUFFIX),
        max_new_tokens=st.integers(1, MAX_NEW_TOKENS),
    )
    def submit(self, prefix: int, cut: int, suffix: list[int], max_new_tokens: int) -> None:
        prompt = (self.prefixes[prefix][:cut] if prefix >= 0 else []) + suffix
        self.send(prompt or [7], max_new_tokens)

    def send(self, prompt: list[int], max_new_tokens: int) -> None:
        # Deterministic ids: the abort rule draws from them, and a replayed case must draw the same.
        rid = self.engine.submit(prompt, max_new_tokens, rid=f"r{self.counts['submitted']:04d}")
        self.live[rid] = (prompt, max_new_tokens)
        self.counts["submitted"] += 1

    @rule(forwards=st.integers(1, 4))
    def step(self, forwards: int) -> None:
        for _ in range(forwards):
            if not self.engine.has_work():
                return
            self.forward()

    @precondition(lambda self: self.engine is not None and self.live)
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.live)), label="rid")
        aborted = self.on_engine(lambda: self.engine.abort(rid))
        if aborted is None:
            return
        assert aborted, f"{rid} is waiting or running, yet abort did not find it"
        del self.live[rid]
        self.counts["aborted"] += 1

    @rule()
    def flush_cache(self) -> None:
        idle = not self.engine.has_work()
        flushed = self.on_engine(self.engine.flush_cache)
        if flushed is None:
            return
        assert flushed is idle
        if idle:
            assert self.engine.radix_cache.total_size() == 0
            self.counts["flushed"] += 1

    def on_engine(self, call):
        """Call the engine between forwards; a clean engine must never raise."""
        return call()

    # -- checks -------------------------------------------------------------------------------------

    @invariant()
    def nothing_is_corrupt(self) -> None:
        if self.engine is None or not self.judging_as_clean():
            return
        assert self.misreads == [], f"the engine misread its KV cache: {self.misreads[:5]}"
        for canary in self.engine.canaries:
            stats = canary.stats_snapshot()
            assert stats["violations_total"] == 0, [record.format() for record in canary.violations]
            assert stats["plan_overflow_entries"] == 0
        for engine in self.engines:
            check_engine_invariants(engine)

    @property
    def misreads(self) -> list:
        return [] if self.shadow is None else self.shadow.events

    @property
    def engines(self) -> list[Engine]:
        """The engine and, disaggregated, its prefill engine (none before the machine's set-up)."""
        if self.engine is None:
            return []
        return [self.engine, *([self.engine.prefill] if isinstance(self.engine, DisaggregatedEngine) else [])]

    def judging_as_clean(self) -> bool:
        return True

    def forward(self) -> None:
        self.check_results(self.engine.step())

    def check_results(self, results) -> None:
        for result in results:
            prompt, max_new_tokens = self.live.pop(result.rid)
            assert list(result.output_ids) == self.engine.oracle.continuation(prompt, max_new_tokens), result.rid
            self.counts["finished"] += 1

    def drain(self) -> None:
        for _ in range(DRAIN_LIMIT):
            if not self.engine.has_work() or getattr(self, "engine_error", None):
                return
            self.forward()
        raise AssertionError(
            f"still busy after {DRAIN_LIMIT} forwards: {self.engine.num_running} running, "
            f"{self.engine.num_waiting} waiting"
        )

    def teardown(self) -> None:
        if self.engine is None:
            return
        self.drain()
        for engine in self.engines:
            check_engine_idle(engine)
        for canary in self.engine.canaries:
            canary.flush()
        self.nothing_is_corrupt()
        assert not self.live
        record_case(self.case_figures(violations=sum(len(canary.violations) for canary in self.engine.canaries)))

    def case_figures(self, **extra: object) -> dict[str, object]:
        config = self.engine.config
        return {
            "machine": self.machine,
            "mode": self.mode,
            "page_size": config.page_size,
            "real_kv": self.engine.canary_config.real_kv_hash.value,
            "forwards": self.engine.forward_count,
            "misreads": None if self.shadow is None else self.shadow.num_events,
            "reads_checked": None if self.shadow is None else self.shadow.reads_checked,
            "feature": _feature(config),
            "evictions": self.evictions,
            "retractions": self.retractions,
            "overlap_schedule": config.overlap_schedule,
            "new_token_ratio": config.new_token_ratio,
            "seconds": round(time.perf_counter() - self.started, 3),
            **self.counts,
            **extra,
        }


class CleanFeatureMachine(CleanEngineMachine):
    """The clean machine with one engine feature on per case: speculative decoding (drafts accepted
    and rolled back), the host tier (offload and load-back cycles) or disaggregation (transfers)."""

    machine = "clean_feature"

    def draw_feature(self, data: st.DataObject, config: EngineConfig) -> dict[str, object]:
        # The features run on the plain scheduler: no overlap, no retraction.
        plain: dict[str, object] = {"overlap_schedule": False, "new_token_ratio": 1.0}
        feature = data.draw(st.sampled_from(["speculative", "host_tier", "disaggregation"]), label="feature")
        if feature == "speculative":  # below the chunk (8 at least): the window's SWA rows are in the budget
            steps = data.draw(st.sampled_from([1, 2, 4]), label="speculative_num_steps")
            return plain | {"speculative_num_steps": steps}
        if feature == "host_tier":
            pages = data.draw(st.sampled_from([8, 32, 128]), label="host_tier_pages")
            return plain | {"host_tier_tokens": pages * config.page_size}
        return plain | {"disaggregation": "prefill_decode"}


def _feature(config: EngineConfig) -> str:
    if config.disaggregation != "none":
        return "disaggregation"
    if config.host_tier_tokens:
        return "host_tier"
    return "speculative" if config.speculative_num_steps else "none"


class FaultEngineMachine(CleanEngineMachine):
    """One fault per case from ``local_faults`` (broad random targets), applied before forward ``at_step``."""

    machine = "fault"

    def __init__(self) -> None:
        super().__init__()
        self.kind: str | None = None
        self.target: object = None  # what the fault aims at: a target key's value, or a target mapping
        self.at_step = 0
        self.fault: PendingFault | None = None
        self.engine_error: str | None = None  # what stopped the engine after the fault, if anything

    @initialize(data=st.data())
    def choose_fault(self, data: st.DataObject) -> None:
        self.kind = data.draw(st.sampled_from(self.fault_kinds()), label="kind")
        self.target = (
            data.draw(st.sampled_from(KV_BYTE_SLOTS), label="target") if self.kind == "corrupt_kv_bytes" else None
        )
        self.at_step = data.draw(st.integers(1, 40), label="at_step")
        self.fault_rng = random.Random(data.draw(st.integers(0, 2**16), label="fault_seed"))
        self.fault = None

    def fault_kinds(self) -> tuple[str, ...]:
        """The contract's kinds a plain engine gives something to corrupt (``engine_settings`` turns no
        feature on: no transfer, host tier or speculative decoding to fault). Not swap_next_token under
        the overlap scheduler: its appliers rewrite the token a decoding request was fed last, which the
        overlap scheduler has already fed to the forward in flight, so the edit reaches no K/V and no
        record while the read oracle counts it as a misread. ``build`` turns overlap off for a case that
        drew it first."""
        kinds = fault_kinds_in_mode(model_mode(self.mode), engine={})
        engine = getattr(self, "engine", None)
        if engine is not None and engine.config.overlap_schedule:
            return tuple(kind for kind in kinds if kind != "swap_next_token")
        return kinds

    @property
    def fault_step(self) -> int | None:
        """The forward the fault was applied before; None until it is."""
        return None if self.fault is None else self.fault.step

    @property
    def fault_detail(self) -> str:
        return "" if self.fault is None else self.fault.detail

    @property
    def fault_target(self) -> object:
        return self.fault.target if self.fault is not None else self.target

    def judging_as_clean(self) -> bool:
        return self.fault_step is None

    def on_engine(self, call):
        """After the fault, an engine that raises is a breakdown: recorded, and the case ends; None then."""
        if self.engine_error is not None:
            return None
        try:
            return call()
        except Exception as error:
            if self.fault_step is None:
                raise  # before the fault: the engine was still clean
            self.engine_error = f"{type(error).__name__}: {error}"
            return None

    def before_forward(self) -> None:
        assert self.engine is not None and self.kind is not None, "choose_fault runs first"
        if self.fault is None and self.engine.forward_count >= self.at_step:
            target = self.target if isinstance(self.target, str) else None
            self.fault = apply_fault(self.engine, self.kind, self.fault_rng, target=target)

    def forward(self) -> None:
        # A fault may leave the bookkeeping inconsistent (a remapped row cached, a slot owned twice), so
        # after it only the canary (and the oracle's outputs) are judged; if the engine breaks down, the
        # case ends there.
        if self.engine_error is not None:
            return
        self.before_forward()
        results = self.on_engine(self.engine.step)
        if results is not None:
            self.check_results(results)

    def teardown(self) -> None:
        if self.engine is None or self.kind is None:
            return
        self.let_the_fault_apply()
        if self.fault_step is not None:
            self.let_its_readers_read()
        engine = self.engine
        try:
            engine.canary.flush()
        except Exception as error:
            raise AssertionError(f"the canary could not drain after {self.engine_error}") from error
        violations = engine.canary.violations
        stats = engine.canary.stats_snapshot()
        assert stats["violations_total"] == len(violations) + engine.canary.reporter.dropped_rows
        fault_step = self.fault_step
        figures = {
            "kind": self.kind,
            "target": self.fault_target,
            "fault_step": fault_step,
            "violations": len(violations),
            "engine_error": self.engine_error,
        }
        if fault_step is None:
            assert not violations and not self.shadow.events, "violations or misreads without a fault"
            record_case(self.case_figures(**figures))
            return
        early = [record.format() for record in violations if record.step < fault_step]
        assert not early, f"violations before the fault, applied before forward {fault_step}: {early[:3]}"
        before = [event for event in self.shadow.events if event.forward < fault_step]
        assert not before, f"misreads before the fault: {before[:3]}"
        first_misread = self.shadow.first_event
        first_violation = min((record.step for record in violations), default=None)
        figures.update(
            first_misread=first_misread.forward if first_misread else None,
            first_violation=first_violation,
            detail=self.fault_detail,
        )
        in_bound = first_misread is None or (first_violation is not None and first_violation <= first_misread.forward)
        if first_misread is not None:
            figures.update(
                detected_in_bound=in_bound,
                latency=first_violation - fault_step if in_bound and first_violation is not None else None,
            )
        record_case(self.case_figures(**figures))
        assert in_bound, (
            f"{self.kind} ({self.fault_detail}) applied before forward {self.fault_step}: first misread "
            f"{first_misread}, but the first violation is at forward {first_violation}"
        )

    def let_the_fault_apply(self) -> None:
        """Run traffic until the fault applies: some kinds need running requests or a prefix match."""
        filler = 0
        while self.fault_step is None and self.engine.forward_count < self.at_step + 200 and not self.engine_error:
            if not self.engine.has_work():
                base = self.prefixes[filler % PREFIXES]
                self.send(base[: len(base) // 2 + filler % 3] + list(FILLER_TOKENS[: 1 + filler % 5]), 6)
                filler += 1
            self.forward()

    def let_its_readers_read(self) -> None:
        """Every request the fault may touch reads again, and a sweep pass runs over the cache."""
        self.drain()
        step, sweep = self.fault_step, self.engine.canary.config.sweep_interval
        assert step is not None, "called once the fault was applied"
        while self.engine.forward_count < step + sweep and self.engine_error is None:
            self.send(list(FILLER_TOKENS), 2)
            self.drain()


class InjectorEngineMachine(FaultEngineMachine):
    """One fault per case through the server's own injector (``mock_models.faults``), as the harness
    schedules it: a random ``/kv_canary/inject`` body (kind, trigger, target keys), registered before
    the first forward, applied by the injector's step hook with its own target choice."""

    machine = "injector"

    @initialize(data=st.data())
    def choose_fault(self, data: st.DataObject) -> None:
        self.kind = data.draw(st.sampled_from(self.fault_kinds()), label="kind")
        trigger = data.draw(st.sampled_from(["at_step", "after_warmup_steps", "probability"]), label="trigger")
        body: dict[str, object] = {"kind": self.kind}
        self.at_step = 0
        if trigger == "probability":
            body.update(probability=data.draw(st.sampled_from([0.1, 0.3, 1.0])), seed=data.draw(st.integers(0, 99)))
        else:
            body[trigger] = steps = data.draw(st.integers(0, 30 if trigger == "at_step" else 8), label=trigger)
            self.at_step = steps if trigger == "at_step" else 0
        # Any target keys: a combination the server refuses (400) falls back to the kind's defaults.
        target = {
            key: data.draw(st.sampled_from(values), label=f"target.{key}")
            for key, values in TARGET_VALUES.items()
            if data.draw(st.integers(0, 2)) == 0
        }
        body["target"] = target
        self.body = body
        self.target = target
        self.injector: FaultInjector | None = None
        self.refused: str | None = None

    @property
    def entry(self):
        return None if self.injector is None or not self.injector.log.entries else self.injector.log.entries[0]

    @property
    def fault_step(self) -> int | None:
        entry = self.entry
        return entry.step if entry is not None and entry.status == "applied" else None

    @property
    def fault_detail(self) -> str:
        refused = f" (asked {self.body['target']}, refused: {self.refused})" if self.refused else ""
        return (self.entry.detail if self.entry is not None else "") + refused

    @property
    def fault_target(self) -> object:
        return self.target

    def before_forward(self) -> None:
        assert self.engine is not None, "the engine is built first"
        if self.injector is not None:
            return
        try:
            spec = resolve_fault(Fault.model_validate(self.body), self.engine.config, canary_installed=True)
        except FaultRequestError as refused:  # what the server answers 400: fall back to the defaults
            self.refused, self.target = str(refused), {}
            spec = resolve_fault(
                Fault.model_validate({**self.body, "target": {}}), self.engine.config, canary_installed=True
            )
        self.injector = FaultInjector.install(self.engine)
        self.injector.schedule(spec)

    def let_the_fault_apply(self) -> None:
        self.before_forward()
        filler = 0
        while (
            self.entry.status == "scheduled" and self.engine_error is None and self.engine.forward_count < DRAIN_LIMIT
        ):
            if not self.engine.has_work():
                base = self.prefixes[filler % PREFIXES]
                self.send(base[: len(base) // 2 + filler % 3] + list(FILLER_TOKENS[: 1 + filler % 5]), 6)
                filler += 1
            self.forward()
