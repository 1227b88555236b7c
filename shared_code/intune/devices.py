"""What the Intune flows need to know about enrolled devices (the enrollment feature owns the device store).

Intune entities carry the Entra ``deviceId`` and the device's registered owner as ``UserId`` (reference/intune.md
§2), so a threat report or App Sync request is only accepted for a device the connector has enrolled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
