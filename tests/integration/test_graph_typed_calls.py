"""Low-volume Graph calls through msgraph-sdk's typed builders (GraphClient.typed) on the bulk path's transport.

MAM registrations are the first such call (shared_code/identity/mam.py): paging with @odata.nextLink, the error
taxonomy (404, 403), the one retry layer (a throttled request retried once, counted by the same meter) — all against
the simulator with the unmodified SDK.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared_code.adapters.http_retry import UsageMeter
from shared_code.errors import FatalError, NotFoundError, PermissionMissingError
from shared_code.identity.mam import read_registrations, summarize

PERMISSION = "DeviceManagementApps.Read.All"
# The roles the simulator grants a new tenant's connector (tests/integration/intune/test_intune_flows.py).
DEFAULT_ROLES = ["User.Read.All", "Device.Read.All", "GroupMember.Read.All", "Application.Read.All", PERMISSION,
                 "update_device_health"]


@pytest.fixture(scope="module")
def tenant(sim: Any) -> dict[str, Any]:
    summary = sim.create_tenant("small", seed=4343)
    tid = summary["tenant_id"]
    truth = sim.truth(tid, summary["enrollment_groups"])
    owner = truth["devices"][0]["ownerId"]
    for n, kind in enumerate(("ios", "android", "ios")):
        sim.mutate(
            tid, "add_mam_registration", userId=owner, id=f"00000000-0000-0000-0000-00000000000{n + 1}",
            **{"@odata.type": f"#microsoft.graph.{kind}ManagedAppRegistration", "deviceTag": f"tag-{n}",
               "appIdentifier": {"@odata.type": "#microsoft.graph.androidMobileAppIdentifier", "packageId": "com.x"}
               if kind == "android" else {"@odata.type": "#microsoft.graph.iosMobileAppIdentifier",
                                          "bundleId": "com.y"}},
        )
    return {"tenant_id": tid, "owner": owner}


async def test_typed_paging_follows_next_links_on_the_shared_transport(
    app_container: Any, tenant: dict[str, Any]
) -> None:
    meter = UsageMeter()
    graph = app_container.graph(tenant["tenant_id"], meter)
    try:
        everything = await read_registrations(graph, tenant["owner"], permission=PERMISSION)
        paged = await read_registrations(graph, tenant["owner"], permission=PERMISSION, page_size=1)
    finally:
        await graph.aclose()
    assert [r.id for r in paged] == [r.id for r in everything]
    ours = [summarize(r) for r in paged if r.id.startswith("00000000-0000-0000-0000-0000000000")]
    assert [(r["platform"], r["app"], r["deviceTag"]) for r in ours] == [
        ("iOS", "com.y", "tag-0"), ("Android", "com.x", "tag-1"), ("iOS", "com.y", "tag-2")
    ]
    assert all(r["lastSyncDateTime"].endswith("Z") for r in ours)
    # One request for the unpaged read, one per registration for page_size=1: the SDK's requests go through our
    # transport and meter.
    assert meter.requests == 1 + len(everything)


async def test_sdk_errors_map_to_the_taxonomy(sim: Any, app_container: Any, tenant: dict[str, Any]) -> None:
    graph = app_container.graph(tenant["tenant_id"], UsageMeter())
    try:
        with pytest.raises(NotFoundError):
            await read_registrations(graph, "00000000-0000-0000-0000-00000000dead", permission=PERMISSION)
    finally:
        await graph.aclose()
    connector = sim.info["connector"]["client_id"]
    roles = [r for r in DEFAULT_ROLES if r != PERMISSION]
    sim.call("POST", "/_sim/consent", json={"tenant_id": tenant["tenant_id"], "app_id": connector, "roles": roles})
    await app_container.credentials.close()
    graph = app_container.graph(tenant["tenant_id"], UsageMeter())
    try:
        with pytest.raises(PermissionMissingError) as info:
            await read_registrations(graph, tenant["owner"], permission=PERMISSION)
    finally:
        await graph.aclose()
        sim.call("POST", "/_sim/consent", json={"tenant_id": tenant["tenant_id"], "app_id": connector,
                                                "roles": DEFAULT_ROLES})
        await app_container.credentials.close()
    assert info.value.permission == PERMISSION


async def test_a_throttled_typed_call_is_retried_once_by_the_one_retry_layer(
    sim: Any, app_container: Any, tenant: dict[str, Any]
) -> None:
    tid = tenant["tenant_id"]
    sim.fault("throttle", match={"tenant": tid, "path_prefix": "/v1.0/users"}, count=1, retry_after=0.05)
    meter = UsageMeter()
    graph = app_container.graph(tid, meter)
    try:
        registrations = await read_registrations(graph, tenant["owner"], permission=PERMISSION)
    finally:
        await graph.aclose()
        sim.clear_faults()
    assert registrations
    assert (meter.requests, meter.throttled, meter.retries) == (2, 1, 1)


async def test_a_rejected_token_is_refreshed_once_then_mapped(
    sim: Any, app_container: Any, tenant: dict[str, Any]
) -> None:
    tid = tenant["tenant_id"]
    sim.fault("status", match={"tenant": tid, "path_prefix": "/v1.0/users"}, count=1, status=401)
    meter = UsageMeter()
    graph = app_container.graph(tid, meter)
    try:
        registrations = await read_registrations(graph, tenant["owner"], permission=PERMISSION)
    finally:
        await graph.aclose()
        sim.clear_faults()
    assert registrations
    assert meter.requests == 2 and meter.statuses.get(401) == 1
    sim.fault("status", match={"tenant": tid, "path_prefix": "/v1.0/users"}, count=2, status=401)
    graph = app_container.graph(tid, UsageMeter())
    try:
        with pytest.raises(FatalError):
            await read_registrations(graph, tenant["owner"], permission=PERMISSION)
    finally:
        await graph.aclose()
        sim.clear_faults()
