"""App inventory (Intune App Sync): request via a DataUploadMessage, fetch the result, store it size-aware.

App Sync is opt-in per tenant and covers iOS/iPadOS (mtd-connector-enable.md). A request is one type-3 entity; when
the message Succeeded its result carries the device's apps with the App Sync fields (App ID, Version, Short Version,
Name, Bundle Size, Dynamic Size, validated, managed, ad-hoc signed, App Store, beta, device-based VPP —
mobile-threat-defense.md). Results are fetched by the results timer or on GET, whichever comes first.
"""

from __future__ import annotations

import logging
from typing import Any

from shared_code.errors import NotFoundError, RetriableError
from shared_code.intune.discovery import DEVICE_SERVICE
from shared_code.intune.messages import ENTITY_APP_SYNC_REQUEST, MessageService, new_message
from shared_code.intune.status import iso
from shared_code.intune.uploads import FINAL_STATUSES, ChunkMissingError, UploadMessage
from shared_code.permissions import call

log = logging.getLogger("connector.intune.inventory")
# A GET that keeps losing the race with a settle switching generations gives up after this many header reads.
MAX_CHUNK_RETRIES = 3

# Intune App Sync field → API field (camelCase, the console's JSON convention).
APP_FIELDS = {
    "AppId": "appId",
    "Version": "version",
    "ShortVersion": "shortVersion",
    "Name": "name",
    "BundleSize": "bundleSize",
    "DynamicSize": "dynamicSize",
    "IsValidated": "validated",
    "IsManaged": "managed",
    "IsAdHocSigned": "adHocSigned",
    "IsAppStore": "appStore",
    "IsBeta": "beta",
    "IsDeviceBasedVpp": "deviceBasedVpp",
}


def normalize_app(app: dict[str, Any]) -> dict[str, Any]:
    """One App Sync app in API form (unknown Intune fields are kept under their own names)."""
    return {APP_FIELDS.get(k, k): v for k, v in app.items()}


def generation_of(message: UploadMessage) -> str:
    """The chunk generation of an App Sync message: its upload time (sortable) and id.

    Deterministic per message, so concurrent settles of one result write identical rows; ordered by request time, so
    deleting "generations older than the live one" can never remove a newer request's rows.
    """
    stamp = "".join(ch for ch in message.upload_time if ch.isdigit())[:17].ljust(17, "0")
    return f"{stamp}-{message.message_id}"


def apps_from_result(result: dict[str, Any], device_id: str) -> list[dict[str, Any]]:
    """The device's apps from a Succeeded App Sync result, in API form.

    The result format is not public (simulator/intune.py defines the one we use), so entries of an unexpected shape
    (a result item or an app that is not an object, ``Apps`` that is not a list) are skipped and logged rather than
    crashing the settle.

    Raises:
        ValueError: ``Results`` is present but not a list (nothing of it can be read; the message stays Pending and
            is retried, then times out).
    """
    results = result.get("Results")
    if results is None:
        return []
    if not isinstance(results, list):
        msg = f"App Sync Results is a {type(results).__name__}, not a list"
        raise ValueError(msg)
    apps: list[dict[str, Any]] = []
    skipped = 0
    for item in results:
        if not isinstance(item, dict):
            skipped += 1
            continue
        if str(item.get("DeviceId", "")).lower() != device_id.lower():
            continue
        listed = item.get("Apps") or []
        if not isinstance(listed, list):
            skipped += 1
            continue
        for app in listed:
            if isinstance(app, dict):
                apps.append(normalize_app(app))
            else:
                skipped += 1
    if skipped:
        log.warning("App Sync result for device %s: skipped %d entries of an unexpected shape", device_id, skipped)
    return apps


