"""JSON batching rules (graph.md §3; https://learn.microsoft.com/graph/json-batching)."""

from __future__ import annotations

from typing import Any

import pytest

from simulator import scenarios
from simulator.directory import World
from tests.simulator.graph_helpers import Harness, app_principal


@pytest.fixture
def world() -> World:
    w = World("https://sim.invalid")
    scenarios.add_tenant(w, "small", 5)
    return w


def _by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in body["responses"]}


async def test_batch_items_statuses_and_order(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id)
    d = next(iter(t.devices))
    reqs = [
        {"id": "1", "method": "GET", "url": "/users?$top=2&$select=id"},
        {"id": "2", "method": "GET", "url": f"devices/{d.id}?$select=id,operatingSystem"},
        {"id": "3", "method": "GET", "url": "/devices/00000000-0000-0000-0000-000000000000"},
        {"id": "4", "method": "GET", "url": "https://graph.microsoft.com/v1.0/users"},  # absolute → per-item 400
        {"id": "5", "method": "GET", "url": "/users?$top=1", "dependsOn": ["3"]},       # failed dependency → 424
        {"id": "6", "method": "GET", "url": "/users?$top=1", "dependsOn": ["1"]},
        {"id": "7", "method": "GET", "url": "/devices/$count", "headers": {"ConsistencyLevel": "eventual"}},
        {"id": "8", "method": "GET", "url": "/deviceAppManagement/managedAppRegistrations"},
    ]
    async with Harness(world) as h:
        s, body, _ = await h.req("POST", "/v1.0/$batch", p, body={"requests": reqs})
        assert s == 200
        r = _by_id(body)
        assert [x["id"] for x in body["responses"]] != [x["id"] for x in reqs]  # any order: match on id
        assert r["1"]["status"] == 200 and len(r["1"]["body"]["value"]) == 2
        assert r["1"]["headers"]["x-ms-resource-unit"] == "1"  # GET /users 2 RU, $select −1, $top<20 −1, floor 1
        assert r["2"]["body"] == {"@odata.context": r["2"]["body"]["@odata.context"], "id": d.id,
                                  "operatingSystem": d.os}
        assert r["3"]["status"] == 404 and r["3"]["body"]["error"]["code"] == "Request_ResourceNotFound"
        assert r["4"]["status"] == 400
        assert r["5"]["status"] == 424
        assert r["6"]["status"] == 200
        assert r["7"]["status"] == 200 and int(r["7"]["body"]) == len(t.devices)
        assert r["8"]["status"] == 200 and "x-ms-resource-unit" not in r["8"]["headers"]  # Intune: not RU-metered


@pytest.mark.parametrize("payload", [
    {"requests": [{"id": str(i), "method": "GET", "url": "/users"} for i in range(21)]},  # > 20
    {"requests": [{"id": "a", "method": "GET", "url": "/users"}, {"id": "a", "method": "GET", "url": "/groups"}]},
    {"requests": [{"id": "a", "method": "GET", "url": "/users", "dependsOn": ["zz"]}]},
    {"requests": [{"id": "a", "method": "GET", "url": "/users", "dependsOn": ["b"]},
                  {"id": "b", "method": "GET", "url": "/users", "dependsOn": ["a"]}]},
    {"requests": []},
    {"requests": [{"id": "a", "url": "/users"}]},
    {"nope": 1},
])
async def test_malformed_batches_are_400(world: World, payload: dict[str, Any]) -> None:
    t = next(iter(world.tenants.values()))
    async with Harness(world) as h:
        s, body, _ = await h.req("POST", "/v1.0/$batch", app_principal(t.tenant_id), body=payload)
        assert s == 400 and body["error"]["code"] == "BadRequest"


async def test_body_needs_content_type_and_inner_permissions(world: World) -> None:
    t = next(iter(world.tenants.values()))
    async with Harness(world) as h:
        reqs = [{"id": "1", "method": "POST", "url": "/me/getMemberObjects", "body": {"securityEnabledOnly": True}},
                {"id": "2", "method": "GET", "url": "/devices"},
                {"id": "3", "method": "GET", "url": "/$batch"}]
        s, body, _ = await h.req("POST", "/v1.0/$batch", app_principal(t.tenant_id, ["User.Read.All"]),
                                 body={"requests": reqs})
        r = _by_id(body)
        assert s == 200 and r["1"]["status"] == 400 and r["2"]["status"] == 403 and r["3"]["status"] == 400


async def test_inner_requests_are_throttled_individually(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id)
    async with Harness(world) as h:
        h.throttle.configure(scale=0.001)  # S bucket: 3.5 RU per 10 s
        reqs = [{"id": str(i), "method": "GET", "url": "/users"} for i in range(5)]  # 2 RU each
        s, body, _ = await h.req("POST", "/v1.0/$batch", p, body={"requests": reqs})
        assert s == 200  # the envelope stays 200 whatever the inner results
        statuses = sorted(r["status"] for r in body["responses"])
        assert 200 in statuses and 429 in statuses
        throttled = [r for r in body["responses"] if r["status"] == 429]
        assert all(float(r["headers"]["Retry-After"]) > 0 for r in throttled)
        assert throttled[0]["body"]["error"]["code"] == "TooManyRequests"
        # every inner request was charged and counted under its own route label
        route = h.throttle.counters.snapshot(t.tenant_id)[t.tenant_id]["routes"]["/v1.0/users"]
        assert route["requests"] == 5 and route["ru"] == 10 and route["throttled"] == len(throttled)
