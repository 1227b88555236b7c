"""$expand on directory lists: ≤ 100 objects per page, ≤ 20 expanded objects each, no nested options (graph.md §6)."""

from __future__ import annotations

import pytest

from simulator import scenarios
from simulator.directory import World
from tests.simulator.graph_helpers import Harness, app_principal


@pytest.fixture(scope="module")
def world() -> World:
    w = World("https://sim.invalid")
    scenarios.add_tenant(w, "M", 2)
    return w


async def test_users_expand_owned_devices_caps(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id, ["User.Read.All", "Device.Read.All"])
    async with Harness(world) as h:
        items, pages = await h.walk("/v1.0/users?$expand=ownedDevices&$top=999&$select=id", p)
        assert len(items) == len(t.users)
        assert max(len(pg["value"]) for pg in pages) == 100  # $top=999 is capped at 100 with $expand
        heavy = [u for u in items if len(t.owned.get(u["id"], ())) > 20]
        assert heavy, "scenario must contain users with more than 20 devices"
        for u in heavy:
            assert len(u["ownedDevices"]) == 20  # cut at 20 …
            assert "ownedDevices@odata.nextLink" not in u  # … with no link to the rest
        for u in items:
            assert [d["id"] for d in u["ownedDevices"]] == t.owned.get(u["id"], [])[:20]
            assert all(d["@odata.type"] == "#microsoft.graph.device" for d in u["ownedDevices"])


async def test_devices_expand_registered_owners(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id, ["Device.Read.All", "User.Read.All"])
    async with Harness(world) as h:
        items, pages = await h.walk("/v1.0/devices?$expand=registeredOwners&$select=id,operatingSystem&$top=500", p)
        assert len(items) == len(t.devices) and all(len(pg["value"]) <= 100 for pg in pages)
        by_id = {d["id"]: d for d in items}
        for d in t.devices:
            owners = by_id[d.id]["registeredOwners"]
            assert len(owners) <= 1  # at most one registered owner (Get-MgDeviceRegisteredOwner)
            assert [o["id"] for o in owners] == ([d.owner] if d.owner else [])
        # with Device.Read.All only, owners come back with limited information
        _, body, _ = await h.get("/v1.0/devices?$expand=registeredOwners&$top=50", app_principal(
            t.tenant_id, ["Device.Read.All"]))
        owned = [d for d in body["value"] if d["registeredOwners"]]
        assert owned and owned[0]["registeredOwners"][0]["userPrincipalName"] is None


@pytest.mark.parametrize("expand", [
    "ownedDevices($select=id)",            # nested $select
    "ownedDevices($filter=operatingSystem eq 'iOS')",  # nested $filter
    "ownedDevices,memberOf",               # more than one
    "manager2",                            # unknown navigation property
])
async def test_expand_rejections(world: World, expand: str) -> None:
    t = next(iter(world.tenants.values()))
    async with Harness(world) as h:
        s, body, _ = await h.get(f"/v1.0/users?$expand={expand}", app_principal(t.tenant_id))
        assert s == 400, body


async def test_expand_not_with_advanced_queries(world: World) -> None:
    t = next(iter(world.tenants.values()))
    async with Harness(world) as h:
        s, _, _ = await h.get("/v1.0/users?$expand=ownedDevices&$count=true", app_principal(t.tenant_id),
                              headers={"ConsistencyLevel": "eventual"})
        assert s == 400


async def test_expand_on_single_objects(world: World) -> None:
    t = next(iter(world.tenants.values()))
    uid = next(k for k, v in t.owned.items() if len(v) > 20)
    async with Harness(world) as h:
        s, body, _ = await h.get(f"/v1.0/users/{uid}?$expand=ownedDevices", app_principal(t.tenant_id))
        assert s == 200 and len(body["ownedDevices"]) == 20
