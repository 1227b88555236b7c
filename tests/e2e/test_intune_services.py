"""Intune's two partner services are discovered and used independently (issue 10 §6), through devhost and the timers.

A tenant's Intune service principal may list the tenant data-sync service without the device one (the simulator's
``set_intune_endpoints`` mutation). Provisioning and heartbeats need only the tenant service and keep working — a
stopped heartbeat would turn the connector Unresponsive at Intune — while threat levels and inventory answer 424
``device-service-unavailable``; the tenant document shows each service's state. Before the fix discovery failed as
a whole: the PUT recorded ``discovery_failed`` and no heartbeat was ever sent.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import MovableClock

PROBLEM = "https://mtd-connector.dev/problems/"
TENANT_PROVIDER = "StatelessPartnerTenantDataSyncService"
DEVICE_PROVIDER = "StatelessPartnerDeviceDataSyncService"


# The connector's clock is installed before any service is built (services bind it when they are made).
pytestmark = pytest.mark.usefixtures("clock")


def _endpoints(sim: Any, tid: str, *providers: str) -> None:
    sim.mutate(tid, "set_intune_endpoints", providers=list(providers))


async def test_tenant_service_alone_keeps_provisioning_and_heartbeats(
    sim: Any, api: httpx.AsyncClient, devhost: Any, app_container: Any, clock: MovableClock
) -> None:
    from shared_code.intune.wiring import build_intune

    summary = sim.create_tenant("small", seed=951)
    tid = summary["tenant_id"]
    _endpoints(sim, tid, TENANT_PROVIDER)

    put = await api.put(f"/api/tenants/{tid}", json={"enrollmentGroups": summary["enrollment_groups"],
                                                      "heartbeatIntervalMinutes": 15})
    assert put.status_code == 201, put.text
    intune = put.json()["status"]["intune"]
    assert intune["state"] == "provisioned", intune
    assert intune["services"]["tenant"]["state"] == "available"
    assert intune["services"]["device"]["state"] == "unavailable"
    assert intune["services"]["device"]["provider"] == DEVICE_PROVIDER
    assert "url" not in intune["services"]["tenant"]  # discovered URLs stay internal
    assert f"device_service_unavailable: {DEVICE_PROVIDER}" in put.json()["status"]["problems"]

    # Heartbeats flow through the timer, one per interval.
    beats = sim.intune(tid)["heartbeat_count"]
    for round_ in range(1, 3):
        clock.offset += 16 * 60
        await devhost.run_timer("send_heartbeats")
        assert sim.intune(tid)["heartbeat_count"] == beats + round_
    heartbeat = (await api.get(f"/api/tenants/{tid}")).json()["status"]["heartbeat"]
    assert heartbeat["state"] == "ok" and heartbeat["consecutiveFailures"] == 0
    assert sim.intune(tid)["status"] == "enabled"  # Intune sees a responsive connector

    # Enrollment is Graph's business, not Intune's: it runs as usual.
    await devhost.run_timer("dispatch_polls")
    await devhost.drain_queues()
    device = next(d for d in sim.truth(tid, summary["enrollment_groups"])["devices"])
    report = {"level": "high", "detectedAt": "2026-01-05T10:00:00Z"}
    discovery = app_container.service(build_intune).discovery
    discoveries: list[int] = []
    for _ in range(3):
        response = await api.put(f"/api/tenants/{tid}/devices/{device['deviceId']}/threat", json=report)
        assert response.status_code == 424, response.text
        problem = response.json()
        assert response.headers["content-type"].startswith("application/problem+json")
        assert (problem["type"], problem["provider"]) == (PROBLEM + "device-service-unavailable", DEVICE_PROVIDER)
        discoveries.append(discovery.discoveries)
    inventory = await api.post(f"/api/tenants/{tid}/devices/{device['deviceId']}/inventory")
    assert inventory.status_code == 424 and inventory.json()["type"] == PROBLEM + "device-service-unavailable"
    # The missing service is remembered for 5 minutes (the PUT's answer had aged past that while the heartbeats
    # ran, so the first call looked again): the later refused calls cost Graph no discovery.
    assert discoveries[1:] == [discoveries[0]] * 2 and discovery.discoveries == discoveries[0]

    # The tenant's admin fixes Intune; after the recheck interval the device service is found and used.
    _endpoints(sim, tid, TENANT_PROVIDER, DEVICE_PROVIDER)
    clock.offset += 6 * 60
    response = await api.put(f"/api/tenants/{tid}/devices/{device['deviceId']}/threat", json=report)
    assert response.status_code == 202, response.text
    assert discovery.discoveries == discoveries[0] + 1
    status = (await api.get(f"/api/tenants/{tid}")).json()["status"]
    assert status["intune"]["services"]["device"]["state"] == "available"
    assert not [p for p in status["problems"] if "service_unavailable" in p]
    # The heartbeat's tenant service entry was not re-discovered for the device service's sake.
    clock.offset += 16 * 60
    await devhost.run_timer("send_heartbeats")
    assert sim.intune(tid)["heartbeat_count"] == beats + 3


async def test_compliance_partner_names_are_an_alternative_through_the_settings(
    sim: Any, app_container: Any
) -> None:
    from shared_code.adapters.tenant_store import build_tenant_repository
    from shared_code.intune.discovery import DiscoveryService, IntuneServiceMissingError

    summary = sim.create_tenant("small", seed=952)
    tid = summary["tenant_id"]
    _endpoints(sim, tid, "PartnerTenantDataSyncService", "PartnerDeviceDataSyncService")
    tenants = app_container.service(build_tenant_repository)

    def discovery(**names: str) -> DiscoveryService:
        return DiscoveryService(settings=replace(app_container.settings, **names), graph_for=app_container.graph,
                                tenants=tenants, now=time.time)

    with pytest.raises(IntuneServiceMissingError) as info:
        await discovery().endpoint(tid, "tenant")  # the defaults look for the MTD (Stateless…) names
    assert (info.value.service, info.value.provider) == ("tenant", TENANT_PROVIDER)
    alternative = discovery(intune_tenant_provider="PartnerTenantDataSyncService",
                            intune_device_provider="PartnerDeviceDataSyncService")
    tenant = await alternative.endpoint(tid, "tenant")
    device = await alternative.endpoint(tid, "device")
    assert tenant.url.endswith(f"/intune/{tid}/StatelessPartnerTenantDataSyncService")
    assert device.url.endswith(f"/intune/{tid}/StatelessPartnerDeviceDataSyncService")
    assert alternative.discoveries == 1  # one Graph read answered for both services
