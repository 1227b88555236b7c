"""Graph rules through the real HTTPS server: core auth + RU pricing + faults + simulated clock with the graph routes.

Uses a private simulator (module scope) because it advances the simulated clock.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from simulator.entra import DEFAULT_CONNECTOR_ROLES
from tests.simulator.conftest import SimHandle


@pytest.fixture(scope="module")
def live(private_sim: Callable[..., SimHandle]) -> SimHandle:
    return private_sim("M", tenants=1, seed=21)


def _round(sim: SimHandle, tok: str, url: str) -> tuple[list[dict], str]:  # type: ignore[type-arg]
    rows: list[dict] = []  # type: ignore[type-arg]
    path = url
    while True:
        r = sim.get(path.removeprefix(sim.base_url), tok)
        assert r.status_code == 200, r.text
        body = r.json()
        rows += body["value"]
        if "@odata.deltaLink" in body:
            return rows, body["@odata.deltaLink"]
        path = body["@odata.nextLink"]


def test_live_pricing_permissions_and_delta_expiry(live: SimHandle) -> None:
    tid = live.tenant_ids[0]
    tok = live.app_token(tid)
    r = live.get("/v1.0/users?$top=5&$select=id", tok)
    assert r.status_code == 200 and r.headers["x-ms-resource-unit"] == "1" and r.headers["request-id"]
    r = live.get("/v1.0/users", tok)
    assert r.headers["x-ms-resource-unit"] == "2"
    # consent without Device.Read.All → 403 on /devices from a fresh token
    assert live.admin("POST", "/_sim/consent", {"tenant_id": tid, "app_id": live.connector_id,
                                                "roles": ["User.Read.All"]}).status_code == 200
    try:
        narrow = live.app_token(tid, cache=False)
        r = live.get("/v1.0/devices", narrow)
        assert r.status_code == 403 and r.json()["error"]["code"] == "Authorization_RequestDenied"
    finally:
        live.admin("POST", "/_sim/consent", {"tenant_id": tid, "app_id": live.connector_id,
                                             "roles": sorted(DEFAULT_CONNECTOR_ROLES)})
    _, link = _round(live, tok, "/v1.0/groups/delta()?$select=displayName,members")
    # injected delta-expiry fault, matched on the SDK's delta() path
    r = live.admin("POST", "/_sim/faults", {"kind": "delta_expiry", "match": {"path_prefix": "/v1.0/groups/delta"}})
    assert r.status_code in (200, 201), r.text
    r = live.get(link.removeprefix(live.base_url), tok)
    assert r.status_code == 400 and r.json()["error"]["code"] == "syncStateNotFound"
    assert live.get(link.removeprefix(live.base_url), tok).status_code == 200
    # 7 simulated days later the token has aged out
    assert live.admin("POST", "/_sim/clock/advance", {"seconds": 7 * 86400 + 60}).status_code == 200
    tok = live.app_token(tid, cache=False)
    r = live.get(link.removeprefix(live.base_url), tok)
    assert r.status_code == 400 and r.json()["error"]["code"] == "syncStateNotFound"
    rows, _ = _round(live, tok, "/v1.0/groups/delta?$select=displayName")
    assert len(rows) == live.admin("GET", f"/_sim/tenants/{tid}").json()["counts"]["groups"]


def test_live_batch_counts_inner_requests(live: SimHandle) -> None:
    tid = live.tenant_ids[0]
    tok = live.app_token(tid)
    live.admin("POST", "/_sim/counters/reset")
    reqs = [{"id": str(i), "method": "GET", "url": f"/groups?$top={i + 1}"} for i in range(3)]
    r = live.http.post(live.base_url + "/v1.0/$batch", json={"requests": reqs},
                       headers={"Authorization": f"Bearer {tok}"}, timeout=30)
    assert r.status_code == 200 and sorted(x["status"] for x in r.json()["responses"]) == [200, 200, 200]
    counters = live.admin("GET", f"/_sim/counters?tenant={tid}").json()
    assert "/v1.0/groups" in str(counters)  # inner requests counted under their own route label
