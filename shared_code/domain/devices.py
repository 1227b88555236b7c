"""Device records: the Entra device facts the connector keeps, and the pure transform from Graph JSON.

Pure: no I/O, no SDK imports. Graph objects are plain dicts; required fields are read with ``obj["id"]``,
optional ones with ``.get()`` so a sparse ``$select`` never crashes the transform (style §7.4).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

# Properties read on every device (device resource: learn.microsoft.com/graph/api/resources/device).
DEVICE_SELECT = (
    "id",
    "deviceId",
    "displayName",
    "operatingSystem",
    "operatingSystemVersion",
    "trustType",
    "isManaged",
    "isCompliant",
    "accountEnabled",
)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One Entra device as the connector knows it.

    Attributes:
        id: Entra object id (the key everywhere in the connector).
        device_id: Entra ``deviceId`` (what Intune and the MTD console call the device id).
        owner_id: object id of the registered owner (Graph allows one), or None.
    """

    id: str
    device_id: str = ""
    display_name: str = ""
    operating_system: str = ""
    os_version: str = ""
    trust_type: str = ""
    is_managed: bool | None = None
    is_compliant: bool | None = None
    owner_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (API and storage shape)."""
        return {
            "id": self.id,
            "deviceId": self.device_id,
            "displayName": self.display_name,
            "operatingSystem": self.operating_system,
            "operatingSystemVersion": self.os_version,
            "trustType": self.trust_type,
            "isManaged": self.is_managed,
            "isCompliant": self.is_compliant,
            "ownerId": self.owner_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(
            id=str(data["id"]),
            device_id=str(data.get("deviceId") or ""),
            display_name=str(data.get("displayName") or ""),
            operating_system=_common(str(data.get("operatingSystem") or "")),
            os_version=_common(str(data.get("operatingSystemVersion") or "")),
            trust_type=_common(str(data.get("trustType") or "")),
            is_managed=data.get("isManaged"),
            is_compliant=data.get("isCompliant"),
            owner_id=data.get("ownerId"),
        )

    def to_row(self) -> list[Any]:
        """Compact positional form (a full reconcile's checkpoint rows): the fields in declaration order."""
        return [self.id, self.device_id, self.display_name, self.operating_system, self.os_version, self.trust_type,
                self.is_managed, self.is_compliant, self.owner_id]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> DeviceRecord:
        """Inverse of :meth:`to_row`."""
        owner = row[8]
        return cls(str(row[0]), str(row[1]), str(row[2]), _common(str(row[3])), _common(str(row[4])),
                   _common(str(row[5])), row[6], row[7], str(owner) if owner is not None else None)

    def with_owner(self, owner_id: str | None) -> DeviceRecord:
        """A copy with another owner."""
        return replace(self, owner_id=owner_id)

    def changed_fields(self, other: DeviceRecord) -> list[str]:
        """Names (Graph spelling) of the fields that differ from ``other``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if mine[k] != theirs[k]]


DEVICE_FIELDS = tuple(f.name for f in fields(DeviceRecord))


def _common(value: str) -> str:
    """One shared copy of a value most devices repeat (OS name, OS version, trust type): a big tenant's records
    would otherwise hold one copy per device."""
    return sys.intern(value)


def device_from_graph(obj: Mapping[str, Any], owner_id: str | None = None) -> DeviceRecord:
    """Transform a Graph ``device`` JSON object into a :class:`DeviceRecord`.

    Args:
        obj: the device object (``id`` required; every other property optional).
        owner_id: the registered owner's object id, when known.
    """
    return DeviceRecord(
        id=str(obj["id"]),
        device_id=str(obj.get("deviceId") or ""),
        display_name=str(obj.get("displayName") or ""),
        operating_system=_common(str(obj.get("operatingSystem") or "")),
        os_version=_common(str(obj.get("operatingSystemVersion") or "")),
        trust_type=_common(str(obj.get("trustType") or "")),
        is_managed=obj.get("isManaged"),
        is_compliant=obj.get("isCompliant"),
        owner_id=owner_id,
    )


def merge_device_update(current: DeviceRecord, changed: Mapping[str, Any]) -> DeviceRecord:
    """Apply a (possibly partial) Graph device object from ``devices/delta`` to a known record.

    Delta rounds may return only the changed properties (``Prefer: return=minimal``), so absent keys keep the
    current value.
    """
    updates: dict[str, Any] = {}
    mapping = {
        "deviceId": "device_id",
        "displayName": "display_name",
        "operatingSystem": "operating_system",
        "operatingSystemVersion": "os_version",
        "trustType": "trust_type",
        "isManaged": "is_managed",
        "isCompliant": "is_compliant",
    }
    for graph_name, attr in mapping.items():
        if graph_name in changed:
            value = changed[graph_name]
            updates[attr] = value if attr in ("is_managed", "is_compliant") else str(value or "")
    return replace(current, **updates) if updates else current


def normalize_platforms(platforms: Iterable[str]) -> frozenset[str]:
    """Platforms compared case-insensitively (Entra reports e.g. ``iOS``; admins type ``ios``)."""
    return frozenset(p.strip().casefold() for p in platforms if p.strip())


def platform_matches(operating_system: str, platforms: frozenset[str]) -> bool:
    """True when the device's ``operatingSystem`` is one of the (normalized) platforms."""
    return operating_system.strip().casefold() in platforms
