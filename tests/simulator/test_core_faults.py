"""Injected faults through the admin API: each kind, matching, counts, and bad admin input."""

from __future__ import annotations

import pytest
import requests

from tests.simulator.conftest import SimHandle


@pytest.fixture
def clean(sim: SimHandle):  # type: ignore[no-untyped-def]
    sim.admin("DELETE", "/_sim/faults")
    yield sim
    sim.admin("DELETE", "/_sim/faults")


def add(sim: SimHandle, **spec: object) -> dict:  # type: ignore[type-arg]
    r = sim.admin("POST", "/_sim/faults", spec)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_throttle_storm_then_recovers(clean: SimHandle) -> None:
    sim = clean
    tid = sim.tenant_ids[0]
    token = sim.app_token(tid)
    add(sim, kind="throttle", match={"tenant": tid, "path_prefix": "/v1.0/users"}, count=3, retry_after=0.25)
    got = [sim.get("/v1.0/users?$top=1", token) for _ in range(4)]
    assert [r.status_code for r in got] == [429, 429, 429, 200]
    assert got[0].headers["Retry-After"] == "0.25"
    assert got[0].json()["error"]["code"] == "TooManyRequests"


def test_status_fault_with_method_match(clean: SimHandle) -> None:
    sim = clean
    token = sim.app_token(sim.tenant_ids[0])
    add(sim, kind="status", match={"method": "GET", "path_prefix": "/v1.0/devices"}, status=503, retry_after=1)
    r = sim.get("/v1.0/devices?$top=1", token)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json()["error"]["code"] == "serviceNotAvailable"
    assert sim.get("/v1.0/devices?$top=1", token).status_code == 200


def test_tenant_match_only_hits_that_tenant(clean: SimHandle) -> None:
    sim = clean
    a, b = sim.tenant_ids[:2]
    ta, tb = sim.app_token(a), sim.app_token(b)
    add(sim, kind="status", match={"tenant": b, "path_prefix": "/v1.0/"}, status=500)
    assert sim.get("/v1.0/users?$top=1", ta).status_code == 200
    assert sim.get("/v1.0/users?$top=1", tb).status_code == 500


def test_connection_reset(clean: SimHandle) -> None:
    sim = clean
    token = sim.app_token(sim.tenant_ids[0])
    add(sim, kind="reset", match={"path_prefix": "/v1.0/groups"})
    with pytest.raises(requests.ConnectionError):
        sim.get("/v1.0/groups?$top=1", token)
    assert sim.get("/v1.0/groups?$top=1", token).status_code == 200


def test_truncated_body(clean: SimHandle) -> None:
    sim = clean
    token = sim.app_token(sim.tenant_ids[0])
    add(sim, kind="truncate", match={"path_prefix": "/v1.0/users"})
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        sim.get("/v1.0/users", token)
    assert sim.get("/v1.0/users", token).status_code == 200


def test_throttle_without_retry_after(clean: SimHandle) -> None:
    sim = clean
    tid = sim.tenant_ids[0]
    add(sim, kind="throttle", match={"tenant": tid, "path_prefix": "/v1.0/users"}, count=1, retry_after=None)
    r = sim.get("/v1.0/users?$top=1", sim.app_token(tid))
    assert r.status_code == 429 and "Retry-After" not in r.headers
    assert r.json()["error"]["code"] == "TooManyRequests"


def test_latency_fault_is_consumed(clean: SimHandle) -> None:
    sim = clean
    token = sim.app_token(sim.tenant_ids[0])
    add(sim, kind="latency", latency_ms=50, count=2)
    assert sim.get("/v1.0/users?$top=1", token).status_code == 200
    assert sim.admin("GET", "/_sim/faults").json()["faults"][0]["remaining"] == 1
    assert sim.get("/v1.0/users?$top=1", token).status_code == 200
    assert sim.admin("GET", "/_sim/faults").json()["faults"] == []


