"""Heartbeats end to end: a stopped heartbeat turns the Intune connector Unresponsive after the configured days, a
resumed one brings it back (mobile-threat-defense.md "Unresponsive"; reference/intune.md §5).

Time is moved on both sides by the same amount — the simulator's clock (``/_sim/clock/advance``) and the connector's
(the container's clock) — as if the timer had simply not run for that long. The shared simulator is used with a tiny
``unresponsive_days`` (0.01 day = 864 s) so the advance (900 s) stays far below anything other modules depend on
(7-day delta tokens); the setting is restored afterwards.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import MovableClock


@pytest.fixture(scope="module")
def module_env(connector_env: dict[str, str]) -> dict[str, str]:
    """The lead's module_env with fewer transport retries: the failure paths here are about what happens *after*
    the retries give up, and each retry waits a jittered backoff (counts are asserted, never seconds)."""
    suffix = uuid.uuid4().hex[:10]
    return connector_env | {"TABLE_PREFIX": f"t{suffix}", "POLL_QUEUE_NAME": f"polls-{suffix}",
                            "GRAPH_MAX_RETRIES": "1"}


# The connector's clock is installed before any service is built (services bind it when they are made).
pytestmark = pytest.mark.usefixtures("clock")


async def test_stopped_heartbeat_turns_unresponsive_and_resumed_one_recovers(
    sim: Any, devhost: Any, api: httpx.AsyncClient, clock: MovableClock
) -> None:
    summary = sim.create_tenant("small", seed=601)
    tid = summary["tenant_id"]
    put = await api.put(f"/api/tenants/{tid}", json={"enrollmentGroups": summary["enrollment_groups"],
                                                       "heartbeatIntervalMinutes": 15})
    assert put.status_code == 201, put.text
    sim.call("POST", "/_sim/intune/config", json={"unresponsive_days": 0.01})
    try:
        await devhost.run_timer("send_heartbeats")
        assert sim.intune(tid)["status"] == "enabled"
        beats = sim.intune(tid)["heartbeat_count"]

        # The timer runs again at once: the tenant is not due (15-minute interval), nothing is sent.
        await devhost.run_timer("send_heartbeats")
        assert sim.intune(tid)["heartbeat_count"] == beats

        # The heartbeat stops for 900 s > 864 s: Intune marks the connector Unresponsive.
        sim.call("POST", "/_sim/clock/advance", json={"seconds": 900})
        clock.offset += 900
        assert sim.intune(tid)["status"] == "unresponsive"

        # It resumes: the tenant is due again, one heartbeat brings the connector back.
        await devhost.run_timer("send_heartbeats")
        view = sim.intune(tid)
        assert (view["status"], view["heartbeat_count"]) == ("enabled", beats + 1)
        doc = (await api.get(f"/api/tenants/{tid}")).json()
        assert doc["status"]["heartbeat"]["state"] == "ok"
        assert doc["status"]["activity"]["heartbeatsSent"] == 2
    finally:
        sim.call("POST", "/_sim/intune/config", json={"unresponsive_days": 7})


async def test_heartbeat_failures_back_off_per_tenant_and_others_keep_beating(
    sim: Any, devhost: Any, api: httpx.AsyncClient, clock: MovableClock
) -> None:
    healthy = sim.create_tenant("small", seed=602)
    broken = sim.create_tenant("small", seed=603)
    for summary in (healthy, broken):
        response = await api.put(f"/api/tenants/{summary['tenant_id']}",
                                 json={"enrollmentGroups": summary["enrollment_groups"]})
        assert response.status_code == 201
    prefix = f"/intune/{broken['tenant_id']}/StatelessPartnerTenantDataSyncService/PartnerTenantHeartbeat"
    sim.fault("status", match={"path_prefix": prefix}, count=1000, status=500)
    try:
        before = sim.intune(healthy["tenant_id"])["heartbeat_count"]
        for _ in range(2):
            clock.offset += 16 * 60
            await devhost.run_timer("send_heartbeats")
        assert sim.intune(healthy["tenant_id"])["heartbeat_count"] == before + 2
        doc = (await api.get(f"/api/tenants/{broken['tenant_id']}")).json()
        heartbeat = doc["status"]["heartbeat"]
        assert heartbeat["state"] == "failing" and heartbeat["consecutiveFailures"] == 2
        assert heartbeat["nextAttemptAt"] is not None  # backoff: 2 × 15 min after the second failure
        # Inside the backoff window the broken tenant is skipped, the healthy one still beats.
        clock.offset += 16 * 60
        await devhost.run_timer("send_heartbeats")
        doc = (await api.get(f"/api/tenants/{broken['tenant_id']}")).json()
        assert doc["status"]["heartbeat"]["consecutiveFailures"] == 2
        assert sim.intune(healthy["tenant_id"])["heartbeat_count"] == before + 3
    finally:
        sim.clear_faults()
