"""``swap_next_token``: feed the model a token other than the one the engine sampled and recorded.

A decoding request's next fed token is ``fill_ids[-1]``; the record (``req_token_ids``,
``output_ids``) keeps the sampled token, so the canary's write side sees the fed token differ
from the expected one.
"""

from __future__ import annotations

from mock_models.faults.targets import FaultContext, NoTarget, decoding_requests


def swap_next_token(context: FaultContext) -> str:
    engine = context.engine
    requests = decoding_requests(engine)
    if not requests:
        raise NoTarget("no running request is decoding (has a sampled token still to feed)")
    req = requests[0]
    sampled = req.fill_ids[-1]
    fed = (sampled + 1 + context.rng.randrange(engine.config.vocab_size - 1)) % engine.config.vocab_size
    req.fill_ids[-1] = fed
    return f"request {req.rid[:8]} position {len(req.fill_ids) - 1}: feeds token {fed} instead of the sampled {sampled}"
