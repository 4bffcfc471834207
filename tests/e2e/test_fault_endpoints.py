"""The fault injector's HTTP endpoints on a real server: refusals with their reason, and a fault
that finds no target reported as such (in /kv_canary/injections and in the kv_canary_fault lines)."""

from __future__ import annotations

import pytest
import requests

from mock_models.faults.injection_log import FaultLogLine
from mock_models.faults.injector import NO_TARGET_RETRY_FORWARDS

pytestmark = pytest.mark.e2e


def inject(server, body: dict) -> requests.Response:
    return requests.post(f"{server.process.base_url}/kv_canary/inject", json=body, timeout=60)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"kind": "melt_the_gpu", "at_step": 1}, "kind"),
        ({"at_step": 1}, "kind"),
        ({"kind": "double_free", "at_step": 1, "when": "now"}, "when"),
        ({"kind": "double_free", "at_step": -1}, "at_step"),
        ({"kind": "double_free", "at_step": "1"}, "at_step"),
        ({"kind": "double_free", "at_step": 1, "target": {"slot": "anywhere"}}, "slot"),
    ],
)
def test_a_malformed_body_is_answered_422_naming_the_key(kv_canary_server, body, key):
    response = inject(kv_canary_server, body)
    assert response.status_code == 422
    assert any(key in map(str, error["loc"]) for error in response.json()["detail"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"kind": "double_free"}, "cannot inject double_free: say when to inject"),
        ({"kind": "double_free", "at_step": 1, "probability": 0.5, "seed": 1}, "keep one trigger"),
        (
            {"kind": "swap_next_token", "at_step": 1, "target": {"slot": "used"}},
            "target.slot does not apply to swap_next_token; it accepts request",
        ),
    ],
)
def test_a_body_that_cannot_be_applied_is_answered_400_with_the_reason(kv_canary_server, body, message):
    response = inject(kv_canary_server, body)
    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_an_swa_fault_is_refused_only_where_there_is_no_swa_pool(kv_canary_server, kv_canary_mode):
    response = inject(kv_canary_server, {"kind": "remap_swa_slot", "at_step": 10**6})
    if kv_canary_mode == "mha":
        assert response.status_code == 400 and "mode mha has no SWA pool" in response.json()["detail"]
        return
    fault_id = response.json()["fault_id"]
    (entry,) = [entry for entry in kv_canary_server.client.injections() if entry.fault_id == fault_id]
    assert (entry.kind, entry.status, entry.step) == ("remap_swa_slot", "scheduled", None)


def test_a_fault_that_finds_no_target_is_reported_no_target(kv_canary_server):
    client = kv_canary_server.client
    assert requests.post(f"{kv_canary_server.process.base_url}/flush_cache", timeout=60).status_code == 200
    first = client.forward_count() + 1
    fault_id = client.inject({"kind": "corrupt_kv_bytes", "at_step": first, "target": {"slot": "cached_unused"}})
    client.generate([5, 6, 7, 8], NO_TARGET_RETRY_FORWARDS + 8)  # the only request locks all that is cached
    (entry,) = [entry for entry in client.injections() if entry.fault_id == fault_id]
    assert (entry.status, entry.step) == ("no_target", None)
    assert entry.detail.startswith(f"no valid target right before forwards {first}..")
    assert "node that no running request locks" in entry.detail
    lines = [line for line in FaultLogLine.find_all(kv_canary_server.log_text()) if line.fault_id == fault_id]
    assert [line.status for line in lines] == ["scheduled", "no_target"]
    assert lines[-1].detail == entry.detail
