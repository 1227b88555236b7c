"""What the Intune flows need to know about enrolled devices (the enrollment feature owns the device store).

Intune entities carry the Entra ``deviceId`` and the device's registered owner as ``UserId`` (reference/intune.md
§2), so a threat report or App Sync request is only accepted for a device the connector has enrolled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class EnrolledDevice:
    """An enrolled device as the Intune flows see it.

    Attributes:
        device_id: the Entra ``deviceId`` (what Intune entities call DeviceId).
        user_id: the registered owner's Entra object id (Intune's UserId).
        operating_system: e.g. ``iOS``, ``Android`` (App Sync is iOS/iPadOS only).
        display_name: the device name (MAM registrations carry a device name).
    """

    device_id: str
    user_id: str
    operating_system: str = ""
    display_name: str = ""


class EnrolledDevices(Protocol):
    """Lookup of enrolled devices (implemented over the enrollment feature's device store)."""

    async def get(self, tenant_id: str, device_id: str) -> EnrolledDevice | None:
        """The device if it is currently enrolled in the tenant (by Entra deviceId or object id), else None."""
        ...


class StaticEnrolledDevices:
    """A fixed set of enrolled devices (unit tests, and the stand-in until the enrollment store is wired)."""

    def __init__(self, devices: dict[str, list[EnrolledDevice]] | None = None) -> None:
        self._devices: dict[str, dict[str, EnrolledDevice]] = {}
        for tenant, items in (devices or {}).items():
            for item in items:
                self.add(tenant, item)

    def add(self, tenant_id: str, device: EnrolledDevice) -> None:
        """Enroll a device."""
        self._devices.setdefault(tenant_id, {})[device.device_id.lower()] = device

    def remove(self, tenant_id: str, device_id: str) -> None:
        """Deactivate a device."""
        self._devices.get(tenant_id, {}).pop(device_id.lower(), None)

    async def get(self, tenant_id: str, device_id: str) -> EnrolledDevice | None:
        """The device when enrolled."""
        return self._devices.get(tenant_id, {}).get(device_id.lower())


class TableEnrolledDevices:
    """Reads the enrollment feature's device rows (table ``devices``; shared_code/enrollment/store.py layout).

    Rows are ``PartitionKey = tenant``, ``RowKey = d|<object id>``, with ``deviceId`` as its own column, ``rec`` the
    device record JSON and ``state`` (``enrolled`` / ``deactivated``). The same partition holds the change feed
    (``e|<sequence>``, whose rows also carry ``deviceId``), a ``meta`` row and more, so the Entra-deviceId lookup is
    restricted to the device rows' RowKey range ``[d|, d})``: the service then reads only device rows, never the
    (much longer) event history. It is still a range read of the tenant's device rows, not a point read; a point
    read would need an index row (``i|<deviceId>`` → object id) written by the store. The API's ``{deviceId}`` may
    be either id: object id first (a point read), then Entra deviceId.
    """

    # Device rows are exactly the RowKeys starting "d|" ("}" is the character after "|").
    DEVICE_ROWS_LOW = "d|"
    DEVICE_ROWS_HIGH = "d}"

    ENROLLED = "enrolled"

    def __init__(self, storage: Any) -> None:
        self._storage = storage

    async def get(self, tenant_id: str, device_id: str) -> EnrolledDevice | None:
        """The device if currently enrolled."""
        from azure.core.exceptions import ResourceNotFoundError

        table = await self._storage.table("devices")
        row: dict[str, Any] | None = None
        try:
            row = dict(await table.get_entity(tenant_id, f"d|{device_id}"))
        except ResourceNotFoundError:
            for spelling in dict.fromkeys((device_id, device_id.lower())):
                async for entity in table.query_entities(
                    "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi and deviceId eq @d",
                    parameters={"pk": tenant_id, "lo": self.DEVICE_ROWS_LOW, "hi": self.DEVICE_ROWS_HIGH,
                                "d": spelling},
                ):
                    candidate = dict(entity)
                    # Prefer the enrolled row if a deviceId was ever reused by a re-registered object.
                    if row is None or candidate.get("state") == self.ENROLLED:
                        row = candidate
                if row is not None:
                    break
        if row is None or row.get("state") != self.ENROLLED:
            return None
        record = json.loads(str(row.get("rec") or "{}"))
        owner = record.get("ownerId")
        if not owner or not record.get("deviceId"):
            return None  # Intune entities need the Entra deviceId and the owner (UserId)
        return EnrolledDevice(
            device_id=str(record["deviceId"]),
            user_id=str(owner),
            operating_system=str(record.get("operatingSystem") or ""),
            display_name=str(record.get("displayName") or ""),
        )
