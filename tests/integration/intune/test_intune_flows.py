"""Intune flows through the real services against the simulator (HTTPS, real tokens) and Azurite.

Enrolled devices come from the simulator's ground truth (the enrollment feature's store is stood in by
StaticEnrolledDevices); everything else is the production wiring (``build_intune``).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest

from shared_code.errors import ConflictError, ConsentRequiredError, NotFoundError, PermissionMissingError
from shared_code.intune.devices import EnrolledDevice, StaticEnrolledDevices
from shared_code.intune.messages import ConnectorNotReadyError
from shared_code.intune.wiring import IntuneServices, build_intune, use_enrolled_devices
from shared_code.tenants import TenantConfig

DEFAULT_ROLES = [
    "User.Read.All",
    "Device.Read.All",
    "GroupMember.Read.All",
    "Application.Read.All",
    "DeviceManagementApps.Read.All",
    "update_device_health",
]


class World:
    """One simulated customer tenant wired to the connector's services."""

    def __init__(self, sim: Any, container: Any, services: IntuneServices, devices: StaticEnrolledDevices) -> None:
        self.sim = sim
        self.container = container
        self.services = services
        self.devices = devices
        self.connector_app = sim.info["connector"]["client_id"]

    def new_tenant(self, seed: int, **extra: Any) -> tuple[str, list[str], list[dict[str, Any]]]:
        summary = self.sim.create_tenant("small", seed=seed, **extra)
        tid = summary["tenant_id"]
        groups = summary["enrollment_groups"]
        truth = self.sim.truth(tid, groups)
        for d in truth["devices"]:
            self.devices.add(tid, EnrolledDevice(d["deviceId"], d["ownerId"], d["operatingSystem"]))
        return tid, groups, truth["devices"]

    async def grant(self, tid: str, roles: list[str]) -> None:
        """Replace the tenant's grants; drop cached tokens (as their expiry would) so the next call sees them."""
        self.sim.call("POST", "/_sim/consent", json={"tenant_id": tid, "app_id": self.connector_app, "roles": roles})
        await self.container.credentials.close()

    async def provision(self, tid: str, groups: list[str], **extra: Any) -> Any:
        config = TenantConfig(tenant_id=tid, enrollment_groups=tuple(groups), **extra)
        return await self.services.provisioning.provision(config)


@pytest.fixture(scope="module")
def module_env(connector_env: dict[str, str]) -> dict[str, str]:
    """The lead's module_env with fewer transport retries: the failure paths here are about what happens *after*
    the retries give up, and each retry waits a jittered backoff (counts are asserted, never seconds)."""
    suffix = uuid.uuid4().hex[:10]
    return connector_env | {"TABLE_PREFIX": f"t{suffix}", "POLL_QUEUE_NAME": f"polls-{suffix}",
                            "GRAPH_MAX_RETRIES": "2"}


@pytest.fixture(scope="module")
async def world(sim: Any, app_container: Any) -> World:
    devices = StaticEnrolledDevices()
    use_enrolled_devices(app_container, devices)
    return World(sim, app_container, app_container.service(build_intune), devices)


def _ios(devices: list[dict[str, Any]], *, large: bool | None = None) -> dict[str, Any]:
    for d in devices:
        if d["operatingSystem"] not in ("iOS", "iPadOS"):
            continue
        # The simulator gives ~1 device in 16 a 1,000–1,600-app inventory (simulator/intune.py app_inventory).
        is_large = hashlib.sha256(d["deviceId"].encode()).digest()[0] % 16 == 0
        if large is None or large == is_large:
            return d
    pytest.fail("the seeded scenario must contain a matching iOS device (scenarios are deterministic)")


