"""When a fault's next application is due, counted in forwards as ``engine.forward_count`` does.

* ``at_step: N``: right before forward N (at the next forward if N has passed when it is registered);
* ``after_warmup_steps: N``: the warm-up ends with the first DECODE forward after registration
  (a TARGET_VERIFY forward, under speculative decoding; forward W: the engine then has prompts
  cached and requests decoding); the fault is due right
  before forward W + N + 1, i.e. N forwards after the warm-up have run;
* ``probability: p`` with ``seed``: every forward after the warm-up draws, from ``random.Random(seed)``.

* kind ``none`` takes no trigger: its one application is due right before the next forward.

With ``count > 1`` the step triggers make the next application due at the forward after the
previous one resolved; a probability trigger keeps drawing.
"""

from __future__ import annotations

import random

from kv_canary_contract import FAULT_KIND_RULES
from mock_models.engine.engine import Engine
from mock_models.faults.fault_request import FaultSpec


class Trigger:
    def __init__(self, spec: FaultSpec, *, registered_at: int) -> None:
        self._spec = spec
        self._registered_at = registered_at
        self._warmup_end: int | None = None
        # (the draws, the chance each draw must beat) for a probability trigger
        self._draws = (random.Random(spec.seed), spec.probability) if spec.probability is not None else None
        self._next_step: int | None = spec.at_step
        if not FAULT_KIND_RULES[spec.kind].injects:  # kind none takes no trigger: at the next forward
            self._next_step = registered_at + 1

    def observe(self, engine: Engine) -> None:
        """Before each forward: note the end of the warm-up once a DECODE (or verify) forward has run."""
        batch = engine.last_forward_batch
        if (
            self._warmup_end is None
            and batch is not None
            # SGLang's ForwardMode (the live injector's) has these two, not the mock's is_generating.
            and (batch.forward_mode.is_decode() or batch.forward_mode.is_target_verify())
            and engine.forward_count > self._registered_at
        ):
            self._warmup_end = engine.forward_count
            if self._spec.after_warmup_steps is not None:
                self._next_step = self._warmup_end + self._spec.after_warmup_steps + 1

    def due(self, coming: int) -> bool:
        """Whether an application starts right before forward ``coming`` (a probability trigger draws here)."""
        if self._draws is not None:
            draws, probability = self._draws
            return self._warmup_end is not None and draws.random() < probability
        return self._next_step is not None and coming >= self._next_step

    def resolved(self, step: int) -> None:
        """An application resolved right before forward ``step``: the next one is due after it."""
        if self._draws is None:
            self._next_step = step + 1

    def describe(self) -> str:
        spec = self._spec
        if spec.probability is not None:
            return f"each forward after the warm-up with probability {spec.probability} (seed {spec.seed})"
        if spec.after_warmup_steps is not None:
            return f"{spec.after_warmup_steps} forwards after the warm-up (the first decode forward)"
        return f"right before forward {self._next_step}"
