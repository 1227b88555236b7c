"""Helpers for the enrollment tests against the simulator: provisioning, ground truth, directory reads.

Ground truth comes from the simulator (``/_sim/tenants/{id}/truth``: owner transitively in a named group, or the
device itself a member, with or without an owner). :func:`expected_ids` cross-checks the direct members with Graph's
own ``transitiveMembers`` (a different code path from the connector's delta walk).
"""

from __future__ import annotations

from typing import Any

from shared_code.adapters.http_retry import UsageMeter
from shared_code.domain.reconcile import ENROLLED
from shared_code.tenants import TenantConfig

PLATFORMS = ("iOS", "iPadOS", "Android")


async def provision(service: Any, summary: dict[str, Any], **overrides: Any) -> TenantConfig:
    """Store a tenant config for a simulated tenant (enrollment groups = the scenario's roots by default)."""
    config = TenantConfig(
        tenant_id=summary["tenant_id"],
        enrollment_groups=tuple(overrides.pop("groups", summary["enrollment_groups"])),
        **overrides,
    )
    await service.tenants.put_config(config)
    return config


async def graph_get_all(container: Any, tenant_id: str, path: str, params: dict[str, str] | None = None,
                        headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every item of a Graph collection (test-side reads, not the connector's reader)."""
    graph = container.graph(tenant_id, UsageMeter())
    try:
        out: list[dict[str, Any]] = []
        async for page in graph.pages(path, permission="Directory.Read.All", params=params, headers=headers):
            out.extend(page.get("value", ()))
        return out
    finally:
        await graph.aclose()


async def expected_ids(sim: Any, container: Any, tenant_id: str, groups: list[str],
                       keep_disabled: bool = True, platforms: tuple[str, ...] = PLATFORMS) -> set[str]:
    """Device ids that should be enrolled now: simulator truth plus direct device members (owned or not)."""
    truth = sim.truth(tenant_id, groups, ",".join(platforms))
    ids = {d["id"] for d in truth["devices"] if keep_disabled or d.get("ownerEnabled", True)}
    for gid in truth["resolved_groups"].values():
        members = await graph_get_all(container, tenant_id, f"/groups/{gid}/transitiveMembers")
        for m in members:
            if m.get("@odata.type") != "#microsoft.graph.device":
                continue
            dev = await graph_get_all_one(container, tenant_id, f"/devices/{m['id']}",
                                          {"$expand": "registeredOwners"})
            if dev.get("operatingSystem") in platforms:
                ids.add(m["id"])
    return ids


async def graph_get_all_one(container: Any, tenant_id: str, path: str,
                            params: dict[str, str] | None = None) -> dict[str, Any]:
    """One Graph object."""
    graph = container.graph(tenant_id, UsageMeter())
    try:
        return await graph.get_json(path, permission="Directory.Read.All", params=params)
    finally:
        await graph.aclose()


async def enrolled_ids(service: Any, tenant_id: str) -> set[str]:
    """Ids of device rows currently enrolled."""
    rows = await service.store.load_devices(tenant_id)
    return {k for k, v in rows.items() if v.state == ENROLLED}


async def all_events(service: Any, tenant_id: str) -> list[Any]:
    """The whole change feed."""
    return list((await service.store.events(tenant_id, None, 100_000))[0])


def assert_feed_consistent(events: list[Any], enrolled: set[str]) -> None:
    """No duplicate and no missing event: per device the feed alternates enrolled/deactivated (updates only while
    enrolled), each shard's sequences are 1..n without gaps, and replaying the feed gives exactly the enrolled set."""
    for shard in {e.shard for e in events}:
        seqs = [e.seq for e in events if e.shard == shard]
        assert seqs == list(range(1, len(seqs) + 1)), f"shard {shard}: sequence gap or repeat"
    assert len({e.id for e in events}) == len(events)
    state: dict[str, bool] = {}
    for e in events:
        was = state.get(e.device, False)
        if e.type == "enrolled":
            assert not was, f"duplicate enroll event for {e.device} (seq {e.seq})"
            state[e.device] = True
        elif e.type == "deactivated":
            assert was, f"deactivation without enrollment for {e.device} (seq {e.seq})"
            state[e.device] = False
        else:
            assert was, f"update of a device that is not enrolled {e.device} (seq {e.seq})"
    assert {d for d, on in state.items() if on} == enrolled


async def users_owning_mobile_devices(container: Any, tenant_id: str) -> dict[str, list[dict[str, Any]]]:
    """user id → owned mobile devices (test-side read)."""
    users = await graph_get_all(container, tenant_id, "/users",
                                {"$select": "id,accountEnabled", "$expand": "ownedDevices"})
    out: dict[str, list[dict[str, Any]]] = {}
    for u in users:
        devs = [d for d in u.get("ownedDevices") or () if d.get("operatingSystem") in PLATFORMS]
        if devs:
            out[u["id"]] = devs
    return out


async def group_ids(container: Any, tenant_id: str) -> dict[str, list[str]]:
    """display name → group ids."""
    out: dict[str, list[str]] = {}
    for g in await graph_get_all(container, tenant_id, "/groups", {"$select": "id,displayName"}):
        out.setdefault(g["displayName"], []).append(g["id"])
    return out
