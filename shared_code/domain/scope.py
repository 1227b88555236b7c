"""Enrollment scope: the group membership graph, name resolution and nested-group expansion.

Pure: no I/O, no SDK imports. The graph is fed by ``groups/delta?$select=displayName,members`` pages
(reference/graph.md §4): each group object may carry ``members@delta`` (members added, or removed when an item has
``@removed``), the same group may appear several times in one round (merge them), and a group with ``@removed`` was
deleted. Applying a page is idempotent, so replays after a crash are harmless.

Scope rules (issue 3): a configured display name resolves when exactly one group has it (Graph compares
``displayName`` case-insensitively); none → ``not_found``, several → ``ambiguous``, both reported and skipped. Members
of a resolved group are in scope: users directly, devices that are direct members of any group in the tree, and
the members of member groups at any depth (cycles terminate). Contacts and service principals are ignored.

The device rule (:func:`device_scope`, the one place it is stated; every strategy and both poll paths use it): a
device is in scope when its operating system is one of the tenant's platforms and either

* the device itself is a member of an enrollment group's tree (``direct``), with or without a registered owner —
  shared and kiosk devices are commonly added that way; or
* its registered owner is a (transitive) member (``owner``);

and, when the tenant excludes disabled users, its registered owner (if any) is not disabled. A device with no owner
that is not itself a member is out of scope (reported as ownerless).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared_code.domain.devices import platform_matches

# One-letter member kinds keep the stored graph small (L tenants have tens of thousands of edges).
USER, GROUP, DEVICE, OTHER = "u", "g", "d", "o"
_KINDS = {
    "#microsoft.graph.user": USER,
    "#microsoft.graph.group": GROUP,
    "#microsoft.graph.device": DEVICE,
}


def member_kind(member: Mapping[str, Any]) -> str:
    """Kind letter of a ``members@delta`` / ``members`` item from its ``@odata.type`` (contacts, SPs → other)."""
    return _KINDS.get(str(member.get("@odata.type", "")), OTHER)


def odata_string(value: str) -> str:
    """An OData string literal: single quotes doubled and the whole wrapped in quotes (``O'Brien`` → ``'O''Brien'``)."""
    return "'" + value.replace("'", "''") + "'"


@dataclass
class GroupNode:
    """One group: its display name and direct members (id → kind letter)."""

    name: str
    members: dict[str, str] = field(default_factory=dict)


@dataclass
class MembershipGraph:
    """Direct memberships of every group the delta stream reported."""

    groups: dict[str, GroupNode] = field(default_factory=dict)

    def apply_delta_object(self, obj: Mapping[str, Any]) -> bool:
        """Apply one group object of a ``groups/delta`` page. Returns True when anything changed.

        Idempotent: re-adding a present member or removing an absent one changes nothing.
        """
        gid = str(obj["id"])
        if "@removed" in obj:
            return self.groups.pop(gid, None) is not None
        node = self.groups.get(gid)
        changed = False
        if node is None:
            node = GroupNode(name=str(obj.get("displayName") or ""))
            self.groups[gid] = node
            changed = True
        name = obj.get("displayName")
        if name is not None and name != node.name:
            node.name = str(name)
            changed = True
        for member in obj.get("members@delta") or ():
            mid = str(member["id"])
            if "@removed" in member:
                if node.members.pop(mid, None) is not None:
                    changed = True
            else:
                kind = member_kind(member)
                if node.members.get(mid) != kind:
                    node.members[mid] = kind
                    changed = True
        return changed

    def apply_page(self, objects: Iterable[Mapping[str, Any]]) -> bool:
        """Apply every object of a page; True when anything changed."""
        changed = False
        for obj in objects:
            changed = self.apply_delta_object(obj) or changed
        return changed

    def groups_named(self, name: str) -> list[str]:
        """Ids of groups whose display name equals ``name`` case-insensitively (Graph's ``eq`` semantics)."""
        key = name.casefold()
        return sorted(gid for gid, node in self.groups.items() if node.name.casefold() == key)

    def to_json(self) -> dict[str, Any]:
        """Compact JSON-able form: ``{"g": {id: [name, {member: kind}]}}``."""
        return {"g": {gid: [node.name, node.members] for gid, node in self.groups.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MembershipGraph:
        """Inverse of :meth:`to_json`."""
        return cls({gid: GroupNode(str(v[0]), dict(v[1])) for gid, v in (data.get("g") or {}).items()})

    def edge_count(self) -> int:
        """Number of membership edges (for logs and cost estimates)."""
        return sum(len(n.members) for n in self.groups.values())


@dataclass(frozen=True)
class Resolution:
    """Configured names → group ids. ``unresolved`` items: ``{"name", "reason", "matches"}``."""

    resolved: dict[str, str]
    unresolved: list[dict[str, Any]]


def resolve_from_matches(matches: Mapping[str, list[str]]) -> Resolution:
    """Decide resolution from the groups each configured name matched (exactly one → resolved)."""
    resolved: dict[str, str] = {}
    unresolved: list[dict[str, Any]] = []
    for name, ids in matches.items():
        if len(ids) == 1:
            resolved[name] = ids[0]
        else:
            unresolved.append(
                {"name": name, "reason": "not_found" if not ids else "ambiguous", "matches": sorted(ids)}
            )
    return Resolution(resolved, unresolved)


def resolve_names(graph: MembershipGraph, names: Iterable[str]) -> Resolution:
    """Resolve configured names against the local graph (same rule as the ``$filter`` lookup)."""
    return resolve_from_matches({name: graph.groups_named(name) for name in names})


@dataclass(frozen=True)
class Scope:
    """Who and what is in scope, each with the configured group name that brought it in (first found)."""

    users: dict[str, str]
    devices: dict[str, str]
    groups: frozenset[str]
    # Groups the walk was told are in scope (a resolved root, or a member group of one) that the membership data does
    # not hold: the read was inconsistent (domain.consistency), never silently skipped.
    missing: frozenset[str] = frozenset()

    def may_contain(self, device_id: str, owner_id: str | None) -> bool:
        """Whether a device can be in scope whatever its platform (a strategy's cheap pre-filter)."""
        return device_id in self.devices or (owner_id is not None and owner_id in self.users)


DIRECT_PATH, OWNER_PATH = "direct", "owner"


def device_scope(
    device_id: str,
    owner_id: str | None,
    operating_system: str,
    scope: Scope,
    platforms: frozenset[str],
    disabled_owners: frozenset[str] | set[str] = frozenset(),
) -> tuple[str, str] | None:
    """The scope rule for one device: ``(path, via group name)`` when it is in scope, else None (module docstring).

    ``path`` is ``direct`` (the device is a member) or ``owner`` (its owner is); a device that is both counts as
    ``direct``.
    """
    if not platform_matches(operating_system, platforms):
        return None
    if owner_id is not None and owner_id in disabled_owners:
        return None
    if device_id in scope.devices:
        return DIRECT_PATH, scope.devices[device_id]
    if owner_id is not None and owner_id in scope.users:
        return OWNER_PATH, scope.users[owner_id]
    return None


def expand_scope(graph: MembershipGraph, resolved: Mapping[str, str]) -> Scope:
    """Walk every resolved group's tree (breadth first, cycle safe) collecting users and direct device members.

    A group the walk reaches but the graph does not hold is recorded in ``missing`` (never silently skipped).

    Roots are visited in sorted name order so the ``via`` name of an object in several trees is deterministic.
    """
    users: dict[str, str] = {}
    devices: dict[str, str] = {}
    all_groups: set[str] = set()
    missing: set[str] = set()
    for name in sorted(resolved):
        root = resolved[name]
        seen = {root}
        queue = [root]
        while queue:
            gid = queue.pop(0)
            node = graph.groups.get(gid)
            if node is None:
                missing.add(gid)
                continue
            for mid, kind in node.members.items():
                if kind == USER:
                    users.setdefault(mid, name)
                elif kind == DEVICE:
                    devices.setdefault(mid, name)
                elif kind == GROUP and mid not in seen:
                    seen.add(mid)
                    queue.append(mid)
        all_groups |= seen
    return Scope(users, devices, frozenset(all_groups), frozenset(missing))
