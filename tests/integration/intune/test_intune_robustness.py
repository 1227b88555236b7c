"""Robustness of the upload-results timer, inventory/threat pointers and activity counters, against the simulator
(HTTPS, real tokens) and Azurite. A module of its own so the pending index holds only this module's messages.

Enrolled devices come from the simulator's ground truth (StaticEnrolledDevices stands in for the enrollment store).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest

from shared_code.adapters.intune import IntuneClient
from shared_code.errors import ConflictError, NotFoundError
from shared_code.intune.devices import EnrolledDevice, StaticEnrolledDevices
from shared_code.intune.inventory import InventoryService
from shared_code.intune.messages import TIMED_OUT_DETAIL, MessageService
from shared_code.intune.status import ACTIVITY, ActivityCounters
from shared_code.intune.threat import ThreatService
from shared_code.intune.wiring import IntuneServices, build_intune, use_enrolled_devices
from shared_code.tenants import TenantConfig


class World:
    """Simulated customer tenants wired to the connector's production services."""

    def __init__(self, sim: Any, container: Any, services: IntuneServices, devices: StaticEnrolledDevices) -> None:
        self.sim = sim
        self.container = container
        self.services = services
        self.devices = devices

    async def tenant(self, seed: int) -> tuple[str, list[dict[str, Any]]]:
        """A provisioned tenant and its devices (all enrolled)."""
        summary = self.sim.create_tenant("small", seed=seed)
        tid = summary["tenant_id"]
        truth = self.sim.truth(tid, summary["enrollment_groups"])
        for d in truth["devices"]:
            self.devices.add(tid, EnrolledDevice(d["deviceId"], d["ownerId"], d["operatingSystem"], d.get(
                "displayName") or ""))
        await self.services.provisioning.provision(
            TenantConfig(tenant_id=tid, enrollment_groups=tuple(summary["enrollment_groups"]))
        )
        return tid, truth["devices"]

    def messages(self, *, intune: IntuneClient | None = None, counters: ActivityCounters | None = None,
                 **options: Any) -> tuple[MessageService, ThreatService, InventoryService]:
        """A second MessageService over the same tables (own Intune client / counters / limits when given)."""
        s = self.services
        messages = MessageService(
            tenants=s.tenants, devices=self.devices, discovery=s.discovery, intune=intune or s.intune,
            store=s.messages.store, counters=counters or s.counters, now=self.container.clock.now, **options,
        )
        return messages, ThreatService(messages), InventoryService(messages)


@pytest.fixture(scope="module")
async def world(sim: Any, app_container: Any) -> World:
    devices = StaticEnrolledDevices()
    use_enrolled_devices(app_container, devices)
    return World(sim, app_container, app_container.service(build_intune), devices)


def _ios(devices: list[dict[str, Any]], *, large: bool = False) -> dict[str, Any] | None:
    for d in devices:
        # The simulator gives ~1 device in 16 a 1,000–1,600-app inventory (simulator/intune.py app_inventory).
        is_large = hashlib.sha256(d["deviceId"].encode()).digest()[0] % 16 == 0
        if d["operatingSystem"] in ("iOS", "iPadOS") and is_large == large:
            return d
    return None


async def _settle_all(messages: MessageService, runs: int = 3) -> None:
    for _ in range(runs):
        await messages.settle_pending()


