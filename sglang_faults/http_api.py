"""The injector's HTTP server: 127.0.0.1 only, every request checked for the run's token.

Refusals, in the order they are checked: a peer that is not on the loopback (403; the socket is
bound to 127.0.0.1, so only a local relay could bring one), no ``Authorization: Bearer`` header
(401), a wrong token (401), an unknown path (404), a body over ``MAX_BODY_BYTES`` (413) or not a
JSON object (400). The routes are the mock server's (docs/HARNESS.md): ``POST /kv_canary/inject``,
``GET /kv_canary/injections``, ``GET /kv_canary/violations``, ``GET /get_server_info``.
"""

from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import threading
from typing import Protocol

from sglang_faults.settings import LOOPBACK, InjectorSettings

MAX_BODY_BYTES = 64 * 1024


class HttpError(Exception):
    def __init__(self, status: int, detail: object) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class InjectorRoutes(Protocol):
    def inject(self, body: dict) -> dict: ...

    def injections(self) -> dict: ...

    def violations(self) -> dict: ...

    def server_info(self) -> dict: ...


class InjectorHttpServer:
    def __init__(self, settings: InjectorSettings, routes: InjectorRoutes) -> None:
        handler = type("InjectorRequestHandler", (_Handler,), {"routes": routes, "token": settings.token})
        self._server = http.server.ThreadingHTTPServer((LOOPBACK, settings.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="kv-canary-fault-injector", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: InjectorRoutes
    token: str

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def log_message(self, format: str, *args: object) -> None:
        pass  # the scheduler's log is the run's record; request lines would drown it

    def _answer(self, method: str) -> None:
        try:
            self._refuse_unless_allowed()
            status, answer = 200, self._route(method)
        except HttpError as error:
            status, answer = error.status, {"detail": error.detail}
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _refuse_unless_allowed(self) -> None:
        if not ipaddress.ip_address(self.client_address[0]).is_loopback:
            raise HttpError(403, "the fault injector answers loopback clients only")
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise HttpError(401, "no 'Authorization: Bearer <token>' header; the harness passes the run's token")
        if not hmac.compare_digest(header.removeprefix("Bearer ").encode(), self.token.encode()):
            raise HttpError(401, "wrong token for this run")

    def _route(self, method: str) -> dict:
        path = self.path.split("?", 1)[0]
        if (method, path) == ("POST", "/kv_canary/inject"):
            return self.routes.inject(self._json_body())
        gets = {
            "/kv_canary/injections": self.routes.injections,
            "/kv_canary/violations": self.routes.violations,
            "/get_server_info": self.routes.server_info,
        }
        if method == "GET" and path in gets:
            return gets[path]()
        raise HttpError(404, f"no route {method} {path}")

    def _json_body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise HttpError(413, f"body of {length} bytes; at most {MAX_BODY_BYTES}")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError as error:
            raise HttpError(400, f"body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object (the fault mapping)")
        return body
