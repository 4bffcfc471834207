"""Did the corruption reach the outputs? Every answer against the token oracle, and against the clean twin.

The mock engine samples with the token oracle (``kv_canary_contract.TokenOracle``), so an output
token is wrong only if the engine lost track of a sequence. What a corrupted read harms is the model's
output at a sampled position: the hidden state a sampler would read, which the server reports per
output token as a digest (``meta_info.output_digests``) beside the forward that sampled it
(``output_steps``, counted as violation lines count theirs). The same request in the clean twin run
(the scenario's workload without its faults and bugs) gives the reference: a request in a batch and
alone agree to about 1e-6, a read of the wrong K/V moves a digest by far more. The earliest output
that departs from either is the first harm; the canary must have spoken by then.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from kv_canary_contract import TokenOracle

DIGEST_TOLERANCE = 1e-3  # relative and absolute
MAX_KEPT = 10  # wrong outputs kept in a result; the count says how many there were


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Answer:
    """One request the run sent and what the server answered."""

    key: str  # names the request in the workload, the same in the run and its twin
    input_ids: tuple[int, ...]
    max_new_tokens: int
    output_ids: tuple[int, ...]
    output_steps: tuple[int, ...] | None  # None: the server does not say
    output_digests: tuple[float, ...] | None
    finish_reason: str | None

    @classmethod
    def from_generate(
        cls, *, key: str, input_ids: Sequence[int], max_new_tokens: int, answer: Mapping[str, Any]
    ) -> Answer:
        """Parse a ``/generate`` answer; a malformed one is the server's bug, said plainly (ValueError)."""
        output_ids = answer.get("output_ids")
        meta = answer.get("meta_info") or {}
        if not isinstance(output_ids, list) or not isinstance(meta, dict):
            raise ValueError(f"/generate answered without output_ids and meta_info: {dict(answer)!r:.300}")
        steps, digests = meta.get("output_steps"), meta.get("output_digests")
        finish = meta.get("finish_reason")
        try:
            return cls(
                key=key,
                input_ids=tuple(input_ids),
                max_new_tokens=max_new_tokens,
                output_ids=tuple(int(token) for token in output_ids),
                output_steps=tuple(int(step) for step in steps) if isinstance(steps, list) else None,
                # JSON has no NaN: a non-finite digest comes as the string "nan" or "inf", which float() reads
                output_digests=tuple(float(digest) for digest in digests) if isinstance(digests, list) else None,
                finish_reason=str(finish.get("type")) if isinstance(finish, dict) else None,
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"/generate answered a malformed output list ({error}): {dict(answer)!r:.300}") from None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class WrongOutput:
    request: str
    index: int  # which output of the request
    step: int | None  # the forward that sampled it; None when the server does not say
    why: str

    def describe(self) -> str:
        at = f" (step {self.step})" if self.step is not None else ""
        return f"output {self.index} of {self.request}{at}: {self.why}"

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> WrongOutput:
        return cls(request=payload["request"], index=payload["index"], step=payload["step"], why=payload["why"])


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class OutputCheck:
    answers: int  # requests answered and compared
    compared_with: str  # the reference: the token oracle, and the clean twin's digests where there is one
    wrong: tuple[WrongOutput, ...]  # the first wrong output of each request with one (MAX_KEPT, earliest first)
    wrong_count: int  # requests with a wrong output
    oracle_wrong_count: int  # of them, requests with a token other than the oracle's

    @property
    def first_wrong(self) -> WrongOutput | None:
        """The earliest harm: the wrong output sampled first (by step; one without a step comes last)."""
        return self.wrong[0] if self.wrong else None

    @property
    def first_wrong_step(self) -> int | None:
        first = self.first_wrong
        return first.step if first is not None else None

    def to_json(self) -> dict[str, object]:
        return {
            "answers": self.answers,
            "compared_with": self.compared_with,
            "wrong": [item.to_json() for item in self.wrong],
            "wrong_count": self.wrong_count,
            "oracle_wrong_count": self.oracle_wrong_count,
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> OutputCheck:
        return cls(
            answers=payload["answers"],
            compared_with=payload["compared_with"],
            wrong=tuple(WrongOutput.from_json(item) for item in payload["wrong"]),
            wrong_count=payload["wrong_count"],
            oracle_wrong_count=payload["oracle_wrong_count"],
        )


def check_outputs(
    answers: Sequence[Answer], oracle: TokenOracle, twin: Mapping[str, Answer] | None = None
) -> OutputCheck:
    """Each answer's tokens against the oracle and, with ``twin`` (its answers by key), its digests against
    the same request's in the twin."""
    wrong: list[WrongOutput] = []
    oracle_wrong = 0
    for answer in answers:
        token = _first_token_off_the_oracle(answer, oracle)
        oracle_wrong += token is not None
        reference = twin.get(answer.key) if twin is not None else None
        digest = _first_digest_off_the_twin(answer, reference) if reference is not None else None
        found = [item for item in (token, digest) if item is not None]
        if found:
            wrong.append(min(found, key=_order))
    wrong.sort(key=_order)
    compared_with = "the token oracle" + (" and the clean twin's digests" if twin is not None else "")
    return OutputCheck(
        answers=len(answers),
        compared_with=compared_with,
        wrong=tuple(wrong[:MAX_KEPT]),
        wrong_count=len(wrong),
        oracle_wrong_count=oracle_wrong,
    )


def _order(item: WrongOutput) -> tuple[bool, int, str, int]:
    return (item.step is None, item.step or 0, item.request, item.index)


def _step_of(answer: Answer, index: int) -> int | None:
    steps = answer.output_steps
    return steps[index] if steps is not None and index < len(steps) else None


def _first_token_off_the_oracle(answer: Answer, oracle: TokenOracle) -> WrongOutput | None:
    # Each expected token from the sequence as the engine recorded it, so one pass is linear.
    state = oracle.state_after(answer.input_ids)
    for index, token in enumerate(answer.output_ids):
        expected = oracle.sample(state)
        if token != expected:
            return WrongOutput(
                request=answer.key,
                index=index,
                step=_step_of(answer, index),
                why=f"token {token}, the token oracle's is {expected}",
            )
        state = state.advance(token)
    produced = len(answer.output_ids)
    if produced < answer.max_new_tokens and answer.finish_reason != "abort":
        return WrongOutput(
            request=answer.key,
            index=produced,
            step=None,
            why=f"the answer ended after {produced} of {answer.max_new_tokens} tokens "
            f"(finish reason {answer.finish_reason})",
        )
    return None


def _first_digest_off_the_twin(answer: Answer, twin: Answer) -> WrongOutput | None:
    if answer.output_digests is None or twin.output_digests is None:
        return None
    for index, (digest, reference) in enumerate(zip(answer.output_digests, twin.output_digests, strict=False)):
        if not math.isclose(digest, reference, rel_tol=DIGEST_TOLERANCE, abs_tol=DIGEST_TOLERANCE):
            return WrongOutput(
                request=answer.key,
                index=index,
                step=_step_of(answer, index),
                why=f"the hidden state it was sampled from departs from the clean twin's "
                f"(digest {digest:.6g}, the twin's {reference:.6g})",
            )
    return None