class MalformedResults(httpx.AsyncBaseTransport):
    """Rewrites the simulator's upload-result answers for one tenant into a Succeeded result whose ``Results`` is
    not a list.

    Intune's result format is not public and the simulator answers only the shape it defines, so the simulator is not
    taught a "malformed" mode (it would be a test-only claim about Intune); the connector's real IntuneClient still
    talks HTTPS to the simulator, only this tenant's answer body is replaced on the way back.
    """

    def __init__(self, ca_path: str, tenant_id: str) -> None:
        self._inner = httpx.AsyncHTTPTransport(retries=0, verify=ssl.create_default_context(cafile=ca_path))
        self._tenant = tenant_id
        self.rewritten = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.method == "GET" and "DataUploadMessages" in request.url.path and self._tenant in request.url.path:
            await response.aread()
            self.rewritten += 1
            body = {"Status": "Succeeded", "ErrorDetail": None, "Results": "not-a-list"}
            return httpx.Response(200, content=orjson.dumps(body), headers={"Content-Type": "application/json"})
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_malformed_result_of_one_tenant_never_blocks_another(world: World) -> None:
    first, first_devices = await world.tenant(seed=601)
    second, second_devices = await world.tenant(seed=602)
    # Make "a" the tenant whose message comes first in every order the timer has used (key order; oldest first).
    (a, a_devices), (b, b_devices) = sorted([(first, first_devices), (second, second_devices)])
    device_a = _ios(a_devices) or pytest.fail("the seeded scenario must contain an iOS device")
    settings = world.container.settings
    transport = MalformedResults(world.sim.info["ca_path"], a)
    client = IntuneClient(
        credentials=world.container.credentials, resource=settings.intune_resource,
        tenant_api_version=settings.intune_tenant_api_version, device_api_version=settings.intune_device_api_version,
        max_retries=1, transport=transport, service_domains=settings.intune_service_domains,
    )
    messages, threat, inventory = world.messages(intune=client)
    try:
        bad = await inventory.request(a, device_a["deviceId"])
        good, _ = await threat.report(b, b_devices[0]["deviceId"], {"level": "low",
                                                                     "detectedAt": "2026-01-05T10:00:00Z"})
        first_run = await messages.settle_pending()
        second_run = await messages.settle_pending()
    finally:
        await client.aclose()
    assert transport.rewritten == 2
    assert first_run["errors"] == 1 and second_run["errors"] == 1
    assert second_run["succeeded"] == 1
    stored_good = await messages.store.get(b, good.message_id)
    assert stored_good is not None and stored_good.status == "Succeeded"
    latest = await threat.latest(b, b_devices[0]["deviceId"])
    assert latest is not None and latest["status"] == "Succeeded"
    # The malformed one stays Pending (it is retried, then times out) and went to the back of the queue.
    stored_bad = await messages.store.get(a, bad.message_id)
    assert stored_bad is not None and stored_bad.status == "Pending"
    entries = {e.message_id: e for e in await messages.store.pending()}
    assert entries[bad.message_id].last_polled_at != ""
    # Settle it for real (the production client) so later tests start from an empty work list.
    await _settle_all(world.services.messages, runs=1)
    assert (await messages.store.get(a, bad.message_id)).status == "Succeeded"  # type: ignore[union-attr]


async def test_timer_rotates_through_a_backlog_least_recently_polled_first(world: World) -> None:
    tid, devices = await world.tenant(seed=603)
    sent = []
    for device in devices[:3]:
        upload, _ = await world.services.threat.report(tid, device["deviceId"], {"level": "medium",
                                                                                 "detectedAt": "2026-01-05T10:00:00Z"})
        sent.append(upload.message_id)
    # One message per run: every message must be polled once before any is polled twice.
    for _ in range(3):
        counts = await world.services.messages.settle_pending(limit=1)
        assert counts["polled"] == 1
    polls = {m: world.sim.intune(tid)["messages"][m]["polls"] for m in sent}
    assert polls == dict.fromkeys(sent, 1), polls
    await _settle_all(world.services.messages)
    stored = [await world.services.messages.store.get(tid, m) for m in sent]
    assert [m.status if m else None for m in stored] == ["Succeeded"] * 3


async def test_messages_of_a_deprovisioned_tenant_are_failed_without_polling(world: World) -> None:
    tid, devices = await world.tenant(seed=604)
    upload, _ = await world.services.threat.report(tid, devices[0]["deviceId"], {"level": "high",
                                                                                 "detectedAt": "2026-01-05T10:00:00Z"})
    await world.services.provisioning.deprovision(tid)
    counts = await world.services.messages.settle_pending()
    assert counts["failed"] == 1 and counts["polled"] == 1
    stored = await world.services.messages.store.get(tid, upload.message_id)
    assert stored is not None and stored.status == "Failed" and "no longer provisioned" in (stored.error_detail or "")
    assert world.sim.intune(tid)["messages"][upload.message_id]["polls"] == 0
    assert [e for e in await world.services.messages.store.pending() if e.tenant_id == tid] == []