async def test_provision_heartbeat_threat_inventory_cycle(world: World) -> None:
    tid, groups, devices = world.new_tenant(seed=401)
    record, created = await world.provision(tid, groups)
    assert created is True
    assert record.status["intune"]["state"] == "provisioned"
    assert world.sim.intune(tid)["status"] == "available"

    again, created_again = await world.provision(tid, groups)
    assert created_again is False and again.config.config_version == 1

    run = await world.services.heartbeat.run(force=True)
    assert run.outcomes[tid] == "sent"
    view = world.sim.intune(tid)
    assert view["status"] == "enabled" and view["heartbeat_count"] == 1

    device = _ios(devices)
    upload, replayed = await world.services.threat.report(
        tid, device["deviceId"], {"level": "medium", "detectedAt": "2026-01-05T10:00:00Z", "threats": [{"name": "x"}],
                                  "idempotencyKey": "k-1"}
    )
    assert (upload.status, replayed) == ("Pending", False)
    replay, replayed = await world.services.threat.report(
        tid, device["deviceId"], {"level": "medium", "detectedAt": "2026-01-05T10:00:00Z", "threats": [{"name": "x"}],
                                  "idempotencyKey": "k-1"}
    )
    assert replayed is True and replay.message_id == upload.message_id
    with pytest.raises(ConflictError):
        await world.services.threat.report(
            tid, device["deviceId"], {"level": "high", "detectedAt": "2026-01-05T10:00:00Z", "idempotencyKey": "k-1"}
        )

    inventory_request = await world.services.inventory.request(tid, device["deviceId"])
    assert inventory_request.status == "Pending"

    # The simulator answers Pending for the first poll, then settles (pending_polls = 1).
    first = await world.services.messages.settle_pending()
    second = await world.services.messages.settle_pending()
    assert first["pending"] >= 2 and second["succeeded"] >= 2

    latest = await world.services.threat.latest(tid, device["deviceId"])
    assert latest is not None and (latest["status"], latest["level"]) == ("Succeeded", "medium")
    assert world.sim.intune(tid)["threat_levels"][device["deviceId"]]["ThreatLevel"] == "medium"

    inventory = await world.services.inventory.get(tid, device["deviceId"])
    assert inventory["requestStatus"] == "Succeeded"
    assert inventory["appCount"] == len(inventory["apps"]) > 0
    app = inventory["apps"][0]
    assert {"appId", "version", "shortVersion", "name", "bundleSize", "dynamicSize", "validated", "managed"} <= set(app)

    record = await world.services.tenants.get(tid)
    assert record is not None
    activity = record.status["intune_activity"]
    assert activity["heartbeatsSent"] == 1
    assert activity["threatReportsAccepted"] == 1
    assert activity["inventoriesFetched"] == 1


async def test_large_inventory_is_chunked_and_fetched_on_get(world: World) -> None:
    tid, groups, devices = world.new_tenant(seed=402)
    await world.provision(tid, groups)
    device = None
    for seed in range(403, 420):
        device = next(
            (
                d
                for d in devices
                if d["operatingSystem"] in ("iOS", "iPadOS")
                and hashlib.sha256(d["deviceId"].encode()).digest()[0] % 16 == 0
            ),
            None,
        )
        if device:
            break
        tid, groups, devices = world.new_tenant(seed=seed)
        await world.provision(tid, groups)
    assert device is not None, "no large-inventory iOS device in 17 seeded tenants"
    await world.services.inventory.request(tid, device["deviceId"])
    # GET fetches when ready: the first GET polls (Pending), the second settles and stores the inventory.
    pending = await world.services.inventory.get(tid, device["deviceId"])
    assert pending["requestStatus"] == "Pending" and pending["apps"] == []
    done = await world.services.inventory.get(tid, device["deviceId"])
    assert done["requestStatus"] == "Succeeded"
    assert done["appCount"] >= 1000 and len(done["apps"]) == done["appCount"]
    header = await world.services.messages.store.get_latest(tid, "inv", device["deviceId"])
    assert header is not None and header["chunks"] >= 1
    # A second inventory replaces the first generation: no orphan chunk rows are left.
    await world.services.inventory.request(tid, device["deviceId"])
    await world.services.inventory.get(tid, device["deviceId"])
    again = await world.services.inventory.get(tid, device["deviceId"])
    assert again["appCount"] == done["appCount"]
    table = await world.container.storage.table("uploads")
    chunk_rows = [
        e
        async for e in table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": tid, "lo": "invc|", "hi": "invc}"},
        )
    ]
    new_header = await world.services.messages.store.get_latest(tid, "inv", device["deviceId"])
    assert new_header is not None and len(chunk_rows) == new_header["chunks"]


