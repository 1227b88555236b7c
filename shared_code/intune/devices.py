"""What the Intune flows need to know about enrolled devices (the enrollment feature owns the device store).

Intune entities carry the Entra ``deviceId`` and the device's registered owner as ``UserId`` (reference/intune.md
§2), so a threat report or App Sync request is only accepted for a device the connector has enrolled.

A shared or kiosk device is enrolled when it is itself a member of an enrollment group, owner or not (issue 10 §3).
Such a device is returned with ``user_id`` None: no public source documents what ``UserId`` Intune's partner
data-sync expects for a device without a user (the MTD wire format is not public, reference/intune.md §2; Fleet's
model always sends a user's object id; Intune calls a device with no primary user a "shared device",
memdocs remote-actions/find-primary-user.md, and the device threat level compliance setting targets user groups,
mtd-device-compliance-policy-create.md). So the flows that must send a ``UserId`` refuse such a device with a clear
:class:`~shared_code.intune.messages.DeviceHasNoOwnerError` rather than guessing one or answering "not enrolled".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from shared_code.domain.reconcile import ENROLLED, Stored


@dataclass(frozen=True)
class EnrolledDevice:
    """An enrolled device as the Intune flows see it.

    Attributes:
        device_id: the Entra ``deviceId`` (what Intune entities call DeviceId).
        user_id: the registered owner's Entra object id (Intune's UserId); None for an enrolled device without a
            registered owner (a shared or kiosk device enrolled as a group member itself).
        operating_system: e.g. ``iOS``, ``Android`` (App Sync is iOS/iPadOS only).
        display_name: the device name (MAM registrations carry a device name).
    """

    device_id: str
    user_id: str | None
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


class DeviceLookup(Protocol):
    """The enrollment store's lookup port (``EnrollmentStore.find_device``: point reads, never a scan)."""

    async def find_device(self, tenant_id: str, key: str) -> Stored | None:
        """A device row by Entra object id or deviceId (case-insensitive), any state, or None."""
        ...


class StoreEnrolledDevices:
    """Enrolled devices as the enrollment store keeps them (the store owns table ``devices`` and its layout).

    The API's ``{deviceId}`` may be either id: the store reads the object id's row, then the deviceId index (point
    reads in the tenant's shards); a device is returned only while it is enrolled and has an Entra deviceId (what
    Intune entities call DeviceId), with its registered owner when it has one.
    """

    def __init__(self, lookup: DeviceLookup) -> None:
        self._lookup = lookup

    async def get(self, tenant_id: str, device_id: str) -> EnrolledDevice | None:
        """The device if currently enrolled."""
        row = await self._lookup.find_device(tenant_id, device_id)
        if row is None or row.state != ENROLLED:
            return None
        record = row.record
        if not record.device_id:
            return None  # Intune entities address a device by its Entra deviceId
        return EnrolledDevice(
            device_id=record.device_id,
            user_id=record.owner_id or None,
            operating_system=record.operating_system,
            display_name=record.display_name,
        )