async def test_a_result_intune_never_settles_times_out(world: World) -> None:
    tid, devices = await world.tenant(seed=605)
    device_id = devices[0]["deviceId"]
    upload, _ = await world.services.threat.report(tid, device_id, {"level": "high",
                                                                    "detectedAt": "2026-01-05T10:00:00Z"})
    # Consent revoked: every poll of this tenant now fails; the message must not stay in the work list forever.
    connector_app = world.sim.info["connector"]["client_id"]
    world.sim.call("DELETE", "/_sim/consent", params={"tenant_id": tid, "app_id": connector_app})
    await world.container.credentials.close()
    world.services.discovery.invalidate(tid)
    messages, _, _ = world.messages()
    first = await messages.settle_pending()
    assert first["errors"] == 1
    # Two days later (the timer's clock), the message is given up as Failed with "result timed out".
    later, _, _ = world.messages()
    later.now = lambda: time.time() + 2 * 86400
    second = await later.settle_pending()
    assert second["expired"] == 1
    stored = await later.store.get(tid, upload.message_id)
    assert stored is not None and (stored.status, stored.error_detail) == ("Failed", TIMED_OUT_DETAIL)
    latest = await later.store.get_latest(tid, "threat", device_id)
    assert latest is not None and latest["status"] == "Failed"
    assert [e for e in await later.store.pending() if e.tenant_id == tid] == []


async def test_concurrent_settles_of_one_inventory_keep_its_data(world: World) -> None:
    tid, devices = await world.tenant(seed=606)
    device = _ios(devices) or pytest.fail("the seeded scenario must contain an iOS device")
    services = world.services
    request = await services.inventory.request(tid, device["deviceId"])
    device_service = await services.discovery.endpoint(tid, "device")
    result: dict[str, Any] = {}
    for _ in range(3):  # the simulator answers Pending first (pending_polls)
        result = await services.intune.upload_result(device_service.url, tid, request.message_id)
        if result["Status"] == "Succeeded":
            break
    assert result["Status"] == "Succeeded"
    message = await services.messages.store.get(tid, request.message_id)
    assert message is not None
    message.status = "Succeeded"
    # The results timer and GETs settling the same result at once (each runs the settle hook).
    await asyncio.gather(*(services.inventory._settled(message, result) for _ in range(4)))
    body = await services.inventory.get(tid, device["deviceId"])
    assert body["requestStatus"] == "Succeeded" and len(body["apps"]) == body["appCount"] > 0
    rows = await _chunk_rows(world, tid)
    header = await services.messages.store.get_latest(tid, "inv", device["deviceId"])
    assert header is not None and len(rows) == header["chunks"]
    record = await services.tenants.get(tid)
    assert record is not None and record.status[ACTIVITY]["inventoriesFetched"] == 1


async def _chunk_rows(world: World, tid: str) -> list[Any]:
    table = await world.container.storage.table("uploads")
    return [
        e
        async for e in table.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi", parameters={"pk": tid, "lo": "invc|",
                                                                                "hi": "invc}"},
        )
    ]


async def test_a_lost_inventory_chunk_is_fetched_again_not_a_500(world: World) -> None:
    tid, devices = await world.tenant(seed=607)
    device = _ios(devices) or pytest.fail("the seeded scenario must contain an iOS device")
    services = world.services
    await services.inventory.request(tid, device["deviceId"])
    await services.inventory.get(tid, device["deviceId"])
    done = await services.inventory.get(tid, device["deviceId"])
    assert done["requestStatus"] == "Succeeded" and done["appCount"] > 0
    table = await world.container.storage.table("uploads")
    for row in await _chunk_rows(world, tid):
        await table.delete_entity(tid, row["RowKey"])
    again = await services.inventory.get(tid, device["deviceId"])
    assert again["apps"] == done["apps"]
    assert len(await _chunk_rows(world, tid)) >= 1


