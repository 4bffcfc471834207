"""The token oracle: the next token is a hash of (seed, every token of the sequence so far).

The mock engine samples with it instead of an argmax, so outputs are reproducible and a test (and
the harness, which judges every run's outputs with it) knows the expected token at every position
without running a model. The engine advances an ``OracleState`` one token at a time;
``next_token`` recomputes from scratch, so the two are independent paths to the same answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_TOKEN_SALT = 0xD6E8FEB86659FD93


def _splitmix64(x: int) -> int:
    z = (x + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class OracleState:
    """The hash of a sequence prefix; ``advance`` folds in one more token."""

    digest: int
    length: int

    def advance(self, token: int) -> OracleState:
        return OracleState(digest=_splitmix64(self.digest ^ _splitmix64(token ^ _TOKEN_SALT)), length=self.length + 1)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TokenOracle:
    seed: int
    vocab_size: int

    def initial_state(self) -> OracleState:
        return OracleState(digest=_splitmix64(self.seed & _MASK), length=0)

    def state_after(self, tokens: Iterable[int], state: OracleState | None = None) -> OracleState:
        state = self.initial_state() if state is None else state
        for token in tokens:
            state = state.advance(token)
        return state

    def sample(self, state: OracleState) -> int:
        return _splitmix64(state.digest ^ state.length) % self.vocab_size

    def next_token(self, sequence: Sequence[int]) -> int:
        """The token that follows ``sequence``, computed from scratch."""
        return self.sample(self.state_after(sequence))

    def continuation(self, prompt: Sequence[int], max_new_tokens: int) -> list[int]:
        """What the engine must generate for ``prompt``: each token from the whole sequence before it."""
        sequence = list(prompt)
        for _ in range(max_new_tokens):
            sequence.append(self.next_token(sequence))
        return sequence[len(prompt) :]