async def test_threat_upload_failed_with_error_detail(world: World) -> None:
    tid, groups, _ = world.new_tenant(seed=421)
    await world.provision(tid, groups)
    ghost = str(uuid.uuid4())  # enrolled locally, unknown to Entra/Intune → the message fails at Intune
    world.devices.add(tid, EnrolledDevice(ghost, str(uuid.uuid4()), "iOS"))
    upload, _ = await world.services.threat.report(tid, ghost, {"level": "low", "detectedAt": "2026-01-05T10:00:00Z"})
    for _ in range(3):
        await world.services.messages.settle_pending()
    latest = await world.services.threat.latest(tid, ghost)
    assert latest is not None and latest["status"] == "Failed"
    assert "DeviceNotFound" in (latest["errorDetail"] or "")
    stored = await world.services.messages.store.get(tid, upload.message_id)
    assert stored is not None and stored.status == "Failed" and stored.error_detail


async def test_unknown_tenant_and_device_not_enrolled(world: World) -> None:
    with pytest.raises(NotFoundError):
        await world.services.threat.report(str(uuid.uuid4()), str(uuid.uuid4()), {"level": "low",
                                                                                  "detectedAt": "2026-01-01T00:00:00Z"})
    tid, groups, _ = world.new_tenant(seed=422)
    await world.provision(tid, groups)
    with pytest.raises(NotFoundError):
        await world.services.threat.report(tid, str(uuid.uuid4()), {"level": "low",
                                                                     "detectedAt": "2026-01-01T00:00:00Z"})


async def test_deprovision_then_threat_is_refused_with_connector_state(world: World) -> None:
    tid, groups, devices = world.new_tenant(seed=423)
    await world.provision(tid, groups)
    # Intune deprovisioned behind our back (another console, or an Intune reset): Unavailable blocks uploads.
    tenant_service = await world.services.discovery.endpoint(tid, "tenant")
    await world.services.intune.put_partner_tenant(
        tenant_service.url, tid, provisioned=2, enrollment_url="", remediation_url=""
    )
    with pytest.raises(ConnectorNotReadyError) as info:
        await world.services.threat.report(tid, devices[0]["deviceId"], {"level": "low",
                                                                         "detectedAt": "2026-01-01T00:00:00Z"})
    assert info.value.connector_state["connectorState"] == "unavailable"

    # Our own DELETE: Intune Provisioned=2, state deprovisioned, polling stops (not listed active), history kept.
    await world.services.provisioning.deprovision(tid)
    record = await world.services.tenants.get(tid)
    assert record is not None and record.state == "deprovisioned"
    assert tid not in [r.config.tenant_id for r in await world.services.tenants.list_active()]
    with pytest.raises(NotFoundError):
        await world.services.threat.report(tid, devices[0]["deviceId"], {"level": "low",
                                                                         "detectedAt": "2026-01-01T00:00:00Z"})


async def test_intune_5xx_is_retried_then_recorded(world: World) -> None:
    tid, groups, _ = world.new_tenant(seed=424)
    await world.provision(tid, groups)
    prefix = f"/intune/{tid}/StatelessPartnerTenantDataSyncService/PartnerTenantHeartbeat"
    # Two 503s then success: the retry layer absorbs them.
    world.sim.fault("status", match={"path_prefix": prefix}, count=2, status=503)
    record = await world.services.tenants.get(tid)
    assert record is not None
    assert await world.services.heartbeat.beat(record) == "sent"
    # A storm longer than the retries (and the re-discovery retry): recorded per tenant, with backoff next time.
    world.sim.fault("status", match={"path_prefix": prefix}, count=40, status=503)
    try:
        record = await world.services.tenants.get(tid)
        assert record is not None
        assert await world.services.heartbeat.beat(record) == "failed"
        record = await world.services.tenants.get(tid)
        assert record is not None
        section = record.status["heartbeat"]
        assert section["state"] == "failing" and section["consecutiveFailures"] == 1
        assert "RetriableError" in section["lastError"]
    finally:
        world.sim.clear_faults()


