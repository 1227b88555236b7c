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
    device record JSON and ``state`` (``enrolled`` / ``deactivated``). The API's ``{deviceId}`` may be either id:
    object id first (a point read), then Entra deviceId through the store's index row ``x|<deviceId lower-case>`` →
    ``{objectId}`` (two point reads), written in the same transaction as the device row. Rows written before the
    index existed have none, so a miss falls back to a query restricted to the device rows' RowKey range
    ``[d|, d})`` (the service reads only device rows, never the event history in the same partition).

    ``point_reads`` / ``fallback_queries`` count deviceId lookups by path (tests assert the lookup cost).
    """

    # Device rows are exactly the RowKeys starting "d|" ("}" is the character after "|").
    DEVICE_ROWS_LOW = "d|"
    DEVICE_ROWS_HIGH = "d}"
    # The store's deviceId index (shared_code/enrollment/store.py ``index_key``; kept here so intune/ does not import
    # the enrollment feature). Characters a RowKey may not hold are never indexed.
    INDEX_PREFIX = "x|"
    _BAD_KEY_CHARS = frozenset("/\\#?") | {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)}

    ENROLLED = "enrolled"

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self.point_reads = 0
        self.fallback_queries = 0

    async def _by_index(self, table: Any, tenant_id: str, device_id: str) -> dict[str, Any] | None:
        """The device row the index names for this deviceId, if it still carries that deviceId."""
        from azure.core.exceptions import ResourceNotFoundError

        if not device_id or any(ch in self._BAD_KEY_CHARS for ch in device_id):
            return None
        self.point_reads += 1
        try:
            target = str((await table.get_entity(tenant_id, self.INDEX_PREFIX + device_id.lower())).get("objectId")
                         or "")
        except ResourceNotFoundError:
            return None
        if not target:
            return None  # a tombstone: the deviceId moved to another object id
        try:
            row = dict(await table.get_entity(tenant_id, f"d|{target}"))
        except ResourceNotFoundError:
            return None
        return row if str(row.get("deviceId") or "").lower() == device_id.lower() else None

    async def get(self, tenant_id: str, device_id: str) -> EnrolledDevice | None:
        """The device if currently enrolled."""
        from azure.core.exceptions import ResourceNotFoundError

        table = await self._storage.table("devices")
        row: dict[str, Any] | None = None
        try:
            row = dict(await table.get_entity(tenant_id, f"d|{device_id}"))
        except ResourceNotFoundError:
            row = await self._by_index(table, tenant_id, device_id)
        if row is None:
            # Rows written before the store kept the index have no index row: a point-read miss does not prove
            # the device unknown, so fall back to the range query of the device rows.
            self.fallback_queries += 1
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
