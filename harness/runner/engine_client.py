"""The engine's HTTP API as the runner uses it; every shape it relies on is parsed here, in one place."""

from __future__ import annotations

import dataclasses
from typing import Any

import requests

from harness.injections import Injection
from harness.runner.errors import EngineHttpError


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ViolationSnapshot:
    count: int  # violations the engine has recorded (overflowed ring rows included)
    lines: tuple[str, ...]


class EngineClient:
    """Thread-safe: each call opens its own connection (the workload calls ``generate`` from threads)."""

    def __init__(self, base_url: str, *, timeout_s: float, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.headers = headers or {}

    def generate(self, input_ids: list[int], max_new_tokens: int, *, rid: str | None = None) -> dict[str, Any]:
        """``rid`` names the request for ``abort``; an aborted one answers with finish_reason ``abort``."""
        body: dict[str, object] = {"input_ids": input_ids, "sampling_params": {"max_new_tokens": max_new_tokens}}
        if rid is not None:
            body["rid"] = rid
        return self._call("POST", "/generate", body)

    def abort(self, rid: str) -> bool:
        """SGLang's ``POST /abort_request``: drop request ``rid``; False if it was not pending any more."""
        answer = self._call("POST", "/abort_request", {"rid": rid})
        aborted = answer.get("aborted")
        if not isinstance(aborted, int):
            raise EngineHttpError(f"POST /abort_request has no integer 'aborted': {answer!r}")
        return aborted > 0

    def flush_cache(self) -> None:
        """``POST /flush_cache``: empty the radix cache; refused (mock: 409, SGLang: 400) unless idle.
        SGLang answers with text, the mock server with JSON: only the status counts."""
        self._send("POST", "/flush_cache")

    def server_info(self) -> dict[str, Any]:
        return self._call("GET", "/get_server_info")

    def forward_count(self) -> int:
        info = self.server_info()
        count = info.get("forward_count")
        if not isinstance(count, int):
            raise EngineHttpError(f"GET /get_server_info has no integer 'forward_count': {info!r}")
        return count

    def inject(self, fault_body: dict[str, object]) -> int:
        answer = self._call("POST", "/kv_canary/inject", fault_body)
        fault_id = answer.get("fault_id")
        if not isinstance(fault_id, int):
            raise EngineHttpError(f"POST /kv_canary/inject answered without an integer 'fault_id': {answer!r}")
        return fault_id

    def injections(self) -> list[Injection]:
        answer = self._call("GET", "/kv_canary/injections")
        entries = answer.get("injections")
        if not isinstance(entries, list):
            raise EngineHttpError(f"GET /kv_canary/injections has no 'injections' list: {answer!r}")
        try:
            return [Injection.from_json(entry) for entry in entries]
        except (ValueError, AttributeError) as error:
            raise EngineHttpError(f"GET /kv_canary/injections: {error}") from None

    def flush_violations(self) -> ViolationSnapshot:
        """Also makes the engine drain its violation ring into the log."""
        answer = self._call("GET", "/kv_canary/violations")
        count, lines = answer.get("count"), answer.get("lines")
        if not isinstance(count, int) or not isinstance(lines, list):
            raise EngineHttpError(f"GET /kv_canary/violations is not {{count: int, lines: [str]}}: {answer!r}")
        return ViolationSnapshot(count=count, lines=tuple(map(str, lines)))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self._send(method, path, body)
        try:
            answer = response.json()
        except ValueError:
            raise EngineHttpError(f"{method} {path} answered non-JSON: {response.text[:500]}") from None
        if not isinstance(answer, dict):
            raise EngineHttpError(f"{method} {path} answered {answer!r}, expected a JSON object")
        return answer

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        response = requests.request(
            method, self.base_url + path, json=body, headers=self.headers, timeout=self.timeout_s
        )
        if response.status_code != 200:
            raise EngineHttpError(f"{method} {path} answered {response.status_code}: {response.text[:500]}")
        return response
