"""``swap_next_token``: feed the model a token other than the one the engine sampled and recorded.

A decoding request's next fed token is ``fill_ids[-1]``; the record (``req_token_ids``,
``output_ids``) keeps the sampled token, so the canary's write side sees the fed token differ
from the expected one. Only a DECODE forward feeds sampled tokens: while a prompt is prefilled
in chunks the fault waits (``NoTarget``) for the first decode forward, which reads it at once.
"""

from __future__ import annotations

from mock_models.faults.targets import FaultContext, NoTarget, next_forward_requests


def swap_next_token(context: FaultContext) -> str:
    engine = context.engine
    decoding = [req for req in next_forward_requests(context) if not req.needs_prefill and req.output_ids]
    if not decoding:
        raise NoTarget("the coming forward prefills prompts (EXTEND) and feeds no sampled token")
    req = decoding[0]
    sampled = req.fill_ids[-1]
    fed = (sampled + 1 + context.rng.randrange(engine.config.vocab_size - 1)) % engine.config.vocab_size
    req.fill_ids[-1] = fed
    return f"request {req.rid[:8]} position {len(req.fill_ids) - 1}: feeds token {fed} instead of the sampled {sampled}"
