"""Offboarding through the HTTP API (issue 11 §5): ``DELETE /api/tenants/{id}?purge=true`` deprovisions the tenant and
removes its device rows, events, memberships, cursors, uploads, lease and status, in bounded steps, and nothing of
any other tenant.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from shared_code.enrollment.store import tenant_range
from shared_code.intune.uploads import PENDING_PARTITION

TABLES = ("devices", "memberships", "cursors", "uploads", "leases", "tenants")


async def _rows(container: Any, tenant_id: str) -> dict[str, int]:
    """Rows that belong to the tenant, per table, read straight from Azurite."""
    lo, hi = tenant_range(tenant_id)
    counts: dict[str, int] = {}
    for name in TABLES:
        table = await container.storage.table(name)
        n = 0
        async for e in table.list_entities(select=["PartitionKey", "RowKey"]):
            pk, rk = str(e["PartitionKey"]), str(e["RowKey"])
            if lo <= pk < hi or (pk in ("poll", PENDING_PARTITION) and rk.split("|")[0] == tenant_id):
                n += 1
        counts[name] = n
    return counts


async def _onboard(sim: Any, api: httpx.AsyncClient, devhost: Any, seed: int) -> str:
    summary = sim.create_tenant("small", seed=seed)
    tid = summary["tenant_id"]
    put = await api.put(f"/api/tenants/{tid}", json={"enrollmentGroups": summary["enrollment_groups"]})
    assert put.status_code == 201, put.text
    assert (await api.post(f"/api/tenants/{tid}/sync")).status_code == 202
    await devhost.drain_queues()
    device = (await api.get(f"/api/tenants/{tid}/devices", params={"limit": 1})).json()["devices"][0]
    threat = await api.put(f"/api/tenants/{tid}/devices/{device['deviceId']}/threat",
                           json={"level": "high", "detectedAt": "2026-02-01T08:00:00Z"})
    assert threat.status_code == 202, threat.text
    return str(tid)


async def test_purge_removes_everything_of_the_tenant_and_nothing_else(
    sim: Any, api: httpx.AsyncClient, devhost: Any, app_container: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared_code import offboarding

    # Small steps so the bounded, repeatable purge is exercised (the default deletes 20,000 rows per call).
    monkeypatch.setattr(offboarding, "PURGE_STEP_ROWS", 40)
    leaving, staying = await _onboard(sim, api, devhost, 1401), await _onboard(sim, api, devhost, 1402)
    before = await _rows(app_container, leaving)
    assert all(before[name] for name in TABLES), before
    kept = await _rows(app_container, staying)

    read_only = await api.delete(f"/api/tenants/{leaving}", params={"purge": "true"},
                                 headers={"Authorization": "Bearer " + sim.console_token(["Console.Read"])})
    assert read_only.status_code == 403
    calls = 0
    while True:
        calls += 1
        response = await api.delete(f"/api/tenants/{leaving}", params={"purge": "true"})
        if response.status_code == 204:
            break
        assert response.status_code == 202 and response.json()["state"] == "purging", response.text
        assert calls < 100
    assert calls > 1, "the purge was done in bounded steps"
    assert await _rows(app_container, leaving) == dict.fromkeys(TABLES, 0)
    assert (await api.get(f"/api/tenants/{leaving}")).status_code == 404
    assert sim.intune(leaving)["provisioned"] == 2, "deprovisioned at Intune before anything was deleted"
    # The other tenant is untouched, and keeps working.
    assert await _rows(app_container, staying) == kept
    assert (await api.get(f"/api/tenants/{staying}")).json()["state"] == "active"
    # Purged twice: nothing is left to find.
    assert (await api.delete(f"/api/tenants/{leaving}", params={"purge": "true"})).status_code == 404
    assert (await api.delete(f"/api/tenants/{leaving}", params={"purge": "maybe"})).status_code == 400
