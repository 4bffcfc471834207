"""The fault injector's HTTP server refuses what it must: without the run's token, from off the
loopback, unknown paths, bodies too large or not JSON objects; and only the loopback is bound."""

from __future__ import annotations

import types

import pytest
import requests

from harness.runner.ports import free_port
from sglang_faults.http_api import MAX_BODY_BYTES, HttpError, InjectorHttpServer, _Handler
from sglang_faults.settings import (
    MIN_TOKEN_LENGTH,
    PORT_VARIABLE,
    TOKEN_VARIABLE,
    InjectorSettings,
    InjectorSettingsError,
)

TOKEN = "a" * 64


class RecordingRoutes:
    def __init__(self) -> None:
        self.bodies: list[dict] = []

    def inject(self, body: dict) -> dict:
        self.bodies.append(body)
        if body.get("kind") == "refused":
            raise HttpError(400, "cannot inject refused")
        return {"fault_id": len(self.bodies)}

    def injections(self) -> dict:
        return {"injections": []}

    def violations(self) -> dict:
        return {"count": 0, "lines": [], "canary_enabled": True}

    def server_info(self) -> dict:
        return {"forward_count": 7}


@pytest.fixture
def injector():
    routes = RecordingRoutes()
    server = InjectorHttpServer(InjectorSettings(port=free_port(), token=TOKEN), routes)
    server.start()
    yield server, routes, f"http://{server.address[0]}:{server.address[1]}"
    server.stop()


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_it_binds_the_loopback_only(injector):
    server, _routes, _url = injector
    assert server.address[0] == "127.0.0.1"


def test_a_request_without_a_token_is_refused_and_reaches_no_route(injector):
    _server, routes, url = injector
    answer = requests.post(f"{url}/kv_canary/inject", json={"kind": "double_free"}, timeout=5)
    assert answer.status_code == 401
    assert "Authorization" in answer.json()["detail"]
    assert routes.bodies == []


def test_a_request_with_a_wrong_token_is_refused_and_reaches_no_route(injector):
    _server, routes, url = injector
    for headers in (auth("b" * 64), auth(TOKEN[:-1]), {"Authorization": TOKEN}):
        answer = requests.post(f"{url}/kv_canary/inject", json={"kind": "double_free"}, headers=headers, timeout=5)
        assert answer.status_code == 401
    assert requests.get(f"{url}/get_server_info", headers=auth("c" * 64), timeout=5).status_code == 401
    assert routes.bodies == []


def test_a_request_with_the_token_reaches_its_route(injector):
    _server, routes, url = injector
    answer = requests.post(f"{url}/kv_canary/inject", json={"kind": "double_free"}, headers=auth(), timeout=5)
    assert answer.status_code == 200 and answer.json() == {"fault_id": 1}
    assert routes.bodies == [{"kind": "double_free"}]
    assert requests.get(f"{url}/get_server_info", headers=auth(), timeout=5).json() == {"forward_count": 7}


def test_route_errors_keep_their_status(injector):
    _server, _routes, url = injector
    answer = requests.post(f"{url}/kv_canary/inject", json={"kind": "refused"}, headers=auth(), timeout=5)
    assert answer.status_code == 400 and answer.json()["detail"] == "cannot inject refused"


def test_unknown_paths_and_bad_bodies_are_refused(injector):
    _server, routes, url = injector
    assert requests.get(f"{url}/kv_canary/inject", headers=auth(), timeout=5).status_code == 404
    assert requests.post(f"{url}/flush_cache", headers=auth(), timeout=5).status_code == 404
    not_json = requests.post(f"{url}/kv_canary/inject", data=b"{", headers=auth(), timeout=5)
    assert not_json.status_code == 400
    not_object = requests.post(f"{url}/kv_canary/inject", json=[1], headers=auth(), timeout=5)
    assert not_object.status_code == 400
    too_large = requests.post(f"{url}/kv_canary/inject", data=b" " * (MAX_BODY_BYTES + 1), headers=auth(), timeout=5)
    assert too_large.status_code == 413
    assert routes.bodies == []


def test_a_peer_off_the_loopback_is_refused_before_its_token_is_read():
    handler = types.SimpleNamespace(client_address=("10.1.2.3", 40000), headers={"Authorization": f"Bearer {TOKEN}"})
    handler.token = TOKEN
    with pytest.raises(HttpError) as refused:
        _Handler._refuse_unless_allowed(handler)
    assert refused.value.status == 403


def test_no_variables_no_injector():
    assert InjectorSettings.from_env({}) is None


def test_settings_need_both_variables_a_port_and_a_long_token():
    assert InjectorSettings.from_env({PORT_VARIABLE: "4000", TOKEN_VARIABLE: TOKEN}) == InjectorSettings(
        port=4000, token=TOKEN
    )
    for environ, named in (
        ({PORT_VARIABLE: "4000"}, TOKEN_VARIABLE),
        ({TOKEN_VARIABLE: TOKEN}, PORT_VARIABLE),
        ({PORT_VARIABLE: "http", TOKEN_VARIABLE: TOKEN}, PORT_VARIABLE),
        ({PORT_VARIABLE: "70000", TOKEN_VARIABLE: TOKEN}, PORT_VARIABLE),
        ({PORT_VARIABLE: "4000", TOKEN_VARIABLE: "x" * (MIN_TOKEN_LENGTH - 1)}, TOKEN_VARIABLE),
    ):
        with pytest.raises(InjectorSettingsError, match=named):
            InjectorSettings.from_env(environ)
