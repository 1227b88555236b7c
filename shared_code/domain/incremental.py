"""The pure planning of an incremental poll: what the deltas mean, which stored rows and Graph reads the plan needs,
and the plan itself.

Pure: no I/O. ``PollEngine._incremental`` (shared_code/enrollment/engine.py) reads the deltas, the stored graph and
rows, and the few Graph objects these functions ask for; every decision in between is made here, so it is tested
without storage or Graph (tests/unit/enrollment/test_enrollment_incremental.py):

1. :func:`fold_device_changes` — a ``devices/delta`` round → deleted ids and merged property updates;
2. :func:`shift_scope` — the stored membership graph + ``groups/delta`` pages → old and new scope;
3. :func:`rows_to_read` — which stored device rows the plan can touch (devices the deltas name or that entered or
   left the direct scope, devices of owners who entered or left), or the whole partition when the plan must see every
   row (staged deactivations, a changed disabled-users set, an unknown enrolled count, a change too wide);
4. :func:`current_records`, :func:`entering_owners`, :func:`device_lookups` — what is known of each device now, whose
   owned devices and which devices to read from Graph;
5. :func:`plan` — the scope rule and ``reconcile`` over what is known.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared_code.domain.devices import DeviceRecord, merge_device_update, platform_matches
from shared_code.domain.reconcile import ENROLLED, Desired, Facts, Plan, Stored, desired_set, reconcile
from shared_code.domain.scope import MembershipGraph, Resolution, Scope, expand_scope, resolve_names

# Past these many owners or devices, one scan of the tenant's partition is cheaper than targeted reads.
OWNER_LOOKUP_LIMIT = 100
DEVICE_LOOKUP_LIMIT = 200


@dataclass(frozen=True)
class DeviceChanges:
    """A ``devices/delta`` round folded per device: removed ids, and the latest properties of the others."""

    deleted: frozenset[str] = frozenset()
    updated: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def fold_device_changes(changes: Iterable[Mapping[str, Any]]) -> DeviceChanges:
    """Fold a round's device objects in order: a later ``@removed`` wins over earlier updates and vice versa."""
    deleted: set[str] = set()
    updated: dict[str, dict[str, Any]] = {}
    for obj in changes:
        did = str(obj["id"])
        if "@removed" in obj:
            deleted.add(did)
            updated.pop(did, None)
        else:
            deleted.discard(did)
            updated[did] = {**updated.get(did, {}), **obj}
    return DeviceChanges(frozenset(deleted), updated)


@dataclass(frozen=True)
class ScopeShift:
    """The scope before and after this poll's ``groups/delta`` pages."""

    graph: MembershipGraph
    graph_changed: bool
    resolution: Resolution
    old: Scope
    new: Scope

    @property
    def entering_users(self) -> set[str]:
        """Users in scope now that were not before."""
        return set(self.new.users) - set(self.old.users)

    @property
    def moved_users(self) -> set[str]:
        """Users who entered or left scope."""
        return set(self.old.users) ^ set(self.new.users)

    @property
    def moved_devices(self) -> set[str]:
        """Devices that entered or left the direct (member) scope."""
        return set(self.old.devices) ^ set(self.new.devices)


def shift_scope(graph_old: MembershipGraph, group_pages: Sequence[Iterable[Mapping[str, Any]]],
                names: Sequence[str]) -> ScopeShift:
    """Apply the pages to a copy of the stored graph and expand both scopes (``graph_old`` is left untouched)."""
    graph = copy.deepcopy(graph_old)
    changed = False
    for values in group_pages:
        changed = graph.apply_page(values) or changed
    res_old, res_new = resolve_names(graph_old, names), resolve_names(graph, names)
    return ScopeShift(graph, changed, res_new, expand_scope(graph_old, res_old.resolved),
                      expand_scope(graph, res_new.resolved))


@dataclass(frozen=True)
class RowsToRead:
    """The stored rows the plan can touch: by device id and by owner, or every row (``partial`` False)."""

    device_ids: tuple[str, ...]
    owner_ids: tuple[str, ...]
    partial: bool


def rows_to_read(
    changes: DeviceChanges,
    shift: ScopeShift,
    *,
    staged: bool,
    disabled_changed: bool,
    known_enrolled: int | None,
    extra_devices: Iterable[str] = (),
) -> RowsToRead:
    """Which stored rows to read. Every other enrolled row stays desired (its owner's scope, its platform and the
    disabled set are unchanged), so it is not read. ``extra_devices``: devices Graph answers for now that it could not
    read before (replication lag)."""
    devices = set(changes.updated) | changes.deleted | shift.moved_devices | set(extra_devices)
    owners = shift.moved_users
    partial = not (
        staged or disabled_changed or known_enrolled is None
        or len(owners) > OWNER_LOOKUP_LIMIT or len(devices) > DEVICE_LOOKUP_LIMIT
    )
    return RowsToRead(tuple(sorted(devices)), tuple(sorted(owners)), partial)


def current_records(stored: Mapping[str, Stored], changes: DeviceChanges) -> dict[str, DeviceRecord]:
    """What is known of each enrolled device now: its stored record with this round's property updates merged."""
    current: dict[str, DeviceRecord] = {}
    for did, row in stored.items():
        if row.state == ENROLLED:
            update = changes.updated.get(did)
            current[did] = merge_device_update(row.record, dict(update)) if update is not None else row.record
    return current


def entering_owners(shift: ScopeShift, stored: Mapping[str, Stored], disabled: set[str] | None) -> list[str]:
    """Users whose owned devices must be read: those who entered scope, and (when the tenant excludes disabled users:
    ``disabled`` is the current set) in-scope owners re-enabled since their devices were deactivated."""
    entering = shift.entering_users
    if disabled is not None:
        entering |= {
            row.record.owner_id for row in stored.values()
            if row.state != ENROLLED and row.reason == "owner disabled" and row.record.owner_id
            and row.record.owner_id in shift.new.users and row.record.owner_id not in disabled
        }
    return sorted(entering)


def device_lookups(
    changes: DeviceChanges,
    stored: Mapping[str, Stored],
    shift: ScopeShift,
    current: Mapping[str, DeviceRecord],
    platforms: frozenset[str],
) -> list[str]:
    """Devices to read with their owner: new direct members, and devices that appeared or moved into the platforms
    and are not known yet (who owns them?)."""
    lookups = set(shift.new.devices) - set(shift.old.devices)
    for did, obj in changes.updated.items():
        known = stored.get(did)
        if (known is None or known.state != ENROLLED) and platform_matches(
            str(obj.get("operatingSystem") or ""), platforms
        ):
            lookups.add(did)
    return sorted(lookups - set(current) - changes.deleted)


def plan(
    current: Mapping[str, DeviceRecord],
    stored: Mapping[str, Stored],
    shift: ScopeShift,
    platforms: frozenset[str],
    *,
    deleted: Iterable[str],
    disabled: set[str],
) -> tuple[Plan, dict[str, Desired]]:
    """The plan: the scope rule over what is known now, reconciled against the stored rows read."""
    gone = frozenset(deleted)
    desired = desired_set(current, shift.new, platforms, deleted=gone, disabled_owners=disabled)
    facts = Facts(
        deleted=gone,
        current=current,
        platforms=platforms,
        disabled_owners=frozenset(disabled),
        unresolved=frozenset(u["name"] for u in shift.resolution.unresolved),
    )
    return reconcile(desired, stored, facts), desired
