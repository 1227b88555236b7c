"""Reconcile: the desired enrollment set vs what the connector has stored → a plan, one reason per item.

Pure: no I/O. The engine builds ``desired`` (devices that should be enrolled now, each with the configured group
that brings it in) and passes what it knows about why other devices dropped out (``Facts``); this module decides.
The same function serves full reconciles (desired = ground truth read from Graph) and incremental polls (desired =
stored devices still valid after the deltas, plus newly found ones), so both paths produce identical plans for
identical inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared_code.domain.devices import DeviceRecord, platform_matches
from shared_code.domain.scope import DIRECT_PATH, OWNER_PATH, Scope, device_scope

ENROLL, DEACTIVATE, UPDATE = "enroll", "deactivate", "update"
ENROLLED, DEACTIVATED = "enrolled", "deactivated"
OWNER, DIRECT = OWNER_PATH, DIRECT_PATH


@dataclass(frozen=True, slots=True)
class Desired:
    """A device that should be enrolled. ``path``: ``owner`` (owner in scope) or ``direct`` (device is a member)."""

    record: DeviceRecord
    via: str
    path: str = OWNER


@dataclass(frozen=True, slots=True)
class Stored:
    """A device row: last known record, state, and the group name that brought it in."""

    record: DeviceRecord
    state: str
    via: str = ""
    path: str = OWNER
    reason: str = ""


@dataclass(frozen=True)
class Facts:
    """What the engine observed about devices that are not desired (for reasons only; never changes the plan).

    Attributes:
        deleted: device ids Graph reported deleted.
        current: latest known record of devices observed this poll (OS, owner).
        platforms: normalized platforms in scope.
        disabled_owners: owners excluded because their account is disabled (when the tenant says so).
        unresolved: configured group names that did not resolve this poll.
    """

    deleted: frozenset[str] = frozenset()
    current: Mapping[str, DeviceRecord] = field(default_factory=dict)
    platforms: frozenset[str] = frozenset()
    disabled_owners: frozenset[str] = frozenset()
    unresolved: frozenset[str] = frozenset()


# Why a device left (the guard judges causes; membership-derived causes are re-verified before they are applied).
DELETED, PLATFORM, OWNER_CHANGED, OWNER_DISABLED, GROUP_UNRESOLVED, LEFT_GROUP = (
    "deleted", "platform", "owner_changed", "owner_disabled", "group_unresolved", "left_group",
)


@dataclass(frozen=True, slots=True)
class PlanItem:
    """One change: the action, the device record to store, and why (``cause``: a code for deactivations)."""

    action: str
    record: DeviceRecord
    reason: str
    via: str = ""
    path: str = OWNER
    cause: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (dry-run responses, logs, the guard's staged sample)."""
        out: dict[str, Any] = {
            "action": self.action,
            "deviceId": self.record.device_id,
            "id": self.record.id,
            "ownerId": self.record.owner_id,
            "operatingSystem": self.record.operating_system,
            "reason": self.reason,
        }
        if self.action == DEACTIVATE:
            out.update({"cause": self.cause, "via": self.via, "path": self.path})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanItem:
        """Inverse of :meth:`to_dict` (the fields the staged sample keeps)."""
        owner = data.get("ownerId")
        record = DeviceRecord(
            id=str(data["id"]), device_id=str(data.get("deviceId") or ""),
            operating_system=str(data.get("operatingSystem") or ""), owner_id=str(owner) if owner else None,
        )
        return cls(str(data["action"]), record, str(data.get("reason") or ""), str(data.get("via") or ""),
                   str(data.get("path") or OWNER), str(data.get("cause") or ""))


@dataclass(frozen=True)
class Plan:
    """Ordered plan items (enrolls, then updates, then deactivations; by device id within each)."""

    items: tuple[PlanItem, ...]

    def of(self, action: str) -> list[PlanItem]:
        """Items with the given action."""
        return [i for i in self.items if i.action == action]

    def counts(self) -> dict[str, int]:
        """How many of each action."""
        return {a: sum(1 for i in self.items if i.action == a) for a in (ENROLL, UPDATE, DEACTIVATE)}

    def without_deactivations(self) -> Plan:
        """The plan minus its deactivations (what the guard lets through when it stages)."""
        return Plan(tuple(i for i in self.items if i.action != DEACTIVATE))


