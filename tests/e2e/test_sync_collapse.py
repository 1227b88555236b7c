"""Forced and dry-run syncs collapse per tenant (issue 11 §5), through devhost's HTTP API, Azurite and the simulator:
a looping client gets the pending request back and cannot spend the customer's Graph budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from shared_code.enrollment.service import build_enrollment_service
from tests.conftest import running_devhost
from tests.e2e.conftest import console_client


@pytest.fixture(scope="module")
async def quiet_host(module_env: dict[str, str], app_container: Any) -> AsyncIterator[Any]:
    """function_app under devhost whose queue trigger listens elsewhere: the messages the API enqueues stay in the
    poll queue, so this test counts them and runs the poll itself."""
    async with running_devhost(module_env | {"POLL_QUEUE_NAME": module_env["POLL_QUEUE_NAME"] + "-unread"}) as host:
        yield host


@pytest.fixture(scope="module")
async def api(quiet_host: Any, console_token: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The console's client on the quiet host (the shared ``api`` fixture is on the module's devhost)."""
    async with console_client(quiet_host, console_token, ("Console.Manage",)) as client:
        yield client


async def _queued(container: Any) -> int:
    client = container.storage.queue(container.settings.poll_queue_name)
    async with client:
        properties = await client.get_queue_properties()
    return int(properties.approximate_message_count or 0)


def _graph_requests(sim: Any, tenant_id: str) -> int:
    routes = sim.counters(tenant_id).get(tenant_id, {}).get("routes", {})
    return sum(int(c["requests"]) for label, c in routes.items() if label.startswith("/v1.0"))


async def test_repeated_sync_requests_collapse_into_the_pending_one(
    sim: Any, api: httpx.AsyncClient, app_container: Any
) -> None:
    summary = sim.create_tenant("small", seed=1501)
    tid = summary["tenant_id"]
    assert (await api.put(f"/api/tenants/{tid}", json={"enrollmentGroups": summary["enrollment_groups"]})
            ).status_code == 201
    service = app_container.service(build_enrollment_service)
    answers = [(await api.post(f"/api/tenants/{tid}/sync")).json() for _ in range(6)]
    assert [a["collapsed"] for a in answers] == [False] + [True] * 5
    assert len({a["requestId"] for a in answers}) == 1
    assert await _queued(app_container) == 1, "one message for six requests"
    # A full request is not served by the pending incremental one: it replaces it; an incremental one then
    # collapses into the full one.
    full = (await api.post(f"/api/tenants/{tid}/sync", params={"full": "true"})).json()
    assert full["collapsed"] is False and full["full"] is True and full["requestId"] != answers[0]["requestId"]
    again = (await api.post(f"/api/tenants/{tid}/sync")).json()
    assert again["collapsed"] is True and again["requestId"] == full["requestId"] and again["full"] is True
    assert await _queued(app_container) == 2
    # A poll starts (as the queue trigger would run it): the pending request is served; the next one is new.
    assert (await service.run_poll(tid, force_full=True, reason="manual"))["result"] == "ok"
    after = (await api.post(f"/api/tenants/{tid}/sync")).json()
    assert after["collapsed"] is False and after["requestId"] not in (answers[0]["requestId"], full["requestId"])
    assert await _queued(app_container) == 3


async def test_concurrent_dry_runs_of_a_tenant_share_one_computation(sim: Any, api: httpx.AsyncClient) -> None:
    summary = sim.create_tenant("small", seed=1502)
    tid = summary["tenant_id"]
    assert (await api.put(f"/api/tenants/{tid}", json={"enrollmentGroups": summary["enrollment_groups"]})
            ).status_code == 201
    before = _graph_requests(sim, tid)
    single = await api.post(f"/api/tenants/{tid}/sync", params={"dryRun": "true"})
    assert single.status_code == 200, single.text
    one = _graph_requests(sim, tid) - before
    before = _graph_requests(sim, tid)
    plans = await asyncio.gather(*(api.post(f"/api/tenants/{tid}/sync", params={"dryRun": "true"})
                                   for _ in range(4)))
    assert [p.status_code for p in plans] == [200] * 4
    assert all(p.json()["counts"] == single.json()["counts"] for p in plans)
    assert _graph_requests(sim, tid) - before == one, "four concurrent dry runs cost one"