async def test_missing_update_device_health_marks_consent_required(world: World) -> None:
    tid, groups, _ = world.new_tenant(seed=425)
    await world.provision(tid, groups)
    await world.grant(tid, [r for r in DEFAULT_ROLES if r != "update_device_health"])
    record = await world.services.tenants.get(tid)
    assert record is not None
    assert await world.services.heartbeat.beat(record) == "consent_required"
    record = await world.services.tenants.get(tid)
    assert record is not None
    assert record.status["heartbeat"]["state"] == "consent_required"
    assert record.status["permissions"]["heartbeat"] == "permission_missing: update_device_health"

    await world.grant(tid, DEFAULT_ROLES)
    record = await world.services.tenants.get(tid)
    assert record is not None
    assert await world.services.heartbeat.beat(record) == "sent"
    record = await world.services.tenants.get(tid)
    assert record is not None and record.status["permissions"]["heartbeat"] is None


async def test_consent_revoked_fails_provisioning(world: World) -> None:
    tid, groups, _ = world.new_tenant(seed=426)
    world.sim.call("DELETE", "/_sim/consent", params={"tenant_id": tid, "app_id": world.connector_app})
    with pytest.raises(ConsentRequiredError):
        await world.provision(tid, groups)
    assert await world.services.tenants.get(tid) is None


async def test_discovery_missing_intune_service_is_a_clear_status(world: World) -> None:
    tid, groups, _ = world.new_tenant(seed=427, with_intune_sp=False)
    record, created = await world.provision(tid, groups)
    assert created is True, "the config is stored: enrollment works without Intune"
    assert record.status["intune"]["state"] == "discovery_failed"
    assert record.status["intune"]["problem"].startswith("intune_service_missing:")


async def test_missing_application_read_all_is_permission_missing(world: World) -> None:
    tid, groups, _ = world.new_tenant(seed=428)
    await world.grant(tid, [r for r in DEFAULT_ROLES if r != "Application.Read.All"])
    record, _ = await world.provision(tid, groups)
    assert record.status["intune"]["state"] == "permission_missing"
    assert record.status["permissions"]["intune"] == "permission_missing: Application.Read.All"


async def test_token_outage_is_retriable_and_recorded(world: World) -> None:
    tid, groups, _ = world.new_tenant(seed=429)
    await world.provision(tid, groups)
    world.container.service(build_intune).discovery.invalidate(tid)
    world.sim.fault("token_outage", match={"tenant": tid}, count=50, status=503)
    try:
        record = await world.services.tenants.get(tid)
        assert record is not None
        # Azure-identity keeps tokens cached, so a token outage only bites a cold cache: use a fresh credential.
        await world.container.credentials.close()
        assert await world.services.heartbeat.beat(record) == "failed"
        record = await world.services.tenants.get(tid)
        assert record is not None
        assert record.status["heartbeat"]["state"] == "failing"
        assert "token endpoint" in record.status["heartbeat"]["lastError"]
    finally:
        world.sim.clear_faults()


