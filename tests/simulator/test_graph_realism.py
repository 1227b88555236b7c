"""Replication lag and glitched membership rounds (issue 10): what Graph does that a naive fake does not.

Entra is eventually consistent: a new object can answer 404 and a new link be absent while delta already reports the
change (https://devblogs.microsoft.com/identity/designing-for-eventual-consistency-for-microsoft-entra/).
"""

from __future__ import annotations

import pytest

from simulator import scenarios
from simulator.directory import World
from tests.simulator.graph_helpers import Harness, app_principal

SELECT = "$select=id,operatingSystem"


@pytest.fixture
def world() -> World:
    w = World("https://sim.invalid")
    scenarios.add_tenant(w, "small", 5)
    return w


async def test_lagging_objects_answer_404_and_lagging_links_are_absent_until_they_replicate(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id)
    async with Harness(world) as h:
        gid = next(iter(t.groups)).id
        _, dlink = await h.delta_round("/v1.0/groups/delta?$select=displayName,members", p)
        user = (await h.mutate(t.tenant_id, op="add_user", groups=[gid], lag_seconds=120))["id"]
        phone = (await h.mutate(t.tenant_id, op="add_device", operatingSystem="iOS", owner_id=user,
                                owner_lag_seconds=120))["id"]
        tablet = (await h.mutate(t.tenant_id, op="add_device", operatingSystem="Android", lag_seconds=120))["id"]
        await h.mutate(t.tenant_id, op="add_member", group_id=gid, member_id=tablet, lag_seconds=120)
        # delta already reports all of it
        rows, _ = await h.delta_round(dlink, p)
        added = {m["id"] for r in rows for m in r.get("members@delta", [])}
        assert {user, tablet} <= added
        # …while the objects and links have not replicated yet
        status, body, _ = await h.get(f"/v1.0/users/{user}/ownedDevices?{SELECT}", p)
        assert status == 404 and body["error"]["code"] == "Request_ResourceNotFound"
        assert (await h.get(f"/v1.0/devices/{tablet}", p))[0] == 404
        status, body, _ = await h.get(f"/v1.0/devices/{phone}?$expand=registeredOwners", p)
        assert status == 200 and body["registeredOwners"] == []
        status, body, _ = await h.get(f"/v1.0/groups/{gid}/members?$select=id", p)
        assert tablet not in {m["id"] for m in body["value"]}
        status, body, _ = await h.req("POST", "/v1.0/$batch", p, body={"requests": [
            {"id": "1", "method": "GET", "url": f"/users/{user}/ownedDevices?{SELECT}"}]})
        assert status == 200 and body["responses"][0]["status"] == 404
        h.clock.advance(121)
        status, body, _ = await h.get(f"/v1.0/users/{user}/ownedDevices?{SELECT}", p)
        assert status == 200 and [d["id"] for d in body["value"]] == [phone]
        status, body, _ = await h.get(f"/v1.0/devices/{phone}?$expand=registeredOwners", p)
        assert [o["id"] for o in body["registeredOwners"]] == [user]
        status, body, _ = await h.get(f"/v1.0/devices/{tablet}/transitiveMemberOf?$select=id", p)
        assert status == 200 and gid in {g["id"] for g in body["value"]}
    with pytest.raises(ValueError, match="lag_seconds"):
        world.mutate(t.tenant_id, "add_user", {"lag_seconds": -1})


@pytest.mark.parametrize("kind", ["round_empty", "round_truncated", "members_short"])
async def test_glitched_membership_rounds_end_with_an_intact_delta_link(world: World, kind: str) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id)
    async with Harness(world) as h:
        full, _ = await h.delta_round("/v1.0/groups/delta?$select=displayName,members", p)
        h.faults.add({"kind": kind, "match": {"tenant": t.tenant_id, "path_prefix": "/v1.0/groups/delta"}})
        rows, dlink = await h.delta_round("/v1.0/groups/delta?$select=displayName,members", p)
        members = sum(len(r.get("members@delta", [])) for r in rows)
        assert "$deltatoken=" in dlink
        if kind == "round_empty":
            assert rows == []
        elif kind == "round_truncated":
            assert 0 < len(rows) < len(full)
        else:
            assert len(rows) == len(full) and members < sum(len(r.get("members@delta", [])) for r in full)
        # the glitch was one round: the next new round is whole again
        again, _ = await h.delta_round("/v1.0/groups/delta?$select=displayName,members", p)
        assert len(again) == len(full)
