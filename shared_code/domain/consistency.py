"""Consistency of what one poll read, and the re-verification of the deactivations it would derive from it.

Pure: no I/O. Entra is an eventually consistent, distributed directory: a read can come from a replica that has not
seen everything yet, and a delta round can come back empty or short with an intact deltaLink (reference/graph.md;
https://devblogs.microsoft.com/identity/designing-for-eventual-consistency-for-microsoft-entra/). A glitched read
must never become a destructive plan, so:

* :func:`scope_gaps` — a group the scope walk was told is in scope (a configured name the lookup resolved, or a
  member group of one) that the membership data of the same round does not hold makes the read inconsistent: the
  poll fails as retriable and writes nothing.
* :func:`verification_targets` / :func:`still_in_scope` — deactivations derived from membership data (an owner or a
  device that left an enrollment group, a group that no longer resolves) are re-checked with a second, independent
  read (the device with its current owner, ``transitiveMemberOf`` of that owner and of a member device, the group
  name lookup) before they are applied and while they are staged. One that Graph no longer supports means the read
  it came from was inconsistent.
* :func:`plan_id` — an ETag of a plan's deactivations: the console approves a named plan, and only a freshly
  recomputed plan with the same id is applied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from shared_code.domain.devices import DeviceRecord, platform_matches
from shared_code.domain.reconcile import DIRECT, GROUP_UNRESOLVED, LEFT_GROUP, PlanItem
from shared_code.domain.scope import Scope

# Deactivations one poll re-verifies in full; a plan with more membership-derived deactivations is staged whatever
# the guard's thresholds, and VERIFY_SAMPLE of them (spread over the plan) are verified.
VERIFY_LIMIT = 100
VERIFY_SAMPLE = 20
MEMBERSHIP_CAUSES = frozenset({LEFT_GROUP, GROUP_UNRESOLVED})


class InconsistentRead(Exception):
    """What one poll read contradicts itself or a second read (message says how); the engine maps it."""


def scope_gaps(scope: Scope) -> list[str]:
    """Ids of in-scope groups the membership data lacks (sorted; empty when the read is consistent)."""
    return sorted(scope.missing)


def check_scope(scope: Scope) -> None:
    """Raise :class:`InconsistentRead` when the scope walk met groups the membership data lacks."""
    gaps = scope_gaps(scope)
    if gaps:
        shown = ", ".join(gaps[:5]) + (" …" if len(gaps) > 5 else "")
        raise InconsistentRead(f"{len(gaps)} group(s) in enrollment scope missing from the membership data: {shown}")


@dataclass(frozen=True)
class Targets:
    """The deactivations to re-verify, and whether they are all of the plan's membership-derived ones."""

    items: tuple[PlanItem, ...]
    complete: bool


def verification_targets(deactivations: Sequence[PlanItem], limit: int = VERIFY_LIMIT,
                         sample: int = VERIFY_SAMPLE) -> Targets:
    """Membership-derived deactivations to re-verify: all of them up to ``limit``, else ``sample`` spread evenly."""
    derived = [i for i in deactivations if i.cause in MEMBERSHIP_CAUSES]
    if len(derived) <= limit:
        return Targets(tuple(derived), True)
    step = len(derived) / sample
    return Targets(tuple(derived[int(k * step)] for k in range(sample)), False)


@dataclass(frozen=True)
class SecondRead:
    """What an independent re-read of Graph says about the devices of some planned deactivations.

    Attributes:
        devices: device object id → its current record with its registered owner (None: Graph has no such device).
        member_of: owner or device object id → ids of the groups it is a transitive member of (None: no such object).
        roots: ids of the enrollment groups the configured names resolve to now.
        platforms: the tenant's platforms (normalized).
        resolves_again: configured names that resolve to exactly one group again on a fresh lookup.
    """

    devices: Mapping[str, DeviceRecord | None]
    member_of: Mapping[str, Collection[str] | None]
    roots: Collection[str]
    platforms: frozenset[str]
    resolves_again: Collection[str] = ()


def reads_needed(items: Sequence[PlanItem]) -> tuple[list[str], list[str], list[str]]:
    """What a re-verification reads first: (devices with their owner, devices whose own memberships count — those in
    scope as members —, configured group names to look up again). The owners' memberships are read second."""
    devices = sorted({i.record.id for i in items})
    direct = sorted({i.record.id for i in items if i.path == DIRECT})
    names = sorted({i.via for i in items if i.cause == GROUP_UNRESOLVED and i.via})
    return devices, direct, names


def still_in_scope(item: PlanItem, read: SecondRead) -> bool:
    """Whether the second read says a planned deactivation is wrong: by the scope rule, the device is still in scope
    (it exists, its platform is one of the tenant's, and it or its current owner is a transitive member of an
    enrollment group), or the group whose name no longer resolved resolves again."""
    if item.cause == GROUP_UNRESOLVED and item.via in read.resolves_again:
        return True
    current = read.devices.get(item.record.id)
    if current is None or not platform_matches(current.operating_system, read.platforms):
        return False
    roots = set(read.roots)
    for obj in (current.owner_id, item.record.id):
        groups = read.member_of.get(obj) if obj else None
        if groups and roots.intersection(groups):
            return True
    return False


def unsupported(items: Sequence[PlanItem], read: SecondRead) -> list[PlanItem]:
    """The deactivations among ``items`` that the second read contradicts."""
    return [i for i in items if still_in_scope(i, read)]


def plan_id(deactivations: Sequence[PlanItem]) -> str:
    """ETag of a plan's deactivations (which devices): equal plans have equal ids, whatever their order or reasons."""
    if not deactivations:
        return ""
    digest = hashlib.sha256("\n".join(sorted(i.record.id for i in deactivations)).encode()).hexdigest()
    return f"plan-{digest[:24]}"