def test_unlimited_until_cleared(clean: SimHandle) -> None:
    sim = clean
    token = sim.app_token(sim.tenant_ids[0])
    add(sim, kind="status", status=502, unlimited=True, match={"path_prefix": "/v1.0/me"})
    assert all(sim.get("/v1.0/me", token).status_code == 502 for _ in range(5))
    assert sim.admin("DELETE", "/_sim/faults").json()["cleared"] == 1


def test_intune_and_vault_faults(clean: SimHandle) -> None:
    sim = clean
    add(sim, kind="status", status=503, match={"path_prefix": "/secrets/"})
    r = sim.http.get(f"{sim.base_url}/secrets/x", params={"api-version": "7.5"})
    assert r.status_code == 401  # auth comes first: a fault never hides a missing token
    token = sim.app_token(sim.info["connector"]["home_tenant_id"], "https://vault.azure.net/.default")
    assert sim.get("/secrets/connector-client-secret?api-version=7.5", token).status_code == 503


def test_delta_expiry_is_stored_for_graph(clean: SimHandle) -> None:
    sim = clean
    tid = sim.tenant_ids[0]
    token = sim.app_token(tid)
    first = sim.get("/v1.0/users/delta", token)
    assert first.status_code == 200
    link = first.json().get("@odata.nextLink") or first.json().get("@odata.deltaLink")
    add(sim, kind="delta_expiry", match={"tenant": tid})
    assert sim.admin("GET", "/_sim/faults").json()["faults"][0]["kind"] == "delta_expiry"
    r = sim.http.get(link, headers={"Authorization": f"Bearer {token}"})
    # The graph module consumes it: 400 syncStateNotFound (or 410 resyncRequired with status=410).
    assert r.status_code in (400, 410) and r.json()["error"]["code"] in ("syncStateNotFound", "resyncRequired")
    assert sim.admin("GET", "/_sim/faults").json()["faults"] == []


@pytest.mark.parametrize("body", [
    {"kind": "nope"}, {"kind": "latency"}, {"kind": "status", "status": 200}, {"kind": "status", "count": 0},
    {"kind": "throttle", "retry_after": -1}, {"kind": "status", "match": {"tenant": 5}}, {"kind": "status", "x": 1},
    {"kind": "status", "match": "all"}, ["kind"],
])
def test_fault_bad_input(sim: SimHandle, body: object) -> None:
    r = sim.admin("POST", "/_sim/faults", body)
    assert r.status_code == 400
    assert set(r.json()) == {"error", "field"}


def test_admin_bad_input_never_hangs(sim: SimHandle) -> None:
    checks = [
        ("POST", "/_sim/clock/advance", {"seconds": -1}), ("POST", "/_sim/clock/advance", {"seconds": "x"}),
        ("POST", "/_sim/consent", {"tenant_id": "nope", "app_id": "x", "roles": []}),
        ("POST", "/_sim/consent", {"tenant_id": sim.tenant_ids[0], "app_id": sim.connector_id, "roles": ["Bad"]}),
        ("POST", "/_sim/tokens/user", {"tenant_id": sim.tenant_ids[0]}),
        ("POST", "/_sim/keys/rotate", {"drop_old": "yes"}),
        ("POST", "/_sim/keyvault/secrets", {"name": "bad name!", "value": "x"}),
        ("POST", "/_sim/intune/config", {"unresponsive_days": -1}),
        ("GET", "/_sim/intune/not-a-guid", None),
        ("DELETE", "/_sim/consent", None),
        ("POST", "/_sim/apps/unknown/secrets", {"secret": "x"}),
    ]
    for method, path, body in checks:
        r = sim.admin(method, path, body)
        assert r.status_code == 400, (path, r.text)
        assert "field" in r.json()
    r = sim.admin("POST", "/_sim/faults", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body"
    assert sim.admin("GET", "/_sim/nothing-here").status_code == 404
