"""The runner's engine API on a live SGLang server: generation through SGLang, the rest through the
fault injector in its scheduler process (same paths and shapes as the mock server's)."""

from __future__ import annotations

from harness.runner.engine_client import EngineClient


class LiveSglangClient(EngineClient):
    def __init__(self, *, sglang_url: str, injector_url: str, token: str, timeout_s: float) -> None:
        super().__init__(injector_url, timeout_s=timeout_s, headers={"Authorization": f"Bearer {token}"})
        self._generate = EngineClient(sglang_url, timeout_s=timeout_s)

    def generate(self, input_ids: list[int], max_new_tokens: int) -> dict[str, object]:
        # ignore_eos: a dummy-weight model samples its EOS token at random, which would cut requests short
        # of the forwards a scenario plans for.
        return self._generate._call(
            "POST",
            "/generate",
            {"input_ids": input_ids, "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True}},
        )
