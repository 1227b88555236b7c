"""App inventory (Intune App Sync): request via a DataUploadMessage, fetch the result, store it size-aware.

App Sync is opt-in per tenant and covers iOS/iPadOS (mtd-connector-enable.md). A request is one type-3 entity; when
the message Succeeded its result carries the device's apps with the App Sync fields (App ID, Version, Short Version,
Name, Bundle Size, Dynamic Size, validated, managed, ad-hoc signed, App Store, beta, device-based VPP —
mobile-threat-defense.md). Results are fetched by the results timer or on GET, whichever comes first.
"""

from __future__ import annotations

from typing import Any

from shared_code.errors import NotFoundError
from shared_code.intune.messages import ENTITY_APP_SYNC_REQUEST, MessageService, new_message
from shared_code.intune.status import iso
from shared_code.intune.uploads import FINAL_STATUSES, UploadMessage
from shared_code.permissions import call

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


class InventoryService:
    """POST inventory → App Sync request; GET inventory → latest stored (fetching it when ready)."""

    def __init__(self, messages: MessageService) -> None:
        self._messages = messages
        messages.on_settled.append(self._settled)

    async def request(self, tenant_id: str, device_id: str) -> UploadMessage:
        """Send an App Sync request for the device.

        Raises:
            NotFoundError, ConnectorNotReadyError, PermissionMissingError, RetriableError.
        """
        record, device = await self._messages.resolve(tenant_id, device_id)
        self._messages.require_provisioned(record)
        entity = {
            "EntityType": ENTITY_APP_SYNC_REQUEST,
            "TenantId": tenant_id,
            "DeviceId": device.device_id,
            "UserId": device.user_id,
            "RequestTime": iso(self._messages.now()),
        }
        message = new_message(tenant_id, "inventory", device.device_id, [entity])
        sent = await self._messages.send(message, call("intune.upload_app_inventory_request"), "inventory")
        header = await self._messages.store.get_latest(tenant_id, "inv", device.device_id) or {}
        header.update(
            deviceId=device.device_id, requestId=sent.message_id, requestStatus=sent.status,
            requestedAt=sent.upload_time, requestError=None,
        )
        await self._messages.store.set_latest(tenant_id, "inv", device.device_id, header)
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
        apps: list[dict[str, Any]] = []
        if header.get("generation"):
            apps = await store.load_inventory(
                tenant_id, device.device_id, str(header["generation"]), int(header.get("chunks", 0))
            )
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

    async def _settled(self, message: UploadMessage, result: dict[str, Any]) -> None:
        if message.kind != "inventory":
            return
        store = self._messages.store
        header = await store.get_latest(message.tenant_id, "inv", message.device_id) or {
            "deviceId": message.device_id
        }
        if header.get("requestId") not in (None, message.message_id):
            return  # a newer request superseded this one
        header.update(requestStatus=message.status, requestError=message.error_detail)
        if message.status == "Succeeded":
            apps: list[dict[str, Any]] = []
            for item in result.get("Results") or []:
                if str(item.get("DeviceId", "")).lower() == message.device_id.lower():
                    apps.extend(normalize_app(a) for a in item.get("Apps") or [])
            layout = await store.store_inventory(message.tenant_id, message.device_id, apps)
            header.update(layout, fetchedAt=iso(self._messages.now()))
            await store.set_latest(message.tenant_id, "inv", message.device_id, header)
            await store.delete_generations(message.tenant_id, message.device_id, keep=layout["generation"])
            await self._messages.counters.bump(message.tenant_id, "inventoriesFetched")
        else:
            await store.set_latest(message.tenant_id, "inv", message.device_id, header)