async def test_mam_check(world: World) -> None:
    tid, groups, devices = world.new_tenant(seed=430)
    await world.provision(tid, groups)
    # The scenario registers MAM apps for a slice of mobile owners with deviceTag = the Entra deviceId.
    found = None
    for d in devices:
        result = await world.services.mam.check(tid, d["ownerId"], d["deviceId"])
        if result["device"]["hasMamRegistration"]:
            found = result
            break
    assert found is not None, "no MAM registration in the scenario"
    registration = found["registrations"][0]
    assert {"app", "platform", "deviceTag", "deviceName", "lastSyncDateTime"} <= set(registration)
    assert found["device"]["matchedBy"] == "deviceTag"

    await world.grant(tid, [r for r in DEFAULT_ROLES if r != "DeviceManagementApps.Read.All"])
    with pytest.raises(PermissionMissingError) as info:
        await world.services.mam.check(tid, devices[0]["ownerId"])
    assert info.value.permission == "DeviceManagementApps.Read.All"
    record = await world.services.tenants.get(tid)
    assert record is not None
    assert record.status["permissions"]["mam"] == "permission_missing: DeviceManagementApps.Read.All"
    # Nothing else broke: the heartbeat still goes out.
    assert await world.services.heartbeat.beat(record) == "sent"
    await world.grant(tid, DEFAULT_ROLES)


async def test_sso_roles_from_a_sign_in_token_and_app_only_memberships(world: World) -> None:
    tid, groups, devices = world.new_tenant(seed=431)
    owner = devices[0]["ownerId"]
    graph = world.container.graph(tid)
    group_ids: list[str] = []
    try:
        for name in groups:
            odata_name = name.replace("'", "''")
            page = await graph.get_json(
                "/groups", permission="GroupMember.Read.All", params={"$filter": f"displayName eq '{odata_name}'"}
            )
            group_ids.extend(g["id"] for g in page["value"])
    finally:
        await graph.aclose()
    other = str(uuid.uuid4())
    mappings = (*((g, "Console.Manage") for g in group_ids), (other, "Console.Admin"))
    await world.provision(tid, groups, role_mappings=mappings)
    user_token = world.sim.call("POST", "/_sim/tokens/user", json={
        "tenant_id": tid, "user_id": owner, "scopes": ["Console.SignIn"], "audience": "api://mtd-connector",
    })["access_token"]
    result = await world.services.sso.roles({"accessToken": user_token})
    assert result["tenantId"] == tid
    assert result["user"]["id"] == owner
    # The owner is in the enrollment group directly or through nesting: transitiveMemberOf is transitive.
    assert result["roles"] == ["Console.Manage"]
    assert result["matchedGroups"] and set(result["matchedGroups"]) <= set(group_ids)

    # Memberships are read app-only with User.Read.All (the permission enrollment needs anyway; Graph also takes
    # the higher GroupMember.Read.All, so both are withdrawn to see the failure).
    await world.grant(tid, [r for r in DEFAULT_ROLES if r not in ("User.Read.All", "GroupMember.Read.All")])
    try:
        with pytest.raises(PermissionMissingError) as info:
            await world.services.sso.roles({"accessToken": user_token})
        assert info.value.permission == "User.Read.All"
    finally:
        await world.grant(tid, DEFAULT_ROLES)


async def test_discovery_is_cached_and_rediscovered_on_404_and_unreachable(world: World) -> None:
    from dataclasses import replace

    tid, groups, _ = world.new_tenant(seed=433)
    await world.provision(tid, groups)
    discovery = world.services.discovery
    before = discovery.discoveries
    await discovery.endpoint(tid, "tenant")
    await discovery.endpoint(tid, "device")
    assert discovery.discoveries == before, "cached for INTUNE_DISCOVERY_TTL_SECONDS"

    good = await discovery.endpoint(tid, "tenant")
    device = await discovery.endpoint(tid, "device")
    base = world.sim.info["base_url"]
    # A moved service: the cached URL answers 404 → one re-discovery of that service, then the call succeeds.
    discovery._cache[(tid, "tenant")] = replace(good, url=f"{base}/intune/{tid}/Moved")
    record = await world.services.tenants.get(tid)
    assert record is not None
    assert await world.services.heartbeat.beat(record) == "sent"
    assert discovery.discoveries == before + 1
    # A host that no longer resolves/accepts connections: re-discovered the same way (after the transport retries).
    discovery._cache[(tid, "tenant")] = replace(good, url="https://localhost:9/x")
    assert await world.services.heartbeat.beat(record) == "sent"
    assert discovery.discoveries == before + 2
    # The device service's cached entry was left alone by the tenant service's re-discoveries.
    assert discovery._cache[(tid, "device")] == device


