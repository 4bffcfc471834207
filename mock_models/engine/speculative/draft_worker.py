"""The draft worker: a chain of draft tokens per request, and the positions it drafted them at.

The draft head stands in for an EAGLE draft model. It proposes the oracle's next token, missing
about one token in four (a deterministic draw on the sequence), so that drafts are accepted and
rejected in every run. Like a draft model it reads the position it is fed: fed at a position that
is not its input token's, it drafts garbage (a model at the wrong RoPE position), every draft is
then rejected, and outputs stay exact.

As in SGLang, the draft steps advance one position counter, and the verify window is fed at
``[kv_len, kv_len + window)``, the positions a correct chain of steps fed its inputs at. A position
error of the draft steps alone (bug ``draft-decode-positions-off-by-one``) reaches only the draft
head: its drafts are rejected, outputs stay exact. ``shift_next_window`` (the
``draft_position_shift`` fault) shifts one request's next verify window by one, which the target
writes into its KV cache, where the canary guards it.
"""

from __future__ import annotations

import dataclasses

from kv_canary_contract.token_oracle import OracleState, TokenOracle
from mock_models.engine.bugs import NO_BUGS, EngineBugs
from mock_models.engine.request import Request

_MISS_ONE_IN = 4  # the draft head misses about one draft token in this many


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DraftWindow:
    """One request's verify window: its last sampled token, then the drafts, at ``positions``."""

    req: Request
    tokens: list[int]
    positions: list[int]
    accepted: int  # leading window tokens the target accepts: the last sampled one and the matching drafts
    accepted_state: OracleState  # the oracle's state after the accepted tokens


class DraftWorker:
    def __init__(self, *, oracle: TokenOracle, num_steps: int, bugs: EngineBugs = NO_BUGS) -> None:
        self.oracle = oracle
        self.num_steps = num_steps
        self.bugs = bugs
        self._shifted: set[str] = set()  # rids whose next window is fed one position off

    def shift_next_window(self, req: Request) -> None:
        self._shifted.add(req.rid)

    def window_size(self, reqs: list[Request]) -> int:
        """One window size for the batch (SGLang's draft_token_num is the batch's): the drafts plus the
        last sampled token, but no more than the fewest tokens any of the requests has left to generate."""
        return min([self.num_steps + 1] + [req.max_new_tokens - len(req.output_ids) for req in reqs])

    def draft(self, req: Request, window: int) -> DraftWindow:
        """Draft ``window - 1`` tokens after the request's last sampled token, at position ``req.kv_len``."""
        tokens = [req.fill_ids[req.kv_len]]
        state = req.oracle_state  # the oracle over the prompt and every sampled token: the window's first
        position = req.kv_len
        late = self.bugs.on("draft-decode-positions-off-by-one")
        for step in range(window - 1):
            if late and step > 0:
                # SGLang#25015: the counter advanced before the draft decode step instead of after the last.
                position += 1
            draft = self._draft_head(state, fed_at=position, input_position=req.kv_len + step)
            tokens.append(draft)
            state = state.advance(draft)
            if not late or step == 0:
                position += 1
        # The verify window is fed at the draft extend's positions: its first token's and one per draft.
        positions = list(range(req.kv_len, req.kv_len + window))
        if req.rid in self._shifted:
            self._shifted.discard(req.rid)
            positions = [p + 1 for p in positions]
        accepted, accepted_state = self._verify(req.oracle_state, tokens)
        return DraftWindow(
            req=req, tokens=tokens, positions=positions, accepted=accepted, accepted_state=accepted_state
        )

    def _draft_head(self, state: OracleState, *, fed_at: int, input_position: int) -> int:
        truth = self.oracle.sample(state)
        vocab = self.oracle.vocab_size
        wrong = (truth + 1 + (state.digest >> 17) % (vocab - 1)) % vocab
        if fed_at != input_position or (state.digest >> 7) % _MISS_ONE_IN == 0:
            return wrong
        return truth

    def _verify(self, state: OracleState, tokens: list[int]) -> tuple[int, OracleState]:
        """What the target accepts: the last sampled token, then each draft while it is the oracle's."""
        accepted = 1
        for draft in tokens[1:]:
            if draft != self.oracle.sample(state):
                break
            state = state.advance(draft)
            accepted += 1
        return accepted, state
