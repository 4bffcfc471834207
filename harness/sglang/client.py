"""The runner's engine API on a live SGLang server: generation, aborts and cache flushes through SGLang,
the rest through the fault injector in its scheduler process (same paths and shapes as the mock server's)."""

from __future__ import annotations

from typing import Any

from harness.runner.engine_client import EngineClient


class LiveSglangClient(EngineClient):
    def __init__(self, *, sglang_url: str, injector_url: str, token: str, timeout_s: float) -> None:
        super().__init__(injector_url, timeout_s=timeout_s, headers={"Authorization": f"Bearer {token}"})
        self._sglang = EngineClient(sglang_url, timeout_s=timeout_s)

    def generate(self, input_ids: list[int], max_new_tokens: int, *, rid: str | None = None) -> dict[str, Any]:
        # ignore_eos: a dummy-weight model samples its EOS token at random, which would cut requests short
        # of the forwards a scenario plans for.
        body: dict[str, Any] = {
            "input_ids": input_ids,
            "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True},
        }
        if rid is not None:
            body["rid"] = rid
        return self._sglang._call("POST", "/generate", body)

    def abort(self, rid: str) -> bool:
        """SGLang's own ``POST /abort_request``: it answers 200 with an empty body whether or not the request
        was still pending, so True means only that SGLang took the abort (its answer says whether it landed)."""
        self._sglang._send("POST", "/abort_request", {"rid": rid})
        return True

    def flush_cache(self) -> None:
        self._sglang.flush_cache()
