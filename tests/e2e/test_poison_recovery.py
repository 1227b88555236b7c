"""Poison and recovery through devhost: a poll message that keeps failing lands in the poison queue after
maxDequeueCount, the tenant's status says why, and an operator re-queues it with the HTTP route.

The fault is real storage state, not a patched client: the ``leases`` table is deleted under the running app (as a
removed table or a revoked role assignment would make every lease write fail), then recreated — the operator's fix.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from azure.data.tables.aio import TableServiceClient

from shared_code.enrollment.poison import MAX_DEQUEUE_COUNT
from tests.conftest import REPO
from tests.e2e.conftest import provision


@pytest.fixture(scope="module")
async def devhost(module_env: dict[str, str], app_container: Any) -> AsyncIterator[Any]:
    """function_app under devhost with the repository's host.json, redeliveries without the 30 s gap."""
    import function_app
    from devhost.host import DevHost

    host_json = json.loads((REPO / "host.json").read_text())
    host_json["extensions"]["queues"]["visibilityTimeout"] = "00:00:00"
    host = DevHost(function_app.app, env=module_env, port=0, enable_timers=False, host_json=host_json)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()



def test_host_json_max_dequeue_count_is_the_one_the_code_reports() -> None:
    host_json = json.loads((REPO / "host.json").read_text())
    assert host_json["extensions"]["queues"]["maxDequeueCount"] == MAX_DEQUEUE_COUNT


async def test_a_poll_that_keeps_failing_is_poisoned_explained_and_requeued(
    sim: Any, api: httpx.AsyncClient, devhost: Any, module_env: dict[str, str], console_token: Any
) -> None:
    summary = await provision(sim, api, 1301)
    tid = summary["tenant_id"]
    assert (await api.post(f"/api/tenants/{tid}/sync")).status_code == 202
    await devhost.drain_queues()
    first = (await api.get(f"/api/tenants/{tid}")).json()["status"]
    assert first["lastPoll"]["result"] == "ok"

    leases = module_env["TABLE_PREFIX"] + "leases"
    async with TableServiceClient.from_connection_string(module_env["AzureWebJobsStorage"]) as tables:
        await tables.delete_table(leases)
        before = devhost.counters()["poll_tenant"]
        assert (await api.post(f"/api/tenants/{tid}/sync", params={"full": "true"})).status_code == 202
        await devhost.drain_queues()
        after = devhost.counters()["poll_tenant"]
        assert after["failures"] - before["failures"] == MAX_DEQUEUE_COUNT
        assert after["poisoned"] - before["poisoned"] == 1

        # The tenant's status says why, on which attempt, and what to do.
        delivery = (await api.get(f"/api/tenants/{tid}")).json()["status"]["sections"]["delivery"]
        assert delivery["state"] == "poisoned"
        assert delivery["attempt"] == delivery["maxAttempts"] == MAX_DEQUEUE_COUNT
        assert delivery["reason"] == "manual"
        assert "ResourceNotFoundError" in delivery["lastError"] and "TableNotFound" in delivery["lastError"]
        assert delivery["queue"] == module_env["POLL_QUEUE_NAME"] + "-poison"
        assert f"/api/tenants/{tid}/poison/requeue" in delivery["action"]

        # Only Console.Manage may re-queue.
        reader = {"Authorization": f"Bearer {console_token(['Console.Read'])}"}
        assert (await api.post(f"/api/tenants/{tid}/poison/requeue", headers=reader)).status_code == 403
        unknown = "00000000-0000-4000-8000-000000000013"
        assert (await api.post(f"/api/tenants/{unknown}/poison/requeue")).status_code == 404

        # The operator fixes the cause, then re-queues: the poll runs once and succeeds.
        await tables.create_table(leases)
    requeued = await api.post(f"/api/tenants/{tid}/poison/requeue")
    assert requeued.status_code == 202, requeued.text
    assert requeued.json() == {"tenantId": tid, "requeued": 1, "tenants": [tid], "remaining": 0, "unreadable": 0}
    before = devhost.counters()["poll_tenant"]
    await devhost.drain_queues()
    after = devhost.counters()["poll_tenant"]
    assert (after["successes"] - before["successes"], after["failures"] - before["failures"]) == (1, 0)
    status = (await api.get(f"/api/tenants/{tid}")).json()["status"]
    assert status["lastPoll"]["result"] == "ok" and status["lastPoll"]["mode"] == "full"
    assert status["sections"]["delivery"]["state"] == "requeued"
    assert status["sections"]["delivery"]["requeued"] == 1

    # Nothing left to re-queue: a second call is a harmless no-op.
    again = await api.post(f"/api/tenants/{tid}/poison/requeue")
    assert again.status_code == 202 and again.json()["requeued"] == 0
