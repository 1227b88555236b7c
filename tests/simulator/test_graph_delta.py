"""Delta queries: rounds, members@delta, @removed after each mutation type, $select tracking, expiry (graph.md §4)."""

from __future__ import annotations

from typing import Any

import pytest

from simulator import scenarios
from simulator.directory import World
from tests.simulator.graph_helpers import Harness, app_principal

GROUPS = "/v1.0/groups/delta()?$select=displayName,members"


def _merge(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Merge a round's group rows per id (the same group can appear on several pages)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        g = out.setdefault(r["id"], {"rows": 0, "added": set(), "removed": {}, "props": {}, "gone": None})
        g["rows"] += 1
        if "@removed" in r:
            g["gone"] = r["@removed"]["reason"]
        for k, v in r.items():
            if k not in ("id", "members@delta", "@removed"):
                g["props"][k] = v
        for m in r.get("members@delta", []):
            if "@removed" in m:
                g["removed"][m["id"]] = m["@removed"]["reason"]
            else:
                g["added"].add(m["id"])
    return out


@pytest.fixture
def world() -> World:
    w = World("https://sim.invalid")
    scenarios.add_tenant(w, "M", 3)
    w.delta_member_chunk = 7   # small chunks so groups split across records and pages
    w.delta_page_size = 5
    w.device_delta_page_size = 200
    return w


async def test_initial_round_lists_every_group_with_all_members(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id)
    async with Harness(world) as h:
        rows, delta_link = await h.delta_round(GROUPS, p)
        merged = _merge(rows)
        assert set(merged) == {g.id for g in t.groups}
        for g in t.groups:
            assert merged[g.id]["added"] == set(g.members)
            assert merged[g.id]["props"]["displayName"] == g.display_name
        big = max(t.groups, key=lambda g: len(g.members))
        assert merged[big.id]["rows"] > 1  # large groups span several records (delta-query-groups.md)
        assert "$deltatoken=" in delta_link and "$select" not in delta_link
        # both path spellings work (the SDK sends delta() with parentheses, azure.md §4)
        rows2, _ = await h.delta_round("/v1.0/groups/delta?$select=displayName,members", p)
        assert _merge(rows2).keys() == merged.keys()
        # nothing changed → the next round is empty and ends with a deltaLink
        rows3, link3 = await h.delta_round(delta_link, p)
        assert rows3 == [] and "$deltatoken=" in link3


async def test_membership_mutations_show_up_as_members_delta(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id)
    root = t.groups_named("MTD Enrollment")[0]
    outsider = next(u for u in t.users if u.id not in root.members)
    member = next(m for m, k in root.members.items() if k == "user")
    child = t.groups_named("Cycle A")[0]
    sub = next(m for m, k in root.members.items() if k == "group")
    async with Harness(world) as h:
        _, link = await h.delta_round(GROUPS, p)
        await h.mutate(t.tenant_id, op="add_member", group_id=root.id, member_id=outsider.id)
        await h.mutate(t.tenant_id, op="remove_member", group_id=root.id, member_id=member)
        await h.mutate(t.tenant_id, op="nest_group", parent_id=root.id, child_id=child.id)
        await h.mutate(t.tenant_id, op="unnest_group", parent_id=root.id, child_id=sub)
        rows, link = await h.delta_round(link, p)
        merged = _merge(rows)
        assert set(merged) == {root.id}
        assert merged[root.id]["added"] == {outsider.id, child.id}
        assert merged[root.id]["removed"] == {member: "deleted", sub: "deleted"}
        types = {m["id"]: m["@odata.type"] for r in rows for m in r["members@delta"]}
        assert types[child.id] == "#microsoft.graph.group" and types[outsider.id] == "#microsoft.graph.user"
        # add then remove inside one window: the net effect (a removal) is reported
        await h.mutate(t.tenant_id, op="add_member", group_id=root.id, member_id=member)
        await h.mutate(t.tenant_id, op="remove_member", group_id=root.id, member_id=member)
        rows, link = await h.delta_round(link, p)
        assert _merge(rows)[root.id]["removed"] == {member: "deleted"}


async def test_deletes_and_renames(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id)
    root = t.groups_named("MTD Enrollment")[0]
    victim = next(m for m, k in root.members.items() if k == "user")
    doomed_soft = t.groups_named("Cycle B")[0]
    doomed_hard = t.groups_named("Device Pilot")[0]
    async with Harness(world) as h:
        _, glink = await h.delta_round(GROUPS, p)
        _, ulink = await h.delta_round("/v1.0/users/delta?$select=displayName,accountEnabled", p)
        await h.mutate(t.tenant_id, op="delete_user", user_id=victim)
        await h.mutate(t.tenant_id, op="rename_group", group_id=root.id, displayName="MTD Enrollment (renamed)")
        await h.mutate(t.tenant_id, op="delete_group", group_id=doomed_soft.id)
        await h.mutate(t.tenant_id, op="delete_group", group_id=doomed_hard.id, permanent=True)
        rows, glink = await h.delta_round(glink, p)
        merged = _merge(rows)
        assert merged[root.id]["removed"] == {victim: "deleted"}  # deleted member → removed member
        assert merged[root.id]["props"]["displayName"] == "MTD Enrollment (renamed)"
        assert merged[doomed_soft.id]["gone"] == "changed"    # soft delete (restorable)
        assert merged[doomed_hard.id]["gone"] == "deleted"    # permanent
        rows, ulink = await h.delta_round(ulink, p)
        assert rows == [{"id": victim, "@removed": {"reason": "changed"}}]
        other = next(iter(t.users))
        await h.mutate(t.tenant_id, op="disable_user", user_id=other.id)
        rows, ulink = await h.delta_round(ulink, p)
        assert rows == [{"id": other.id, "displayName": other.display_name, "accountEnabled": False}]


async def test_a_restored_user_comes_back_with_its_memberships_and_devices(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id)
    root = t.groups_named("MTD Enrollment")[0]
    victim = next(m for m, k in root.members.items() if k == "user" and t.owned.get(m))
    groups, devices = set(t.member_of[victim]), list(t.owned[victim])
    async with Harness(world) as h:
        _, glink = await h.delta_round(GROUPS, p)
        await h.mutate(t.tenant_id, op="delete_user", user_id=victim)
        assert victim not in root.members and not t.owned.get(victim)
        await h.mutate(t.tenant_id, op="restore_user", user_id=victim)
        assert set(t.member_of[victim]) == groups and t.owned[victim] == devices
        assert all(t.devices.get(d).owner == victim for d in devices)
        rows, glink = await h.delta_round(glink, p)
        assert victim in _merge(rows)[root.id]["added"]  # removed then added back: the net effect is a member
        # Only a soft-deleted user can come back, and only once; a permanently deleted one never.
        with pytest.raises(AssertionError, match="no such deleted user"):
            await h.mutate(t.tenant_id, op="restore_user", user_id=victim)
        await h.mutate(t.tenant_id, op="delete_user", user_id=victim, permanent=True)
        with pytest.raises(AssertionError, match="no such deleted user"):
            await h.mutate(t.tenant_id, op="restore_user", user_id=victim)


async def test_select_limits_tracking(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id)
    root = t.groups_named("MTD Enrollment")[0]
    outsider = next(u for u in t.users if u.id not in root.members)
    async with Harness(world) as h:
        _, link = await h.delta_round("/v1.0/groups/delta?$select=displayName", p)
        await h.mutate(t.tenant_id, op="add_member", group_id=root.id, member_id=outsider.id)
        rows, link = await h.delta_round(link, p)
        assert rows == []  # members not selected → membership changes are not tracked
        await h.mutate(t.tenant_id, op="rename_group", group_id=root.id, displayName="X")
        rows, link = await h.delta_round(link, p)
        assert rows == [{"displayName": "X", "id": root.id}]


async def test_device_delta_rounds(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id, ["Device.Read.All"])
    owner = next(iter(t.users))
    async with Harness(world) as h:
        url = "/v1.0/devices/delta?$select=id,deviceId,operatingSystem"
        _, first, _ = await h.get(url, p)
        assert len(first["value"]) == 200 and "@odata.nextLink" in first
        rows, link = await h.delta_round(url, p)
        assert len(rows) == len(t.devices) and set(rows[0]) == {"id", "deviceId", "operatingSystem"}
        d1, d2, d3 = list(t.devices)[:3]
        await h.mutate(t.tenant_id, op="change_os", device_id=d1.id, operatingSystem="Android")
        await h.mutate(t.tenant_id, op="delete_device", device_id=d2.id)
        await h.mutate(t.tenant_id, op="set_owner", device_id=d3.id, owner_id=owner.id)  # not tracked by delta
        added = await h.mutate(t.tenant_id, op="add_device", owner_id=owner.id, operatingSystem="iOS")
        rows, link = await h.delta_round(link, p)
        by_id = {r["id"]: r for r in rows}
        assert set(by_id) == {d1.id, d2.id, added["id"]}
        assert by_id[d1.id]["operatingSystem"] == "Android"
        assert by_id[d2.id] == {"id": d2.id, "@removed": {"reason": "deleted"}}
        assert by_id[added["id"]]["operatingSystem"] == "iOS"


async def test_delta_query_restrictions(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id)
    ids = " or ".join(f"id eq '{g.id}'" for g in list(t.groups)[:3])
    async with Harness(world) as h:
        for bad in ("$top=5", "$expand=members", "$orderby=displayName", "$filter=displayName eq 'x'"):
            s, body, _ = await h.get(f"/v1.0/groups/delta?{bad}", p)
            assert s == 400 and body["error"]["code"] == "Request_UnsupportedQuery", bad
        many = " or ".join(f"id eq '{i:08d}-0000-0000-0000-000000000000'" for i in range(51))
        assert (await h.get(f"/v1.0/groups/delta?$filter={many}", p))[0] == 400
        rows, _ = await h.delta_round(f"/v1.0/groups/delta?$filter={ids}", p)
        assert {r["id"] for r in rows} == {g.id for g in list(t.groups)[:3]}
        _, first, _ = await h.get(GROUPS, p)
        assert "@odata.nextLink" in first
        s, _, _ = await h.get(first["@odata.nextLink"] + "&$select=displayName", p)
        assert s == 400  # $select together with $skiptoken is not supported


async def test_deltatoken_latest(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id)
    g = next(iter(t.groups))
    async with Harness(world) as h:
        s, body, _ = await h.get("/v1.0/groups/delta?$deltatoken=latest&$select=displayName", p)
        assert s == 200 and body["value"] == [] and "@odata.deltaLink" in body
        await h.mutate(t.tenant_id, op="rename_group", group_id=g.id, displayName="Latest")
        rows, _ = await h.delta_round(body["@odata.deltaLink"], p)
        assert rows == [{"displayName": "Latest", "id": g.id}]


async def test_expiry_invalid_tokens_and_faults(world: World) -> None:
    t = next(iter(world.tenants.values()))
    p = app_principal(t.tenant_id)
    async with Harness(world) as h:
        _, link = await h.delta_round(GROUPS, p)
        # forged/foreign token → 410 Gone with Location (restart with a full sync)
        s, body, hdrs = await h.get("/v1.0/groups/delta?$deltatoken=AAAAnotatoken", p)
        assert s == 410 and hdrs["Location"].endswith("/v1.0/groups/delta?$deltatoken=")
        # injected delta_expiry fault: default → 400 syncStateNotFound; status 410 → 410 Gone
        h.faults.add({"kind": "delta_expiry"})
        s, body, _ = await h.get(link, p)
        assert s == 400 and body["error"]["code"] == "syncStateNotFound"
        h.faults.add({"kind": "delta_expiry", "status": 410})
        s, _, hdrs = await h.get(link, p)
        assert s == 410 and "Location" in hdrs
        assert (await h.get(link, p))[0] == 200  # faults are used up
        # 6 days later the token still works; after 7 days it has aged out
        h.clock.advance(6 * 86400)
        assert (await h.get(link, p))[0] == 200
        h.clock.advance(86400 + 1)
        s, body, _ = await h.get(link, p)
        assert s == 400 and body["error"]["code"] == "syncStateNotFound"
        # a fresh full round works again
        rows, _ = await h.delta_round(GROUPS, p)
        assert rows
    # a token from another world (e.g. a restarted simulator) is invalid → 410
    other = World("https://sim.invalid")
    other.tenants[t.tenant_id] = t
    async with Harness(other) as h2:
        s, _, _ = await h2.get(link, p)
        assert s == 410