async def test_an_older_detection_never_replaces_the_newer_threat_level(world: World) -> None:
    tid, devices = await world.tenant(seed=608)
    device_id = devices[0]["deviceId"]
    threat = world.services.threat
    newer, _ = await threat.report(tid, device_id, {"level": "high", "detectedAt": "2026-03-02T00:00:00Z"})
    older, _ = await threat.report(tid, device_id, {"level": "low", "detectedAt": "2026-03-01T00:00:00Z"})
    latest = await threat.latest(tid, device_id)
    assert latest is not None and (latest["uploadId"], latest["level"]) == (newer.message_id, "high")
    # The older message settling late leaves the newer pointer alone, the newer one settles into it.
    await _settle_all(world.services.messages)
    latest = await threat.latest(tid, device_id)
    assert latest is not None and (latest["uploadId"], latest["status"]) == (newer.message_id, "Succeeded")
    assert world.sim.intune(tid)["threat_levels"][device_id]["ThreatLevel"] == "high"
    assert (await world.services.messages.store.get(tid, older.message_id)).status == "Succeeded"  # type: ignore


async def test_latest_pointer_updates_are_compare_and_swap(world: World) -> None:
    tid = str(uuid.uuid4())
    store = world.services.messages.store

    def bump(current: dict[str, Any] | None) -> dict[str, Any]:
        return {"n": (current or {}).get("n", 0) + 1}

    await asyncio.gather(*(store.update_latest(tid, "threat", "dev", bump) for _ in range(8)))
    assert await store.get_latest(tid, "threat", "dev") == {"n": 8}


async def test_concurrent_threat_reports_count_every_one(world: World) -> None:
    tid, devices = await world.tenant(seed=609)
    reports = [(d["deviceId"], {"level": "low", "detectedAt": "2026-01-05T10:00:00Z"}) for d in devices[:5]] * 4
    results = await asyncio.gather(*(world.services.threat.report(tid, did, body) for did, body in reports))
    assert len(results) == 20
    record = await world.services.tenants.get(tid)
    assert record is not None and record.status[ACTIVITY]["threatReportsAccepted"] == 20
    await _settle_all(world.services.messages)


class BrokenCounters:
    """The tenant repository, except that the activity section cannot be written (storage trouble)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def update_status(self, tenant_id: str, section: str, patch: dict[str, Any]) -> None:
        if section == ACTIVITY:
            raise ConflictError("status[intune_activity] update kept conflicting")
        await self._inner.update_status(tenant_id, section, patch)

    async def increment(self, tenant_id: str, section: str, field: str, by: int = 1) -> int:
        raise ConflictError("status[intune_activity] increment kept conflicting")


async def test_a_counter_that_cannot_be_written_never_fails_the_upload(world: World) -> None:
    tid, devices = await world.tenant(seed=610)
    counters = ActivityCounters(BrokenCounters(world.services.tenants))  # type: ignore[arg-type]
    messages, threat, _ = world.messages(counters=counters)
    upload, _ = await threat.report(tid, devices[0]["deviceId"], {"level": "medium",
                                                                  "detectedAt": "2026-01-05T10:00:00Z"})
    assert upload.status == "Pending" and counters.failures == 1
    await _settle_all(messages)
    assert (await messages.store.get(tid, upload.message_id)).status == "Succeeded"  # type: ignore[union-attr]


async def test_mam_reads_only_the_users_registrations(world: World) -> None:
    tid, devices = await world.tenant(seed=611)
    world.sim.call("POST", "/_sim/counters/reset")
    for d in devices[:5]:
        await world.services.mam.check(tid, d["ownerId"], d["deviceId"])
    routes = world.sim.counters(tid)
    text = orjson.dumps(routes).decode()
    assert "/users/{id}/managedAppRegistrations" in text and "deviceAppManagement" not in text, routes
    with pytest.raises(NotFoundError):
        await world.services.mam.check(tid, str(uuid.uuid4()))