class InventoryService:
    """POST inventory → App Sync request; GET inventory → latest stored (fetching it when ready)."""

    def __init__(self, messages: MessageService) -> None:
        self._messages = messages
        messages.on_settled.append(self._settled)

    async def request(self, tenant_id: str, device_id: str) -> UploadMessage:
        """Send an App Sync request for the device.

        Raises:
            NotFoundError, ConnectorNotReadyError, DeviceHasNoOwnerError, PermissionMissingError, RetriableError.
        """
        record, device = await self._messages.resolve(tenant_id, device_id)
        self._messages.require_provisioned(record)
        user_id = self._messages.require_owner(tenant_id, device)
        entity = {
            "EntityType": ENTITY_APP_SYNC_REQUEST,
            "TenantId": tenant_id,
            "DeviceId": device.device_id,
            "UserId": user_id,
            "RequestTime": iso(self._messages.now()),
        }
        message = new_message(tenant_id, "inventory", device.device_id, [entity])
        sent = await self._messages.send(message, call("intune.upload_app_inventory_request"), "inventory")

        def point_at_request(header: dict[str, Any] | None) -> dict[str, Any]:
            # Keep the stored inventory (generation, chunks) while the new request is pending.
            return {
                **(header or {}), "deviceId": device.device_id, "requestId": sent.message_id,
                "requestStatus": sent.status, "requestedAt": sent.upload_time, "requestError": None,
            }

        await self._messages.store.update_latest(tenant_id, "inv", device.device_id, point_at_request)
        await self._messages.counters.bump(tenant_id, "inventoryRequests")
        return sent

    async def get(self, tenant_id: str, device_id: str) -> dict[str, Any]:
        """The latest inventory; polls Intune first when a request is still pending.

        Raises:
            NotFoundError: unknown tenant, device not enrolled, or no inventory ever requested.
        """
        _, device = await self._messages.resolve(tenant_id, device_id)
        store = self._messages.store
        header = await store.get_latest(tenant_id, "inv", device.device_id)
        if header is None:
            raise NotFoundError(f"no inventory requested for device {device_id}; POST to request one", status=404)
        if header.get("requestStatus") not in FINAL_STATUSES and header.get("requestId"):
            message = await store.get(tenant_id, str(header["requestId"]))
            if message is not None and message.status not in FINAL_STATUSES:
                await self._messages.settle(message)
                header = await store.get_latest(tenant_id, "inv", device.device_id) or header
        header, apps = await self._load(tenant_id, device.device_id, header)
        return {
            "deviceId": device.device_id,
            "requestId": header.get("requestId"),
            "requestStatus": header.get("requestStatus"),
            "requestError": header.get("requestError"),
            "requestedAt": header.get("requestedAt"),
            "fetchedAt": header.get("fetchedAt"),
            "appCount": header.get("appCount", 0),
            "apps": apps,
        }

    async def _load(
        self, tenant_id: str, device_id: str, header: dict[str, Any]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The header's apps, healing a missing chunk instead of failing.

        A chunk goes missing when a settle switched generations while we read (re-reading the header finds the new
        one), or when rows were lost; then the result is fetched from Intune again and the rows rewritten.

        Raises:
            RetriableError: the chunks are still missing after ``MAX_CHUNK_RETRIES`` attempts (503, retry later).
        """
        store = self._messages.store
        refetched = False
        for _ in range(MAX_CHUNK_RETRIES):
            if not header.get("generation"):
                return header, []
            try:
                apps = await store.load_inventory(
                    tenant_id, device_id, str(header["generation"]), int(header.get("chunks", 0))
                )
                return header, apps
            except ChunkMissingError:
                log.info("inventory chunk of device %s missing; re-reading", device_id)
            fresh = await store.get_latest(tenant_id, "inv", device_id) or {}
            if fresh.get("generation") == header.get("generation") and not refetched:
                refetched = True
                await self._refetch(tenant_id, fresh)
                fresh = await store.get_latest(tenant_id, "inv", device_id) or {}
            header = fresh
        msg = f"the inventory of device {device_id} is incomplete; retry later"
        raise RetriableError(msg, status=503)

    async def _refetch(self, tenant_id: str, header: dict[str, Any]) -> None:
        """Fetch the stored generation's App Sync result from Intune again and rewrite its rows (same generation)."""
        _, _, request_id = str(header.get("generation", "")).partition("-")
        message = await self._messages.store.get(tenant_id, request_id) if request_id else None
        if message is None or message.status != "Succeeded":
            return
        intune = self._messages.intune
        result = await self._messages.discovery.call_service(
            tenant_id, DEVICE_SERVICE, lambda url: intune.upload_result(url, tenant_id, message.message_id)
        )
        if result.get("Status") == "Succeeded":
            await self._settled(message, result)

    async def _settled(self, message: UploadMessage, result: dict[str, Any]) -> None:
        if message.kind != "inventory":
            return
        store = self._messages.store
        tenant_id, device_id, request_id = message.tenant_id, message.device_id, message.message_id
        layout: dict[str, Any] = {}
        if message.status == "Succeeded":
            apps = apps_from_result(result, device_id)
            # One generation per message: a concurrent settle of the same result writes the very same rows.
            layout = await store.store_inventory(tenant_id, device_id, apps, generation=generation_of(message))
            layout["fetchedAt"] = iso(self._messages.now())

        def switch(header: dict[str, Any] | None) -> dict[str, Any] | None:
            header = header or {"deviceId": device_id}
            if header.get("requestId") not in (None, request_id):
                return None  # a newer request superseded this one
            if header.get("requestStatus") == message.status and (
                not layout or header.get("generation") == layout["generation"]
            ):
                return None  # already settled by a concurrent poll
            return {**header, "requestId": request_id, "requestStatus": message.status,
                    "requestError": message.error_detail, **layout}

        stored, switched = await store.update_latest(tenant_id, "inv", device_id, switch)
        if not layout:
            return
        generation = str(layout["generation"])
        if stored is not None and stored.get("generation") == generation:
            # Only older generations: a slow settle must never delete a newer request's rows.
            await store.delete_generations(tenant_id, device_id, keep=generation)
        else:
            # Superseded: our rows are not referenced by the header; remove them (never the live generation).
            await store.delete_generations(tenant_id, device_id, only=generation)
        if switched:
            await self._messages.counters.bump(tenant_id, "inventoriesFetched")
