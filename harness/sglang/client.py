"""The runner's engine API on a live SGLang server: generation through SGLang, the rest through the
fault injector in its scheduler process (same paths and shapes as the mock server's)."""

from __future__ import annotations

from typing import Any

import requests

from harness.runner.engine_client import EngineClient
from harness.runner.errors import EngineHttpError


class LiveSglangClient(EngineClient):
    def __init__(self, *, sglang_url: str, injector_url: str, token: str, timeout_s: float) -> None:
        super().__init__(injector_url, timeout_s=timeout_s, headers={"Authorization": f"Bearer {token}"})
        self._generate = EngineClient(sglang_url, timeout_s=timeout_s)

    def generate(self, input_ids: list[int], max_new_tokens: int, *, rid: str | None = None) -> dict[str, Any]:
        # ignore_eos: a dummy-weight model samples its EOS token at random, which would cut requests short
        # of the forwards a scenario plans for.
        body: dict[str, object] = {
            "input_ids": input_ids,
            "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True},
        }
        if rid is not None:
            body["rid"] = rid
        return self._generate._call("POST", "/generate", body)

    def abort(self, rid: str) -> bool:
        """SGLang's own ``POST /abort_request``: it answers 200 with an empty body whether or not the request
        was still pending, so True means only that SGLang took the abort."""
        url = self._generate.base_url + "/abort_request"
        response = requests.post(url, json={"rid": rid}, timeout=self.timeout_s)
        if response.status_code != 200:
            raise EngineHttpError(f"POST /abort_request answered {response.status_code}: {response.text[:500]}")
        return True
