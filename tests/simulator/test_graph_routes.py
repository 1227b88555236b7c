"""Graph v1.0 routes: paging, $select, $top, $filter, $count/ConsistencyLevel, casts, errors, permissions."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from simulator import scenarios
from simulator.directory import INTUNE_APP_ID, DirectoryError, World
from tests.simulator.graph_helpers import Harness, app_principal, user_principal

EVENTUAL = {"ConsistencyLevel": "eventual"}


@pytest.fixture
def world() -> World:
    w = World("https://sim.invalid")
    scenarios.add_tenant(w, "M", 1)
    return w


def _tenant(world: World):  # type: ignore[no-untyped-def]
    return next(iter(world.tenants.values()))


async def test_users_paging_default_and_top(world: World) -> None:
    t = _tenant(world)
    p = app_principal(t.tenant_id)
    async with Harness(world) as h:
        items, pages = await h.walk("/v1.0/users", p)
        assert len(items) == len(t.users) == 400
        assert [len(pg["value"]) for pg in pages] == [100, 100, 100, 100]  # default page size 100
        assert len({u["id"] for u in items}) == 400
        nxt = pages[0]["@odata.nextLink"]
        assert nxt.startswith(h.client.make_url("/").human_repr().rstrip("/") + "/v1.0/users?")  # absolute, same base
        assert "$skiptoken=" in nxt
        items, pages = await h.walk("/v1.0/users?$top=999", p)
        assert len(pages) == 1 and len(items) == 400
        items, pages = await h.walk("/v1.0/users?$top=150&$select=id,userPrincipalName", p)
        assert [len(pg["value"]) for pg in pages] == [150, 150, 100]
        assert set(items[0]) == {"id", "userPrincipalName"}
        # the token keeps the original query: later pages stay projected
        assert set(items[-1]) == {"id", "userPrincipalName"}


@pytest.mark.parametrize("top", ["0", "1000", "abc", "-1"])
async def test_top_out_of_bounds_is_400(world: World, top: str) -> None:
    t = _tenant(world)
    async with Harness(world) as h:
        s, body, hdrs = await h.get(f"/v1.0/devices?$top={top}", app_principal(t.tenant_id))
        assert s == 400
        err = body["error"]
        assert err["code"] == "Request_BadRequest"
        assert set(err["innerError"]) == {"date", "request-id", "client-request-id"}
        assert hdrs["request-id"] == err["innerError"]["request-id"]


async def test_unknown_system_option_and_select_property_are_400(world: World) -> None:
    t = _tenant(world)
    p = app_principal(t.tenant_id)
    async with Harness(world) as h:
        assert (await h.get("/v1.0/users?$foo=1", p))[0] == 400
        assert (await h.get("/v1.0/users?custom=1", p))[0] == 200  # non-$ parameters are ignored
        assert (await h.get("/v1.0/devices?$select=id,nonsense", p))[0] == 400
        assert (await h.get("/v1.0/users?$skip=5", p))[0] == 400
        assert (await h.get("/v1.0/users?$top=5&$top=6", p))[0] == 400
        s, body, _ = await h.get("/v1.0/nothing", p)
        assert s == 400 and body["error"]["code"] == "BadRequest"
        s, body, _ = await h.get("/v1.0/users/00000000-0000-0000-0000-000000000000", p)
        assert s == 404 and body["error"]["code"] == "Request_ResourceNotFound"


async def test_bad_skiptoken_is_rejected(world: World) -> None:
    t = _tenant(world)
    p = app_principal(t.tenant_id)
    async with Harness(world) as h:
        assert (await h.get("/v1.0/users?$skiptoken=forged", p))[0] == 400
        _, first, _ = await h.get("/v1.0/users", p)
        token = parse_qs(urlsplit(first["@odata.nextLink"]).query)["$skiptoken"][0]
        # a users token is not valid on devices
        assert (await h.get(f"/v1.0/devices?$skiptoken={token}", p))[0] == 400


async def test_group_filter_apostrophe_and_duplicates(world: World) -> None:
    t = _tenant(world)
    p = app_principal(t.tenant_id)
    async with Harness(world) as h:
        s, body, _ = await h.get("/v1.0/groups?$filter=displayName eq 'O''Brien Field Team'", p)
        assert s == 200 and [g["displayName"] for g in body["value"]] == ["O'Brien Field Team"]
        s, body, _ = await h.get("/v1.0/groups?$filter=displayName eq 'Field Sales'&$select=id,displayName", p)
        assert s == 200 and len(body["value"]) == 2
        # an unescaped quote is a syntax error
        assert (await h.get("/v1.0/groups?$filter=displayName eq 'O'Brien Field Team'", p))[0] == 400
        s, body, _ = await h.get("/v1.0/groups?$filter=startsWith(displayName,'mtd enrollment')", p)
        assert s == 200 and body["value"] and all(g["displayName"].startswith("MTD Enrollment")
                                                  for g in body["value"])


async def test_device_filters(world: World) -> None:
    t = _tenant(world)
    p = app_principal(t.tenant_id)
    by_os: dict[str, int] = {}
    for d in t.devices:
        by_os[d.os] = by_os.get(d.os, 0) + 1
    async with Harness(world) as h:
        items, _ = await h.walk("/v1.0/devices?$filter=operatingSystem eq 'iOS'&$top=999", p)
        assert len(items) == by_os["iOS"]
        items, _ = await h.walk("/v1.0/devices?$filter=operatingSystem in ('iOS','Android')&$top=999", p)
        assert len(items) == by_os["iOS"] + by_os["Android"]
        items, _ = await h.walk("/v1.0/devices?$filter=startsWith(operatingSystem,'i')&$top=999", p)
        assert len(items) == by_os["iOS"] + by_os["iPadOS"]
        items, _ = await h.walk("/v1.0/devices?$filter=trustType eq 'Workplace' and operatingSystem eq 'Android'", p)
        assert len(items) == sum(1 for d in t.devices if d.os == "Android" and d.trust_type == "Workplace")
        # ne needs advanced query capabilities (graph.md §6)
        s, body, _ = await h.get("/v1.0/devices?$filter=operatingSystem ne 'iOS'", p)
        assert s == 400 and body["error"]["code"] == "Request_UnsupportedQuery"
        s, body, _ = await h.get("/v1.0/devices?$filter=operatingSystem ne 'iOS'&$count=true", p, headers=EVENTUAL)
        assert s == 200 and body["@odata.count"] == len(t.devices) - by_os["iOS"]
        assert (await h.get("/v1.0/devices?$filter=notAProperty eq 'x'", p))[0] == 400


async def test_count_needs_consistency_level(world: World) -> None:
    t = _tenant(world)
    p = app_principal(t.tenant_id)
    async with Harness(world) as h:
        s, body, _ = await h.get("/v1.0/devices?$count=true&$top=5", p)
        assert s == 200 and "@odata.count" not in body  # silently ignored without the header (graph.md §6)
        s, body, _ = await h.get("/v1.0/devices?$count=true&$top=5", p, headers=EVENTUAL)
        assert body["@odata.count"] == len(t.devices)
        _, page2, _ = await h.get(body["@odata.nextLink"], p, headers=EVENTUAL)
        assert "@odata.count" not in page2  # first page only
        assert (await h.get("/v1.0/devices/$count", p))[0] == 400
        s, text, _ = await h.get("/v1.0/devices/$count", p, headers=EVENTUAL)
        assert s == 200 and int(text) == len(t.devices)


async def test_members_transitive_and_casts(world: World) -> None:
    t = _tenant(world)
    p = app_principal(t.tenant_id)
    root = t.groups_named("MTD Enrollment")[0]
    trans = t.transitive_members(root.id)
    async with Harness(world) as h:
        items, _ = await h.walk(f"/v1.0/groups/{root.id}/members", p)
        assert {i["id"] for i in items} == set(root.members)
        assert all(i["@odata.type"].startswith("#microsoft.graph.") for i in items)
        kinds = {i["@odata.type"] for i in items}
        assert {"#microsoft.graph.group", "#microsoft.graph.user", "#microsoft.graph.device"} <= kinds
        items, _ = await h.walk(f"/v1.0/groups/{root.id}/transitiveMembers?$top=999", p)
        assert {i["id"] for i in items} == set(trans)
        # casts on transitive lists need ConsistencyLevel + $count (graph.md §6)
        s, body, _ = await h.get(f"/v1.0/groups/{root.id}/transitiveMembers/microsoft.graph.user", p)
        assert s == 400 and body["error"]["code"] == "Request_UnsupportedQuery"
        url = f"/v1.0/groups/{root.id}/transitiveMembers/microsoft.graph.user?$count=true&$top=999"
        items, pages = await h.walk(url, p, headers=EVENTUAL)
        users = {m for m, k in trans.items() if k == "user"}
        assert {i["id"] for i in items} == users and pages[0]["@odata.count"] == len(users)
        # the header is not carried over by nextLinks: a later page without it fails again
        url = f"/v1.0/groups/{root.id}/transitiveMembers/microsoft.graph.user?$count=true&$top=5"
        _, first, _ = await h.get(url, p, headers=EVENTUAL)
        assert (await h.get(first["@odata.nextLink"], p))[0] == 400
        url = f"/v1.0/groups/{root.id}/transitiveMembers/microsoft.graph.device?$count=true"
        _, body, _ = await h.get(url, p, headers=EVENTUAL)
        assert body["@odata.count"] == sum(1 for k in trans.values() if k == "device")


async def test_users_by_upn_owned_devices_and_registered_owner(world: World) -> None:
    t = _tenant(world)
    p = app_principal(t.tenant_id)
    owner_id, devs = max(t.owned.items(), key=lambda kv: len(kv[1]))
    upn = t.users.by_id[owner_id].upn
    async with Harness(world) as h:
        s, body, _ = await h.get(f"/v1.0/users/{upn.upper()}?$select=id", p)
        assert s == 200 and body["id"] == owner_id
        items, _ = await h.walk(f"/v1.0/users/{upn}/ownedDevices?$top=10", p)
        assert [i["id"] for i in items] == devs and len(devs) > 20
        s, body, _ = await h.get(f"/v1.0/devices/{devs[0]}/registeredOwners", p)
        assert s == 200 and [o["id"] for o in body["value"]] == [owner_id]
        assert body["value"][0]["@odata.type"] == "#microsoft.graph.user"
        ownerless = next(d for d in t.devices if d.owner is None)
        s, body, _ = await h.get(f"/v1.0/devices/{ownerless.id}/registeredOwners", p)
        assert s == 200 and body["value"] == []
        s, body, _ = await h.get(f"/v1.0/devices(deviceId='{ownerless.device_id}')?$select=id", p)
        assert s == 200 and body["id"] == ownerless.id


async def test_intune_discovery(world: World) -> None:
    t = _tenant(world)
    p = app_principal(t.tenant_id, ["Application.Read.All"])
    async with Harness(world) as h:
        s, body, _ = await h.get(f"/v1.0/servicePrincipals?$filter=appId eq '{INTUNE_APP_ID}'&$select=id,appId", p)
        assert s == 200 and len(body["value"]) == 1
        sp_id = body["value"][0]["id"]
        s, body, _ = await h.get(f"/v1.0/servicePrincipals/{sp_id}/endpoints", p)
        names = {e["providerName"]: e["uri"] for e in body["value"]}
        assert names == {
            "StatelessPartnerTenantDataSyncService":
                f"https://sim.invalid/intune/{t.tenant_id}/StatelessPartnerTenantDataSyncService",
            "StatelessPartnerDeviceDataSyncService":
                f"https://sim.invalid/intune/{t.tenant_id}/StatelessPartnerDeviceDataSyncService",
        }
        # A principal that lists only the tenant service, or the compliance-partner names (admin mutation).
        world.mutate(t.tenant_id, "set_intune_endpoints", {"providers": ["StatelessPartnerTenantDataSyncService"]})
        s, body, _ = await h.get(f"/v1.0/servicePrincipals/{sp_id}/endpoints", p)
        assert [e["providerName"] for e in body["value"]] == ["StatelessPartnerTenantDataSyncService"]
        world.mutate(t.tenant_id, "set_intune_endpoints",
                     {"providers": ["PartnerTenantDataSyncService", "PartnerDeviceDataSyncService"]})
        s, body, _ = await h.get(f"/v1.0/servicePrincipals/{sp_id}/endpoints", p)
        assert {e["providerName"]: e["uri"].rsplit("/", 1)[1] for e in body["value"]} == {
            "PartnerTenantDataSyncService": "StatelessPartnerTenantDataSyncService",
            "PartnerDeviceDataSyncService": "StatelessPartnerDeviceDataSyncService",
        }
        with pytest.raises(DirectoryError):
            world.mutate(t.tenant_id, "set_intune_endpoints", {"providers": ["Nope"]})
        denied = app_principal(t.tenant_id, ["Device.Read.All"])
        assert (await h.get(f"/v1.0/servicePrincipals/{sp_id}/endpoints", denied))[0] == 403
    # the directory can be told to omit the Intune service principal (contract)
    w2 = World("https://sim.invalid")
    t2 = scenarios.add_tenant(w2, "small", 1, with_intune_sp=False)
    async with Harness(w2) as h:
        s, body, _ = await h.get(f"/v1.0/servicePrincipals?$filter=appId eq '{INTUNE_APP_ID}'",
                                 app_principal(t2.tenant_id))
        assert s == 200 and body["value"] == []


async def test_managed_app_registrations(world: World) -> None:
    t = _tenant(world)
    p = app_principal(t.tenant_id, ["DeviceManagementApps.Read.All"])
    async with Harness(world) as h:
        items, _ = await h.walk("/v1.0/deviceAppManagement/managedAppRegistrations?$top=7", p)
        assert len(items) == len(t.mam) > 7
        keys = {"id", "userId", "deviceName", "deviceTag", "appIdentifier", "platformVersion", "lastSyncDateTime",
                "flaggedReasons", "applicationVersion", "managementSdkVersion", "deviceType", "createdDateTime"}
        assert keys <= set(items[0])
        uid = items[0]["userId"]
        # Intune silently ignores unsupported $filter (graph.md §2): everything comes back
        filtered, _ = await h.walk(f"/v1.0/deviceAppManagement/managedAppRegistrations?$filter=userId eq '{uid}'", p)
        assert len(filtered) == len(t.mam)
        mine, _ = await h.walk(f"/v1.0/users/{uid}/managedAppRegistrations", p)
        assert mine and all(m["userId"] == uid for m in mine)
        denied = app_principal(t.tenant_id, ["Device.Read.All"])
        assert (await h.get("/v1.0/deviceAppManagement/managedAppRegistrations", denied))[0] == 403


# ---- permissions: one probe per route family ------------------------------------------------------------------

ROUTES = [
    ("/v1.0/users", "User.Read.All", "Device.Read.All"),
    ("/v1.0/groups", "GroupMember.Read.All", "User.Read.All"),
    ("/v1.0/groups/delta", "GroupMember.Read.All", "Device.Read.All"),
    ("/v1.0/devices", "Device.Read.All", "GroupMember.Read.All"),
    ("/v1.0/devices/delta", "Device.Read.All", "User.Read.All"),
    ("/v1.0/users/delta", "User.Read.All", "Device.Read.All"),
    ("/v1.0/servicePrincipals", "Application.Read.All", "Device.Read.All"),
    ("/v1.0/deviceAppManagement/managedAppRegistrations", "DeviceManagementApps.Read.All", "Device.Read.All"),
    ("/v1.0/users", "Directory.Read.All", "User.Read"),  # higher-privileged role grants it too
    ("/v1.0/devices", "Directory.Read.All", "Device.ReadWrite.All_typo"),
]


@pytest.mark.parametrize(("path", "good", "bad"), ROUTES)
async def test_permissions_per_route_family(world: World, path: str, good: str, bad: str) -> None:
    t = _tenant(world)
    async with Harness(world) as h:
        s, _, _ = await h.get(path, app_principal(t.tenant_id, [good]))
        assert s == 200
        s, body, _ = await h.get(path, app_principal(t.tenant_id, [bad]))
        assert s == 403 and body["error"]["code"] == "Authorization_RequestDenied"
        s, body, _ = await h.get(path, None)
        assert s == 401 and body["error"]["code"] == "InvalidAuthenticationToken"


async def test_permissions_on_item_routes(world: World) -> None:
    t = _tenant(world)
    g = t.groups_named("MTD Enrollment")[0]
    d = next(iter(t.devices))
    u = next(iter(t.users))
    probes = [
        (f"/v1.0/groups/{g.id}/members", "GroupMember.Read.All"),
        (f"/v1.0/groups/{g.id}/transitiveMembers", "GroupMember.Read.All"),
        (f"/v1.0/devices/{d.id}", "Device.Read.All"),
        (f"/v1.0/devices/{d.id}/registeredOwners", "Device.Read.All"),
        (f"/v1.0/users/{u.id}", "User.Read.All"),
        (f"/v1.0/users/{u.id}/ownedDevices", "User.Read.All"),
    ]
    async with Harness(world) as h:
        for path, good in probes:
            assert (await h.get(path, app_principal(t.tenant_id, [good])))[0] == 200, path
            assert (await h.get(path, app_principal(t.tenant_id, ["Application.Read.All"])))[0] == 403, path


async def test_limited_information_for_unreadable_member_types(world: World) -> None:
    t = _tenant(world)
    owner_id, devs = next((k, v) for k, v in t.owned.items() if v)
    async with Harness(world) as h:
        # ownedDevices with User.Read.All only: devices come back as @odata.type + id, other properties null
        _, body, _ = await h.get(f"/v1.0/users/{owner_id}/ownedDevices", app_principal(t.tenant_id, ["User.Read.All"]))
        row = body["value"][0]
        assert row["@odata.type"] == "#microsoft.graph.device" and row["id"] == devs[0]
        assert row["operatingSystem"] is None and row["deviceId"] is None
        _, body, _ = await h.get(f"/v1.0/users/{owner_id}/ownedDevices",
                                 app_principal(t.tenant_id, ["User.Read.All", "Device.Read.All"]))
        assert body["value"][0]["operatingSystem"] is not None


async def test_me_and_sso_memberships(world: World) -> None:
    t = _tenant(world)
    admins = t.groups_named("MTD Console Admins")[0]
    readers = t.groups_named("MTD Console Readers")[0]
    uid = next(iter(admins.members))
    up = user_principal(t.tenant_id, uid, ("User.Read",))
    async with Harness(world) as h:
        s, body, _ = await h.get("/v1.0/me?$select=id,displayName", up)
        assert s == 200 and body["id"] == uid
        _, body, _ = await h.get("/v1.0/me/memberOf", up)
        assert admins.id in {g["id"] for g in body["value"]}
        assert readers.id not in {g["id"] for g in body["value"]}  # only through nesting
        _, body, _ = await h.get("/v1.0/me/transitiveMemberOf", up)
        ids = {g["id"] for g in body["value"]}
        assert {admins.id, readers.id} <= ids
        assert body["value"][0]["displayName"]  # User.Read reads the signed-in user's groups (user-list-memberof)
        s, body, _ = await h.req("POST", "/v1.0/me/checkMemberGroups", up,
                                 body={"groupIds": [readers.id, "00000000-0000-0000-0000-000000000000"]})
        assert s == 200 and body["value"] == [readers.id]
        s, body, _ = await h.req("POST", "/v1.0/me/getMemberObjects", up, body={"securityEnabledOnly": True})
        assert s == 200 and readers.id in body["value"]
        # User.Read alone cannot list other users or read another user's devices
        assert (await h.get("/v1.0/users", up))[0] == 403
        other = next(u for u in t.users if u.id != uid)
        assert (await h.get(f"/v1.0/users/{other.id}/ownedDevices", up))[0] == 403
        assert (await h.get(f"/v1.0/users/{uid}/ownedDevices", up))[0] == 200
        # scopes without User.Read → 403; app tokens cannot use /me
        assert (await h.get("/v1.0/me", user_principal(t.tenant_id, uid, ("Calendars.Read",))))[0] == 403
        assert (await h.get("/v1.0/me", app_principal(t.tenant_id)))[0] == 400


async def test_orderby_display_name(world: World) -> None:
    t = _tenant(world)
    p = app_principal(t.tenant_id)
    async with Harness(world) as h:
        items, pages = await h.walk("/v1.0/users?$orderby=displayName desc&$select=displayName&$top=150", p)
        names = [u["displayName"] for u in items]
        assert len(names) == 400 and names == sorted(names, key=str.casefold, reverse=True) and len(pages) == 3
        assert (await h.get("/v1.0/users?$orderby=mail", p))[0] == 400
        s, _, _ = await h.get("/v1.0/groups?$orderby=displayName&$filter=startsWith(displayName,'M')", p)
        assert s == 400  # $filter + $orderby needs advanced queries
        s, body, _ = await h.get("/v1.0/groups?$orderby=displayName&$filter=startsWith(displayName,'M')&$count=true",
                                 p, headers=EVENTUAL)
        assert s == 200 and body["value"][0]["displayName"].casefold() <= body["value"][-1]["displayName"].casefold()