_ORDER = {ENROLL: 0, UPDATE: 1, DEACTIVATE: 2}


def desired_set(
    records: Mapping[str, DeviceRecord],
    scope: Scope,
    platforms: frozenset[str],
    *,
    deleted: frozenset[str] | set[str] = frozenset(),
    disabled_owners: frozenset[str] | set[str] = frozenset(),
) -> dict[str, Desired]:
    """The devices among ``records`` that should be enrolled, by the one scope rule (``scope.device_scope``)."""
    desired: dict[str, Desired] = {}
    for did, rec in records.items():
        if did in deleted:
            continue
        found = device_scope(did, rec.owner_id, rec.operating_system, scope, platforms, disabled_owners)
        if found is not None:
            path, via = found
            desired[did] = Desired(rec, via, path)
    return desired


def deactivation_cause(stored: Stored, facts: Facts) -> tuple[str, str]:
    """Why a stored, enrolled device is no longer desired: ``(cause code, reason)``, most specific cause first."""
    did = stored.record.id
    if did in facts.deleted:
        return DELETED, "device deleted"
    current = facts.current.get(did)
    if current is not None:
        if facts.platforms and not platform_matches(current.operating_system, facts.platforms):
            return PLATFORM, f"platform changed to {current.operating_system or 'unknown'}"
        if current.owner_id != stored.record.owner_id:
            return OWNER_CHANGED, "owner removed" if current.owner_id is None else "owner changed"
    if stored.record.owner_id is not None and stored.record.owner_id in facts.disabled_owners:
        return OWNER_DISABLED, "owner disabled"
    if stored.via and stored.via in facts.unresolved:
        return GROUP_UNRESOLVED, f"group {stored.via} no longer resolves"
    if stored.path == DIRECT:
        return LEFT_GROUP, f"device left group {stored.via}"
    return LEFT_GROUP, f"owner left group {stored.via}" if stored.via else "owner left enrollment scope"


def deactivation_reason(stored: Stored, facts: Facts) -> str:
    """Why a stored, enrolled device is no longer desired (the text of :func:`deactivation_cause`)."""
    return deactivation_cause(stored, facts)[1]


def enroll_reason(desired: Desired, stored: Stored | None) -> str:
    """Why a device is (re-)enrolled."""
    base = (
        f"device is a member of group {desired.via}"
        if desired.path == DIRECT
        else f"owner in group {desired.via}"
    )
    return f"re-enrolled: {base}" if stored is not None else base


def reconcile(desired: Mapping[str, Desired], stored: Mapping[str, Stored], facts: Facts | None = None) -> Plan:
    """Compute the plan that moves ``stored`` to ``desired``.

    * desired and not enrolled (absent or deactivated) → ``enroll``;
    * enrolled and not desired → ``deactivate`` with the most specific reason ``facts`` allow;
    * enrolled, desired, and any device field differs → ``update`` naming the changed fields.

    Deactivated rows that stay undesired produce nothing (idempotent: reconciling twice gives an empty plan).
    """
    facts = facts or Facts()
    items: list[PlanItem] = []
    for did, want in desired.items():
        have = stored.get(did)
        if have is None or have.state != ENROLLED:
            items.append(PlanItem(ENROLL, want.record, enroll_reason(want, have), want.via, want.path))
            continue
        changed = want.record.changed_fields(have.record)
        if changed:
            if "operatingSystem" in changed:
                reason = f"platform changed from {have.record.operating_system} to {want.record.operating_system}"
            else:
                reason = ", ".join(changed) + " changed"
            items.append(PlanItem(UPDATE, want.record, reason, want.via, want.path))
    for did, have in stored.items():
        if have.state == ENROLLED and did not in desired:
            cause, reason = deactivation_cause(have, facts)
            items.append(PlanItem(DEACTIVATE, have.record, reason, have.via, have.path, cause))
    items.sort(key=lambda i: (_ORDER[i.action], i.record.id))
    return Plan(tuple(items))