async def test_intune_timeouts_are_retried(world: World) -> None:
    from shared_code.adapters.intune import IntuneClient

    tid, groups, _ = world.new_tenant(seed=434)
    await world.provision(tid, groups)
    settings = world.container.settings
    client = IntuneClient(
        credentials=world.container.credentials,
        resource=settings.intune_resource,
        tenant_api_version=settings.intune_tenant_api_version,
        device_api_version=settings.intune_device_api_version,
        max_retries=2,
        timeout_seconds=0.5,
        service_domains=settings.intune_service_domains,
    )
    tenant_service = await world.services.discovery.endpoint(tid, "tenant")
    prefix = f"/intune/{tid}/StatelessPartnerTenantDataSyncService/PartnerTenantHeartbeat"
    world.sim.fault("latency", match={"path_prefix": prefix}, count=1, latency_ms=2000)
    try:
        before = world.sim.intune(tid)["heartbeat_count"]
        await client.heartbeat(tenant_service.url, tid)
        assert client.meter.retries == 1 and client.meter.requests == 2  # max_retries=2 client of its own
        assert world.sim.intune(tid)["heartbeat_count"] == before + 1
    finally:
        world.sim.clear_faults()
        await client.aclose()


async def test_heartbeat_concurrency_is_bounded(world: World) -> None:
    from shared_code.adapters.memory_tenant_store import MemoryTenantRepository
    from shared_code.intune.discovery import DiscoveryService
    from shared_code.intune.heartbeat import HeartbeatService
    from shared_code.intune.provisioning import ProvisioningService
    from shared_code.intune.status import ActivityCounters

    tenants = MemoryTenantRepository()
    settings = world.container.settings
    discovery = DiscoveryService(settings=settings, graph_for=world.container.graph, tenants=tenants,
                                 now=world.container.clock.now)
    provisioning = ProvisioningService(tenants=tenants, discovery=discovery, intune=world.services.intune,
                                       graph_for=world.container.graph, now=world.container.clock.now)
    service = HeartbeatService(tenants=tenants, discovery=discovery, intune=world.services.intune,
                               provisioning=provisioning, counters=ActivityCounters(tenants), concurrency=3,
                               now=world.container.clock.now)
    ids = []
    for seed in range(440, 447):
        tid, groups, _ = world.new_tenant(seed=seed)
        await provisioning.provision(TenantConfig(tenant_id=tid, enrollment_groups=tuple(groups)))
        ids.append(tid)
    run = await service.run()
    assert run.sent == len(ids) == 7
    assert 1 <= service.peak_in_flight <= 3
    again = await service.run()
    assert (again.sent, again.skipped) == (0, 7), "not due again within the heartbeat interval"


async def test_threat_upload_5xx_then_replay_resends_the_same_message(world: World) -> None:
    from shared_code.errors import RetriableError

    tid, groups, devices = world.new_tenant(seed=450)
    await world.provision(tid, groups)
    device_id = devices[0]["deviceId"]
    prefix = f"/intune/{tid}/StatelessPartnerDeviceDataSyncService/DataUploadMessages"
    report = {"level": "high", "detectedAt": "2026-03-01T00:00:00Z", "idempotencyKey": "outage-1"}
    world.sim.fault("status", match={"path_prefix": prefix, "method": "PUT"}, count=100, status=503)
    try:
        with pytest.raises(RetriableError):
            await world.services.threat.report(tid, device_id, report)
    finally:
        world.sim.clear_faults()
    assert world.sim.intune(tid)["messages"] == {}
    upload, replayed = await world.services.threat.report(tid, device_id, report)
    assert (upload.status, replayed) == ("Pending", True)
    assert list(world.sim.intune(tid)["messages"]) == [upload.message_id]
