"""Scenario generator (determinism, shape), ground truth, and the directory admin API."""

from __future__ import annotations

import pytest

from simulator import scenarios
from simulator.directory import DirectoryError, World
from tests.simulator.graph_helpers import Harness


def _fingerprint(t) -> tuple:  # type: ignore[no-untyped-def]
    return (t.tenant_id, [(u.id, u.upn, u.enabled) for u in t.users],
            [(g.id, g.display_name, tuple(g.members.items())) for g in t.groups],
            [(d.id, d.device_id, d.os, d.owner, tuple(d.registered_users)) for d in t.devices],
            [m.id for m in t.mam])


@pytest.mark.parametrize("name", ["small", "M"])
def test_same_seed_same_tenant(name: str) -> None:
    assert _fingerprint(scenarios.build(name, 11)) == _fingerprint(scenarios.build(name, 11))
    assert _fingerprint(scenarios.build(name, 11)) != _fingerprint(scenarios.build(name, 12))


def _reaches(t, src: str, dst: str) -> bool:  # type: ignore[no-untyped-def]
    stack, seen = [src], set()
    while stack:
        for m, k in t.groups.by_id[stack.pop()].members.items():
            if m == dst:
                return True
            if k == "group" and m not in seen:
                seen.add(m)
                stack.append(m)
    return False


@pytest.mark.parametrize("name", ["small", "M"])
def test_scenario_shape(name: str) -> None:
    w = World("https://sim.invalid")
    t = scenarios.add_tenant(w, name, 4)
    facts = scenarios.describe(t)
    assert "O'Brien Field Team" in facts["apostrophe_groups"]
    assert facts["duplicate_names"] == ["Field Sales"]
    assert facts["users_over_20_devices"]
    assert any(d.owner is None for d in t.devices)
    assert any(not u.enabled for u in t.users)
    assert {d.os for d in t.devices} == {"iOS", "iPadOS", "Android", "Windows", "macOS"}
    assert all(len([d.owner] if d.owner else []) <= 1 for d in t.devices)
    kinds = {k for g in t.groups for k in g.members.values()}
    assert kinds == {"user", "group", "device", "orgContact", "servicePrincipal"}
    # a membership cycle inside the first enrollment tree, and one outside (Cycle A <-> Cycle B)
    root = t.groups_named(t.enrollment_groups[0])[0]
    subs = [root.id] + [gid for gid, k in t.transitive_members(root.id).items() if k == "group"]
    assert any(_reaches(t, a, a) for a in subs)
    a, b = t.groups_named("Cycle A")[0], t.groups_named("Cycle B")[0]
    assert b.id in a.members and a.id in b.members
    # nesting depth ≤ the scenario's limit (breadth-first depth, cycles ignored)
    depth, frontier, seen = 0, [root.id], {root.id}
    while frontier:
        nxt = [m for g in frontier for m, k in t.groups.by_id[g].members.items() if k == "group" and m not in seen]
        seen.update(nxt)
        if nxt:
            depth += 1
        frontier = nxt
    assert 1 <= depth <= scenarios.SIZES[name].depth
    # the Intune service principal exists
    assert any(sp.app_id == "0000000a-0000-0000-c000-000000000000" for sp in t.service_principals)


def test_ground_truth_matches_a_manual_walk() -> None:
    w = World("https://sim.invalid")
    t = scenarios.add_tenant(w, "M", 9)
    gt = w.ground_truth(t.tenant_id, t.enrollment_groups)
    assert gt["unresolved_groups"] == []
    users: set[str] = set()
    direct: set[str] = set()
    for name in t.enrollment_groups:
        (g,) = t.groups_named(name)
        members = t.transitive_members(g.id)
        users |= {m for m, k in members.items() if k == "user"}
        direct |= {m for m, k in members.items() if k == "device"}
    mobile = ("iOS", "iPadOS", "Android")
    # In scope: devices owned by an in-scope user, and owned devices that are themselves group members.
    expected = {d.id for d in t.devices if d.os in mobile and (d.owner in users or (d.id in direct and d.owner))}
    assert {d["id"] for d in gt["devices"]} == expected and expected
    assert all(d["ownerId"] in users or d["id"] in direct for d in gt["devices"])
    gt2 = w.ground_truth(t.tenant_id, ["Field Sales", "Nope", "o'brien field team"], platforms={"Windows"})
    reasons = {u["name"]: u["reason"] for u in gt2["unresolved_groups"]}
    assert reasons == {"Field Sales": "ambiguous", "Nope": "not_found"}  # duplicates are ambiguous
    assert gt2["devices"] and all(d["operatingSystem"] == "Windows" for d in gt2["devices"])


def test_xl_plan_numbers_without_building() -> None:
    xl = scenarios.SIZES["XL"]
    assert (xl.users, xl.devices, xl.subgroups, xl.depth, len(xl.roots)) == (100_000, 180_000, 40, 4, 3)


def test_bad_scenarios() -> None:
    with pytest.raises(DirectoryError):
        scenarios.build("XXL", 1)
    with pytest.raises(DirectoryError):
        scenarios.fleet_plan(0, 1)


