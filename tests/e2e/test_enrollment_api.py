"""Enrollment through devhost, the HTTP API and the timers, as the console and Azure would drive it."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import provision


async def all_devices(api: httpx.AsyncClient, tid: str, limit: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = ""
    while True:
        page = (await api.get(f"/api/tenants/{tid}/devices", params={"after": after, "limit": limit})).json()
        out.extend(page["devices"])
        if page["next"] is None:
            return out
        after = page["next"]


async def test_dry_run_then_sync_then_the_feed_pages_in_order(sim: Any, api: httpx.AsyncClient, devhost: Any) -> None:
    summary = await provision(sim, api, 901)
    tid = summary["tenant_id"]
    truth = {d["id"] for d in sim.truth(tid, summary["enrollment_groups"])["devices"]}

    plan = await api.post(f"/api/tenants/{tid}/sync", params={"dryRun": "true"})
    assert plan.status_code == 200
    body = plan.json()
    assert body["dryRun"] is True and body["counts"]["enroll"] >= len(truth)
    assert all(i["reason"] for i in body["items"])
    assert (await api.get(f"/api/tenants/{tid}/devices")).json() == {"devices": [], "next": None}

    accepted = await api.post(f"/api/tenants/{tid}/sync")
    assert accepted.status_code == 202 and accepted.json()["queued"] is True
    await devhost.drain_queues()
    devices = await all_devices(api, tid, limit=7)
    enrolled = {d["id"] for d in devices if d["state"] == "enrolled"}
    assert truth <= enrolled and len(enrolled) == body["counts"]["enroll"]
    assert all(d["reason"] for d in devices)

    events: list[dict[str, Any]] = []
    after = ""
    while True:
        page = (await api.get(f"/api/tenants/{tid}/events", params={"after": after, "limit": 5})).json()
        events.extend(page["events"])
        after = page["next"]
        if not page["hasMore"]:
            break
    assert [e["sequence"] for e in events] == list(range(1, len(enrolled) + 1))
    assert {e["deviceObjectId"] for e in events} == enrolled and {e["type"] for e in events} == {"enrolled"}
    # The final cursor is the feed's position: nothing new after it.
    tail = (await api.get(f"/api/tenants/{tid}/events", params={"after": after})).json()
    assert tail["events"] == [] and tail["next"] == after

    status = (await api.get(f"/api/tenants/{tid}")).json()["status"]
    assert status["counts"]["enrolled"] == len(enrolled)
    assert status["lastPoll"]["mode"] == "full" and status["lastPoll"]["requests"] > 0
    assert status["enrollmentGroups"]["resolvedGroups"].keys() == set(summary["enrollment_groups"])


async def test_the_timer_fans_out_and_duplicates_do_one_poll(sim: Any, api: httpx.AsyncClient, devhost: Any,
                                                             app_container: Any) -> None:
    from shared_code.enrollment.service import PollMessage, build_enrollment_service

    summary = await provision(sim, api, 902)
    tid = summary["tenant_id"]
    await devhost.run_timer("dispatch_polls")
    service = app_container.service(build_enrollment_service)
    # A duplicate delivery of the dispatcher's message. (A console sync arriving while a poll runs is different: it
    # is requeued with a delay so a poll that starts after it serves it — tests/unit/enrollment covers that.)
    await service._send(PollMessage(tid, "scheduled", enqueued_at=app_container.clock.now()).to_json())
    await devhost.drain_queues()
    events = (await api.get(f"/api/tenants/{tid}/events")).json()["events"]
    assert events and len({e["deviceObjectId"] for e in events}) == len(events)
    counts = await devhost.queue_counts()
    assert not any(v for k, v in counts.items() if k.endswith("-poison"))
    # Just polled: the next tick does not enqueue it again.
    assert tid not in await service.dispatch()


async def test_guard_approval_with_nothing_staged_is_a_conflict(sim: Any, api: httpx.AsyncClient) -> None:
    summary = await provision(sim, api, 903)
    response = await api.post(f"/api/tenants/{summary['tenant_id']}/deactivations/approve",
                              json={"planId": "plan-" + "a" * 24})
    assert response.status_code == 409
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["currentPlan"] is None
    # The approval must name a plan.
    response = await api.post(f"/api/tenants/{summary['tenant_id']}/deactivations/approve", json={})
    assert response.status_code == 400 and response.json()["field"] == "planId"


@pytest.mark.parametrize(
    ("method", "path", "params", "status", "field"),
    [
        ("POST", "/api/tenants/not-a-guid/sync", {}, 400, "tenantId"),
        ("GET", "/api/tenants/not-a-guid/devices", {}, 400, "tenantId"),
        ("GET", "/api/tenants/not-a-guid/events", {}, 400, "tenantId"),
        ("POST", "/api/tenants/not-a-guid/deactivations/approve", {}, 400, "tenantId"),
        ("POST", "/api/tenants/{tid}/sync", {"dryRun": "maybe"}, 400, "dryRun"),
        ("GET", "/api/tenants/{tid}/events", {"limit": "0"}, 400, "limit"),
        ("GET", "/api/tenants/{tid}/events", {"limit": "1001"}, 400, "limit"),
        ("GET", "/api/tenants/{tid}/events", {"limit": "ten"}, 400, "limit"),
        ("GET", "/api/tenants/{tid}/events", {"after": "bogus"}, 400, "after"),
        ("GET", "/api/tenants/{tid}/events", {"after": "ev1.OTk5OTk5OTk6NQ"}, 400, "after"),
        ("GET", "/api/tenants/{tid}/devices", {"after": "x'; drop"}, 400, "after"),
        ("GET", "/api/tenants/{tid}/devices", {"limit": "-1"}, 400, "limit"),
        ("GET", "/api/tenants/{unknown}/events", {}, 404, None),
        ("GET", "/api/tenants/{unknown}/devices", {}, 404, None),
        ("POST", "/api/tenants/{unknown}/sync", {"dryRun": "true"}, 404, None),
    ],
)
async def test_bad_input_is_a_4xx_problem_naming_the_field(
    sim: Any, api: httpx.AsyncClient, method: str, path: str, params: dict[str, str], status: int, field: str | None
) -> None:
    summary = sim.create_tenant("small", seed=904)
    tid = summary["tenant_id"]
    await api.put(f"/api/tenants/{tid}", json={"enrollmentGroups": summary["enrollment_groups"]})
    url = path.format(tid=tid, unknown=str(uuid.uuid4()))
    response = await api.request(method, url, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if field is not None:
        assert response.json()["field"] == field


async def test_an_event_cursor_beyond_the_feed_is_unknown(sim: Any, api: httpx.AsyncClient) -> None:
    from shared_code.enrollment.service import encode_event_cursor

    summary = await provision(sim, api, 905)
    tid = summary["tenant_id"]
    response = await api.get(f"/api/tenants/{tid}/events", params={"after": encode_event_cursor(tid, [10])})
    assert response.status_code == 400 and response.json()["field"] == "after"


async def test_roles_are_enforced(sim: Any, devhost: Any, console_token: Any) -> None:
    tid = str(uuid.uuid4())
    async with httpx.AsyncClient(base_url=devhost.base_url) as anon:
        assert (await anon.post(f"/api/tenants/{tid}/sync")).status_code == 401
        reader = {"Authorization": f"Bearer {console_token(['Console.Read'])}"}
        assert (await anon.post(f"/api/tenants/{tid}/sync", headers=reader)).status_code == 403
        assert (await anon.post(f"/api/tenants/{tid}/deactivations/approve", headers=reader)).status_code == 403
