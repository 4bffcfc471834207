"""Timing jitter in the HTTP layer: a random, seeded pause before a request reaches its handler and
before its answer starts, so submissions, aborts and disconnects reach the engine thread at other
points between its forwards (``mock_models/engine/jitter.py`` pauses the engine side).

Mounted by ``create_app`` when the engine's ``jitter_max_us`` is set; seeded from ``jitter_seed``
apart from the engine's own draws. The pauses are ``asyncio.sleep``: other requests go on meanwhile.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


class JitterMiddleware:
    """ASGI middleware: pause up to ``max_us`` microseconds before the handler and before the answer."""

    def __init__(self, app: AsgiApp, *, max_us: int, seed: int | str) -> None:
        self.app = app
        self.max_us = max_us
        self._rng = random.Random(seed)  # drawn on the event loop's thread only

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self._pause()

        async def send_after_a_pause(message: Message) -> None:
            if message["type"] == "http.response.start":
                await self._pause()
            await send(message)

        await self.app(scope, receive, send_after_a_pause)

    async def _pause(self) -> None:
        await asyncio.sleep(self._rng.randint(0, self.max_us) / 1e6)