async def test_admin_api_tenants_truth_and_mutations() -> None:
    async with Harness() as h:
        s, small, _ = await h.req("POST", "/_sim/tenants", None, body={"scenario": "small", "seed": 1})
        assert s == 200 and small["enrollment_groups"] == ["MTD Enrollment", "O'Brien Field Team"]
        assert small["counts"]["users"] == 40
        s, again, _ = await h.req("POST", "/_sim/tenants", None, body={"scenario": "small", "seed": 1})
        assert s == 200 and again["tenant_id"] != small["tenant_id"]  # same seed twice → two tenants
        s, fleet, _ = await h.req("POST", "/_sim/tenants", None, body={"scenario": "fleet", "count": 6, "seed": 2})
        assert s == 200 and [x["scenario"] for x in fleet["tenants"]] == ["small"] * 4 + ["M", "small"]
        s, listing, _ = await h.get("/_sim/tenants", None)
        assert len(listing["tenants"]) == 8
        tid = small["tenant_id"]
        url = f"/_sim/tenants/{tid}/truth?groups=MTD%20Enrollment&groups=O%27Brien%20Field%20Team&platforms=iOS,Android"
        s, truth, _ = await h.get(url, None)
        assert s == 200 and truth["devices"] and {d["operatingSystem"] for d in truth["devices"]} <= {"iOS", "Android"}
        t = h.world.tenants[tid]
        # a new in-scope user with an iOS device appears in the ground truth
        s, user, _ = await h.req("POST", f"/_sim/tenants/{tid}/mutations", None,
                                 body={"op": "add_user", "displayName": "New Hire"})
        root = t.groups_named("MTD Enrollment")[0]
        s, res, _ = await h.req("POST", f"/_sim/tenants/{tid}/mutations", None, body=[
            {"op": "add_member", "group_id": root.id, "member_id": user["id"]},
            {"op": "add_device", "owner_id": user["id"], "operatingSystem": "iOS"}])
        assert s == 200 and len(res["results"]) == 2
        dev_id = res["results"][1]["id"]
        _, truth2, _ = await h.get(url, None)
        assert dev_id in {d["id"] for d in truth2["devices"]}
        s, _, _ = await h.req("POST", f"/_sim/tenants/{tid}/mutations", None,
                              body={"op": "set_owner", "device_id": dev_id, "owner_id": None})
        _, truth3, _ = await h.get(url, None)
        assert dev_id not in {d["id"] for d in truth3["devices"]}
        s, _, _ = await h.req("DELETE", f"/_sim/tenants/{again['tenant_id']}", None)
        assert s == 200 and again["tenant_id"] not in h.world.tenants


@pytest.mark.parametrize(("body", "field"), [
    ({"scenario": "nope"}, "scenario"),
    ({"scenario": "small", "seed": "x"}, "seed"),
    ({"scenario": "fleet", "count": 0}, "count"),
    ({"scenario": "small", "count": 3}, "count"),
    ({"scenario": "small", "tenant_id": "not-a-guid"}, "tenant_id"),
    ({"scenario": "small", "bogus": 1}, "bogus"),
    ([1, 2], "body"),
])
async def test_admin_create_bad_input(body: object, field: str) -> None:
    async with Harness() as h:
        s, res, _ = await h.req("POST", "/_sim/tenants", None, body=body)
        assert s == 400 and res["field"] == field


@pytest.mark.parametrize(("op", "field"), [
    ({"op": "explode"}, "op"),
    ({"op": "add_member", "member_id": "x"}, "group_id"),
    ({"op": "add_member", "group_id": "nope", "member_id": "x"}, "group_id"),
    ({"op": "change_os", "device_id": "nope", "operatingSystem": "iOS"}, "device_id"),
    ({"op": "set_owner", "device_id": "DEV"}, "owner_id"),
    ({"op": "delete_user", "user_id": 5}, "user_id"),
    ({"op": "add_device"}, "operatingSystem"),
    ({"op": "add_member", "group_name": "Field Sales", "member_id": "x"}, "group_name"),  # ambiguous name
])
async def test_admin_mutation_bad_input(op: dict[str, object], field: str) -> None:
    async with Harness() as h:
        t = scenarios.add_tenant(h.world, "small", 1)
        op = {k: (next(iter(t.devices)).id if v == "DEV" else v) for k, v in op.items()}
        s, res, _ = await h.req("POST", f"/_sim/tenants/{t.tenant_id}/mutations", None, body=op)
        assert s == 400 and res["field"] == field, res
        s, _, _ = await h.req("POST", "/_sim/tenants/unknown/mutations", None, body=op)
        assert s == 404


def test_scale_plan_numbers_without_building() -> None:
    # Issue 9's tenant: one enrollment group, 25 subgroups, two thirds of 30,000 users in scope.
    scale = scenarios.SIZES["scale"]
    assert (scale.users, scale.devices, scale.subgroups, scale.roots) == (30_000, 50_000, 25, ("MTD Enrollment",))
