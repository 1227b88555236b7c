"""In-memory Entra directory for the simulator: tenants, objects, change journal, ground truth.

Designed for XL tenants (100k users, 180k devices): objects are slotted classes kept in per-type collections that
are ordered by a monotonic creation ordinal, so paging is a bisect plus a slice and never a sort. Every mutation
appends to a per-stream change journal (``users``, ``groups``, ``devices``) whose sequence numbers are what delta
tokens encode.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Intune's first-party app id (intune.md §1: Intune-Resource-Access IntuneServiceLocationProvider.cs).
INTUNE_APP_ID = "0000000a-0000-0000-c000-000000000000"
DEFAULT_PLATFORMS = frozenset({"iOS", "iPadOS", "Android"})
# The Intune service principal's endpoint `providerName`s and the partner service each leads to (simulator/intune.py
# serves both paths). The MTD names are those the seed's own API paths use (`PUT /StatelessPartnerTenantDataSyncService/
# PartnerTenants`, …) and are listed by default; Fleet's compliance-partner names are the documented alternative
# (reference/intune.md §2). Which endpoints a real tenant's principal lists is not documented: the
# `set_intune_endpoints` mutation makes one list only some (issue 10 §6 saw the tenant service without the device one).
INTUNE_PROVIDERS = {
    "StatelessPartnerTenantDataSyncService": "StatelessPartnerTenantDataSyncService",
    "StatelessPartnerDeviceDataSyncService": "StatelessPartnerDeviceDataSyncService",
    "PartnerTenantDataSyncService": "StatelessPartnerTenantDataSyncService",
    "PartnerDeviceDataSyncService": "StatelessPartnerDeviceDataSyncService",
}
DEFAULT_INTUNE_PROVIDERS = ("StatelessPartnerTenantDataSyncService", "StatelessPartnerDeviceDataSyncService")

ODATA_TYPES = {
    "user": "#microsoft.graph.user",
    "group": "#microsoft.graph.group",
    "device": "#microsoft.graph.device",
    "orgContact": "#microsoft.graph.orgContact",
    "servicePrincipal": "#microsoft.graph.servicePrincipal",
}


class DirectoryError(ValueError):
    """Bad input to a directory mutation; ``field`` names the offending input field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------------------------------------------
# Objects. Graph property names are produced by ``props()``; internal attributes stay snake_case.
# --------------------------------------------------------------------------------------------------------------


class User:
    __slots__ = ("display_name", "enabled", "id", "mail", "ord", "upn")
    kind = "user"

    def __init__(self, id: str, upn: str, display_name: str, enabled: bool, mail: str | None, ord: int) -> None:
        self.id, self.upn, self.display_name, self.enabled, self.mail, self.ord = (
            id, upn, display_name, enabled, mail, ord)

    def props(self) -> dict[str, Any]:
        # Default user properties (https://learn.microsoft.com/graph/api/user-list: default set) + accountEnabled.
        return {"id": self.id, "userPrincipalName": self.upn, "displayName": self.display_name,
                "accountEnabled": self.enabled, "mail": self.mail}


class Group:
    __slots__ = ("display_name", "id", "mail_enabled", "members", "ord", "security_enabled")
    kind = "group"

    def __init__(self, id: str, display_name: str, security_enabled: bool, ord: int) -> None:
        self.id, self.display_name, self.security_enabled, self.ord = id, display_name, security_enabled, ord
        self.mail_enabled = False
        # member id -> member kind ("user", "group", "device", "orgContact", "servicePrincipal"); dict keeps order.
        self.members: dict[str, str] = {}

    def props(self) -> dict[str, Any]:
        return {"id": self.id, "displayName": self.display_name, "securityEnabled": self.security_enabled,
                "mailEnabled": self.mail_enabled, "groupTypes": []}


class Device:
    __slots__ = ("device_id", "display_name", "enabled", "id", "is_compliant", "is_managed", "last_sign_in", "ord",
                 "os", "os_version", "owner", "registered_users", "trust_type")
    kind = "device"

    def __init__(self, id: str, device_id: str, display_name: str, os: str, os_version: str, trust_type: str,
                 is_managed: bool, is_compliant: bool, enabled: bool, last_sign_in: str, owner: str | None,
                 ord: int) -> None:
        self.id, self.device_id, self.display_name, self.os, self.os_version = (
            id, device_id, display_name, os, os_version)
        self.trust_type, self.is_managed, self.is_compliant, self.enabled = (
            trust_type, is_managed, is_compliant, enabled)
        self.last_sign_in, self.owner, self.ord = last_sign_in, owner, ord
        self.registered_users: list[str] = [owner] if owner else []

    def props(self) -> dict[str, Any]:
        # device resource properties (https://learn.microsoft.com/graph/api/resources/device).
        return {"id": self.id, "deviceId": self.device_id, "displayName": self.display_name,
                "operatingSystem": self.os, "operatingSystemVersion": self.os_version, "trustType": self.trust_type,
                "isManaged": self.is_managed, "isCompliant": self.is_compliant, "accountEnabled": self.enabled,
                "approximateLastSignInDateTime": self.last_sign_in}


class OrgContact:
    __slots__ = ("display_name", "id", "mail", "ord")
    kind = "orgContact"

    def __init__(self, id: str, display_name: str, mail: str, ord: int) -> None:
        self.id, self.display_name, self.mail, self.ord = id, display_name, mail, ord

    def props(self) -> dict[str, Any]:
        return {"id": self.id, "displayName": self.display_name, "mail": self.mail}


class ServicePrincipal:
    __slots__ = ("app_id", "display_name", "endpoints", "id", "ord")
    kind = "servicePrincipal"

    def __init__(self, id: str, app_id: str, display_name: str, ord: int) -> None:
        self.id, self.app_id, self.display_name, self.ord = id, app_id, display_name, ord
        self.endpoints: list[dict[str, Any]] = []

    def props(self) -> dict[str, Any]:
        return {"id": self.id, "appId": self.app_id, "displayName": self.display_name,
                "servicePrincipalType": "Application", "accountEnabled": True}


class MamRegistration:
    """managedAppRegistration (intune.md §4; api-reference/v1.0/resources/intune-mam-managedappregistration.md)."""

    __slots__ = ("data", "id", "ord", "user_id")
    kind = "managedAppRegistration"

    def __init__(self, id: str, user_id: str, data: dict[str, Any], ord: int) -> None:
        self.id, self.user_id, self.data, self.ord = id, user_id, data, ord

    def props(self) -> dict[str, Any]:
        return {"@odata.type": self.data.get("@odata.type", "#microsoft.graph.iosManagedAppRegistration"),
                "id": self.id, "userId": self.user_id,
                **{k: v for k, v in self.data.items() if k != "@odata.type"}}


class Collection:
    """Objects of one type ordered by creation ordinal (stable paging keys)."""

    __slots__ = ("by_id", "items", "ords")

    def __init__(self) -> None:
        self.by_id: dict[str, Any] = {}
        self.items: list[Any] = []
        self.ords: list[int] = []

    def add(self, obj: Any) -> None:
        if self.ords and obj.ord <= self.ords[-1]:  # keep sorted even if an ordinal is reused
            i = bisect.bisect_left(self.ords, obj.ord)
            self.ords.insert(i, obj.ord)
            self.items.insert(i, obj)
        else:
            self.ords.append(obj.ord)
            self.items.append(obj)
        self.by_id[obj.id] = obj

    def remove(self, obj_id: str) -> Any:
        obj = self.by_id.pop(obj_id)
        i = bisect.bisect_left(self.ords, obj.ord)
        del self.ords[i]
        del self.items[i]
        return obj

    def get(self, obj_id: str) -> Any:
        return self.by_id.get(obj_id)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def after(self, ord_exclusive: int) -> int:
        """Index of the first item whose ordinal is greater than ``ord_exclusive``."""
        return bisect.bisect_right(self.ords, ord_exclusive)


@dataclass
class JournalEntry:
    """One change. kind: ``new`` | ``upd`` (props) | ``del`` (reason) | ``madd`` / ``mrem`` (member id, kind)."""

    seq: int
    obj_id: str
    kind: str
    props: frozenset[str] = frozenset()
    reason: str = ""
    member: tuple[str, str] | None = None


@dataclass
class Tenant:
    tenant_id: str
    scenario: str
    seed: int
    enrollment_groups: list[str] = field(default_factory=list)
    users: Collection = field(default_factory=Collection)
    groups: Collection = field(default_factory=Collection)
    devices: Collection = field(default_factory=Collection)
    contacts: Collection = field(default_factory=Collection)
    service_principals: Collection = field(default_factory=Collection)
    mam: Collection = field(default_factory=Collection)
    upn_index: dict[str, str] = field(default_factory=dict)        # casefolded UPN -> user id
    device_id_index: dict[str, str] = field(default_factory=dict)  # deviceId -> object id
    owned: dict[str, list[str]] = field(default_factory=dict)      # user id -> owned device ids (ordered)
    member_of: dict[str, set[str]] = field(default_factory=dict)   # object id -> direct parent group ids
    journal: dict[str, list[JournalEntry]] = field(
        default_factory=lambda: {"users": [], "groups": [], "devices": []})
    seq: int = 0
    next_ord: int = 0
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex[:8])  # changes on reset → old tokens invalid
    # Replication lag (simulated clock, epoch seconds): Entra is eventually consistent, so an object or link written
    # now may not be readable on every replica yet — a new object answers 404 Request_ResourceNotFound and a new
    # link is absent, while the change journal (delta) already reports it
    # (https://devblogs.microsoft.com/identity/designing-for-eventual-consistency-for-microsoft-entra/,
    # https://blogs.aaddevsup.xyz/2021/08/why-do-i-sometimes-get-a-404-when-trying-to-update-an-azure-directory-object-after-i-just-created-it/).
    readable_at: dict[str, float] = field(default_factory=dict)               # user/device id → readable from
    owner_readable_at: dict[str, float] = field(default_factory=dict)         # device id → its owner link from
    member_readable_at: dict[tuple[str, str], float] = field(default_factory=dict)  # (group, member) → from
    now: float = 0.0  # the simulated clock when the current mutation runs (set by World.mutate)
    # Soft-deleted users (restorable for 30 days): id -> (user, direct group ids, owned device ids) at deletion.
    deleted_users: dict[str, tuple[Any, list[str], list[str]]] = field(default_factory=dict)

    # ---- replication lag ----------------------------------------------------------------------------------------
    def lagging(self, obj_id: str, now: float) -> bool:
        """Whether an object is not readable yet (by id) at ``now``."""
        return bool(self.readable_at) and now < self.readable_at.get(obj_id, 0.0)

    def owner_visible(self, device_id: str, now: float) -> bool:
        """Whether a device's registered-owner link is readable at ``now``."""
        return not self.owner_readable_at or now >= self.owner_readable_at.get(device_id, 0.0)

    def member_visible(self, group_id: str, member_id: str, now: float) -> bool:
        """Whether a membership is readable through members / memberOf at ``now`` (delta reports it at once)."""
        return not self.member_readable_at or now >= self.member_readable_at.get((group_id, member_id), 0.0)

    # ---- bookkeeping ------------------------------------------------------------------------------------------
    def new_ord(self) -> int:
        self.next_ord += 1
        return self.next_ord

    def log(self, stream: str, obj_id: str, kind: str, **kw: Any) -> int:
        self.seq += 1
        self.journal[stream].append(JournalEntry(self.seq, obj_id, kind, **kw))
        return self.seq

    def entries(self, stream: str, after: int, upto: int) -> list[JournalEntry]:
        """Journal entries with ``after < seq <= upto`` (journal is append-only and seq-ordered)."""
        j = self.journal[stream]
        lo = _bisect_seq(j, after)
        hi = _bisect_seq(j, upto)
        return j[lo:hi]

    # ---- lookups ----------------------------------------------------------------------------------------------
    def find(self, obj_id: str) -> Any:
        for coll in (self.users, self.groups, self.devices, self.contacts, self.service_principals):
            obj = coll.get(obj_id)
            if obj is not None:
                return obj
        return None

    def user_by_key(self, key: str) -> User | None:
        u: User | None = self.users.get(key)
        if u is None:
            uid = self.upn_index.get(key.casefold())
            u = self.users.get(uid) if uid else None
        return u

    def groups_named(self, name: str) -> list[Group]:
        # Directory string equality is case-insensitive (https://learn.microsoft.com/graph/aad-advanced-queries).
        key = name.casefold()
        return [g for g in self.groups if g.display_name.casefold() == key]

    # ---- graph walks ------------------------------------------------------------------------------------------
    def transitive_members(self, group_id: str) -> dict[str, str]:
        """All nested members of a group (cycle safe), insertion ordered, excluding the group itself."""
        out: dict[str, str] = {}
        seen_groups = {group_id}
        stack = [group_id]
        while stack:
            g = self.groups.get(stack.pop())
            if g is None:
                continue
            for mid, kind in g.members.items():
                if mid not in out and mid != group_id:
                    out[mid] = kind
                if kind == "group" and mid not in seen_groups:
                    seen_groups.add(mid)
                    stack.append(mid)
        return out

    def transitive_member_of(self, obj_id: str) -> list[str]:
        """Group ids an object belongs to directly or through nesting (cycle safe)."""
        seen: dict[str, None] = {}
        stack = list(self.member_of.get(obj_id, ()))
        while stack:
            gid = stack.pop()
            if gid in seen or gid == obj_id:
                continue
            seen[gid] = None
            stack.extend(self.member_of.get(gid, ()))
        return list(seen)

    # ---- raw mutations (used by the generator without journaling, and by mutate()) ----------------------------
    def _link(self, group: Group, member_id: str, kind: str) -> bool:
        if member_id in group.members:
            return False
        group.members[member_id] = kind
        self.member_of.setdefault(member_id, set()).add(group.id)
        return True

    def _unlink(self, group: Group, member_id: str) -> str | None:
        kind = group.members.pop(member_id, None)
        if kind is not None:
            parents = self.member_of.get(member_id)
            if parents:
                parents.discard(group.id)
        return kind

    def _set_owner(self, dev: Device, owner_id: str | None) -> None:
        if dev.owner:
            lst = self.owned.get(dev.owner)
            if lst and dev.id in lst:
                lst.remove(dev.id)
            if dev.owner in dev.registered_users:
                dev.registered_users.remove(dev.owner)
        dev.owner = owner_id
        if owner_id:
            self.owned.setdefault(owner_id, []).append(dev.id)
            if owner_id not in dev.registered_users:
                dev.registered_users.insert(0, owner_id)

    def counts(self) -> dict[str, int]:
        return {"users": len(self.users), "groups": len(self.groups), "devices": len(self.devices),
                "orgContacts": len(self.contacts), "servicePrincipals": len(self.service_principals),
                "managedAppRegistrations": len(self.mam),
                "ownerlessDevices": sum(1 for d in self.devices if d.owner is None),
                "disabledUsers": sum(1 for u in self.users if not u.enabled)}


def _bisect_seq(entries: list[JournalEntry], seq: int) -> int:
    lo, hi = 0, len(entries)
    while lo < hi:
        mid = (lo + hi) // 2
        if entries[mid].seq <= seq:
            lo = mid + 1
        else:
            hi = mid
    return lo


# --------------------------------------------------------------------------------------------------------------
# World
# --------------------------------------------------------------------------------------------------------------


class World:
    """All simulated tenants. ``base_url`` is set by the server at startup (used for Intune endpoint URIs)."""

    def __init__(self, base_url: str = "") -> None:
        self.base_url = base_url
        self.tenants: dict[str, Tenant] = {}
        # Delta paging knobs: members per group record and records per page (Graph's sizes are unconfirmed,
        # graph.md §4-5); small enough that M tenants already split a group across pages.
        self.delta_member_chunk = 50
        self.delta_page_size = 100
        self.device_delta_page_size = 200

    # ---- tenants (generated ones come from simulator/scenarios.py: scenarios.add_tenant(world, …)) -------------
    def install(self, tenant: Tenant, *, with_intune_sp: bool = True) -> Tenant:
        """Add a generated tenant. A derived (seeded) id that is already taken gets a fresh random id."""
        if tenant.tenant_id in self.tenants:
            tenant.tenant_id = str(uuid.uuid4())
        if with_intune_sp:
            self.ensure_intune_sp(tenant)
        self.tenants[tenant.tenant_id] = tenant
        return tenant

    def remove_tenant(self, tenant_id: str) -> None:
        if self.tenants.pop(tenant_id, None) is None:
            raise DirectoryError("unknown tenant", "tenant_id")

    def tenant(self, tenant_id: str) -> Tenant:
        t = self.tenants.get(tenant_id)
        if t is None:
            raise DirectoryError("unknown tenant", "tenant_id")
        return t

    def ensure_intune_sp(self, tenant: Tenant,
                         providers: Iterable[str] = DEFAULT_INTUNE_PROVIDERS) -> ServicePrincipal:
        for sp in tenant.service_principals:
            if sp.app_id == INTUNE_APP_ID:
                break
        else:
            sp = ServicePrincipal(_uuid_from(tenant.tenant_id, "intune-sp"), INTUNE_APP_ID, "Microsoft Intune",
                                  tenant.new_ord())
            tenant.service_principals.add(sp)
        # Endpoints the Intune adapter discovers (contract; intune.md §1 endpoint resource fields).
        sp.endpoints = [
            {"id": _uuid_from(tenant.tenant_id, name), "capability": "Intune", "providerId": INTUNE_APP_ID,
             "providerName": name, "providerResourceId": None,
             "uri": f"{self.base_url}/intune/{tenant.tenant_id}/{INTUNE_PROVIDERS[name]}"}
            for name in providers
        ]
        return sp  # type: ignore[no-any-return]

    def user_count(self, tenant_id: str) -> int:
        t = self.tenants.get(tenant_id)
        return len(t.users) if t else 0

    def summary(self, tenant_id: str) -> dict[str, Any]:
        t = self.tenant(tenant_id)
        return {"tenant_id": t.tenant_id, "id": t.tenant_id, "scenario": t.scenario, "seed": t.seed,
                "enrollment_groups": list(t.enrollment_groups), "counts": t.counts()}

    # ---- ground truth -----------------------------------------------------------------------------------------
    def ground_truth(self, tenant_id: str, enrollment_groups: list[str],
                     platforms: Iterable[str] = DEFAULT_PLATFORMS) -> dict[str, Any]:
        """Which Entra devices should be enrolled now (contract): owner transitively in a named group, or the device
        itself a (nested) member of one (with or without an owner); platform in ``platforms``.

        A name matching no group, or more than one group (duplicates are ambiguous), is reported unresolved.
        """
        t = self.tenant(tenant_id)
        plat = set(platforms)
        unresolved: list[dict[str, Any]] = []
        users: set[str] = set()
        direct_devices: set[str] = set()
        resolved: dict[str, str] = {}
        for name in enrollment_groups:
            matches = t.groups_named(name)
            if len(matches) != 1:
                unresolved.append({"name": name, "matches": [g.id for g in matches],
                                   "reason": "not_found" if not matches else "ambiguous"})
                continue
            g = matches[0]
            resolved[name] = g.id
            for mid, kind in t.transitive_members(g.id).items():
                if kind == "user":
                    users.add(mid)
                elif kind == "device":
                    direct_devices.add(mid)
        devices = []
        seen: set[str] = set()
        for uid in sorted(users):
            for did in t.owned.get(uid, ()):
                d = t.devices.get(did)
                if d is not None and d.os in plat:
                    seen.add(d.id)
                    devices.append({"id": d.id, "deviceId": d.device_id, "ownerId": uid, "operatingSystem": d.os,
                                    "ownerEnabled": t.users.by_id[uid].enabled, "via": "owner"})
        # A device that is itself a (nested) member of an enrollment group is in scope with or without a registered
        # owner: shared and kiosk devices are commonly added to groups that way (issue 10 §3; Graph allows at most
        # one owner). The platform filter still applies.
        for did in sorted(direct_devices):
            d = t.devices.get(did)
            if d is None or d.id in seen or d.os not in plat:
                continue
            seen.add(d.id)
            owner = t.users.by_id.get(d.owner) if d.owner else None
            devices.append({"id": d.id, "deviceId": d.device_id, "ownerId": d.owner, "operatingSystem": d.os,
                            "ownerEnabled": owner.enabled if owner is not None else True, "via": "direct_member"})
        ownerless = [d.id for d in t.devices if d.owner is None and d.os in plat]
        return {"devices": devices, "unresolved_groups": unresolved, "ownerless": ownerless,
                "resolved_groups": resolved, "users_in_scope": len(users)}

    # ---- mutations (admin API) --------------------------------------------------------------------------------
    def mutate(self, tenant_id: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Apply one directory mutation and journal it; raises DirectoryError (→ 400) on bad input."""
        t = self.tenant(tenant_id)
        fn = _MUTATIONS.get(op)
        if fn is None:
            raise DirectoryError(f"unknown op {op!r}; one of {sorted(_MUTATIONS)}", "op")
        result = fn(self, t, args)
        return {"ok": True, "op": op, "seq": t.seq, **(result or {})}

    def mutate_at(self, tenant_id: str, op: str, args: dict[str, Any], now: float) -> dict[str, Any]:
        """:meth:`mutate` at simulated time ``now`` (what ``lag_seconds`` / ``owner_lag_seconds`` count from)."""
        self.tenant(tenant_id).now = now
        return self.mutate(tenant_id, op, args)


# ---- mutation helpers ------------------------------------------------------------------------------------------


def _arg(args: dict[str, Any], name: str, typ: type | tuple[type, ...] = str, *, required: bool = True,
         default: Any = None) -> Any:
    if name not in args or args[name] is None:
        if required:
            raise DirectoryError(f"missing field {name!r}", name)
        return default
    v = args[name]
    if not isinstance(v, typ) or (typ is str and not v):
        raise DirectoryError(f"field {name!r} has the wrong type or is empty", name)
    return v


def _group(t: Tenant, args: dict[str, Any], id_field: str = "group_id", name_field: str = "group_name") -> Group:
    if args.get(id_field) is None and args.get(name_field) is not None:
        matches = t.groups_named(_arg(args, name_field))
        if len(matches) != 1:
            raise DirectoryError(f"{name_field} matches {len(matches)} groups", name_field)
        return matches[0]
    gid = _arg(args, id_field)
    g: Group | None = t.groups.get(gid)
    if g is None:
        raise DirectoryError("no such group", id_field)
    return g


def _user(t: Tenant, args: dict[str, Any], f: str = "user_id") -> User:
    u = t.user_by_key(_arg(args, f))
    if u is None:
        raise DirectoryError("no such user", f)
    return u


def _device(t: Tenant, args: dict[str, Any], f: str = "device_id") -> Device:
    key = _arg(args, f)
    d: Device | None = t.devices.get(key) or t.devices.get(t.device_id_index.get(key, ""))
    if d is None:
        raise DirectoryError("no such device", f)
    return d


def _lag(t: Tenant, a: dict[str, Any], name: str = "lag_seconds") -> float | None:
    """``now + lag`` when the mutation asks for replication lag (a number 0..86400 of simulated seconds)."""
    lag = a.get(name)
    if lag is None:
        return None
    if not isinstance(lag, int | float) or isinstance(lag, bool) or not 0 <= lag <= 86400:
        raise DirectoryError(f"{name} must be a number of seconds 0..86400", name)
    return t.now + float(lag)


def _add_member(t: Tenant, g: Group, member_id: str, field_name: str) -> dict[str, Any]:
    obj = t.find(member_id)
    if obj is None:
        raise DirectoryError("no such directory object", field_name)
    if obj.kind == "group" and obj.id == g.id:
        raise DirectoryError("a group cannot be a member of itself", field_name)
    if t._link(g, obj.id, obj.kind):
        t.log("groups", g.id, "madd", member=(obj.id, obj.kind))
        return {"changed": True}
    return {"changed": False}


def _remove_member(t: Tenant, g: Group, member_id: str, field_name: str) -> dict[str, Any]:
    kind = t._unlink(g, member_id)
    if kind is None:
        raise DirectoryError("not a member of that group", field_name)
    t.log("groups", g.id, "mrem", member=(member_id, kind))
    return {"changed": True}


def _op_add_member(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    g = _group(t, a)
    result = _add_member(t, g, _arg(a, "member_id"), "member_id")
    until = _lag(t, a)
    if until is not None:
        t.member_readable_at[(g.id, str(a["member_id"]))] = until
    return result


def _op_remove_member(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    return _remove_member(t, _group(t, a), _arg(a, "member_id"), "member_id")


def _op_nest_group(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    parent = _group(t, a, "parent_id", "parent_name")
    child = _group(t, a, "child_id", "child_name")
    return _add_member(t, parent, child.id, "child_id")


def _op_unnest_group(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    parent = _group(t, a, "parent_id", "parent_name")
    child = _group(t, a, "child_id", "child_name")
    return _remove_member(t, parent, child.id, "child_id")


def _drop_memberships(t: Tenant, obj_id: str) -> None:
    for gid in list(t.member_of.get(obj_id, ())):
        g = t.groups.get(gid)
        if g is not None:
            kind = t._unlink(g, obj_id)
            if kind:
                # A deleted member shows up as a removed member (graph.md §4, delta-query-groups.md).
                t.log("groups", g.id, "mrem", member=(obj_id, kind))
    t.member_of.pop(obj_id, None)


def _reason(a: dict[str, Any]) -> str:
    # @removed reasons: "changed" = soft-deleted/restorable, "deleted" = permanent (delta-query-overview.md).
    return "deleted" if _arg(a, "permanent", bool, required=False, default=False) else "changed"


def _op_delete_user(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    u = _user(t, a)
    if _reason(a) == "changed":
        t.deleted_users[u.id] = (u, sorted(t.member_of.get(u.id, ())), list(t.owned.get(u.id, ())))
    _drop_memberships(t, u.id)
    for did in list(t.owned.get(u.id, ())):
        d = t.devices.get(did)
        if d is not None:
            t._set_owner(d, None)
    t.owned.pop(u.id, None)
    t.users.remove(u.id)
    t.upn_index.pop(u.upn.casefold(), None)
    t.log("users", u.id, "del", reason=_reason(a))
    return {"id": u.id}


def _op_restore_user(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    """``POST /directory/deletedItems/{id}/restore`` for a soft-deleted user: "you can fully restore the item"
    (learn.microsoft.com/graph/api/directory-deleteditems-restore), so its group memberships and registered devices
    (still present and unowned) come back. Delta reports the user again and each membership as added."""
    uid = _arg(a, "user_id")
    entry = t.deleted_users.pop(uid, None)
    if entry is None:
        raise DirectoryError("no such deleted user (permanently deleted users cannot be restored)", "user_id")
    u, groups, devices = entry
    if u.upn.casefold() in t.upn_index:
        t.deleted_users[uid] = entry
        raise DirectoryError("userPrincipalName is used by another user", "user_id")
    t.users.add(u)
    t.upn_index[u.upn.casefold()] = u.id
    t.log("users", u.id, "new")
    for gid in groups:
        g = t.groups.get(gid)
        if g is not None:
            _add_member(t, g, u.id, "user_id")
    for did in devices:
        d = t.devices.get(did)
        if d is not None and d.owner is None:
            t._set_owner(d, u.id)
    return {"id": u.id, "object": u.props()}


def _op_delete_device(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    d = _device(t, a)
    _drop_memberships(t, d.id)
    t._set_owner(d, None)
    t.devices.remove(d.id)
    t.device_id_index.pop(d.device_id, None)
    # Entra devices have no recycle bin: removal is permanent (reason "deleted").
    t.log("devices", d.id, "del", reason="changed" if a.get("permanent") is False else "deleted")
    return {"id": d.id}


def _op_delete_group(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    g = _group(t, a)
    _drop_memberships(t, g.id)
    for mid in list(g.members):
        t._unlink(g, mid)
    t.groups.remove(g.id)
    t.log("groups", g.id, "del", reason=_reason(a))
    return {"id": g.id}


def _op_change_os(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    d = _device(t, a)
    d.os = _arg(a, "operatingSystem")
    changed = {"operatingSystem"}
    ver = _arg(a, "operatingSystemVersion", required=False)
    if ver is not None:
        d.os_version = ver
        changed.add("operatingSystemVersion")
    t.log("devices", d.id, "upd", props=frozenset(changed))
    return {"id": d.id}


def _op_rename_group(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    g = _group(t, a)
    g.display_name = _arg(a, "displayName")
    t.log("groups", g.id, "upd", props=frozenset({"displayName"}))
    return {"id": g.id}


def _op_add_user(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    uid = _arg(a, "id", required=False) or str(uuid.uuid4())
    if t.find(uid) is not None:
        raise DirectoryError("id already used", "id")
    name = _arg(a, "displayName", required=False) or f"User {uid[:8]}"
    upn = _arg(a, "userPrincipalName", required=False) or f"user.{uid[:8]}@{_domain(t)}"
    if upn.casefold() in t.upn_index:
        raise DirectoryError("userPrincipalName already used", "userPrincipalName")
    u = User(uid, upn, name, _arg(a, "accountEnabled", bool, required=False, default=True), upn, t.new_ord())
    until = _lag(t, a)
    if until is not None:
        t.readable_at[u.id] = until
    t.users.add(u)
    t.upn_index[upn.casefold()] = u.id
    t.log("users", u.id, "new")
    for gid in _arg(a, "groups", list, required=False, default=[]):
        g = t.groups.get(gid) if isinstance(gid, str) else None
        if g is None:
            raise DirectoryError("no such group in groups", "groups")
        _add_member(t, g, u.id, "groups")
    return {"id": u.id, "object": u.props()}


def _op_add_group(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    gid = _arg(a, "id", required=False) or str(uuid.uuid4())
    if t.find(gid) is not None:
        raise DirectoryError("id already used", "id")
    g = Group(gid, _arg(a, "displayName"), _arg(a, "securityEnabled", bool, required=False, default=True),
              t.new_ord())
    t.groups.add(g)
    t.log("groups", g.id, "new")
    return {"id": g.id, "object": g.props()}


_OS_VERSIONS = {"iOS": "17.5", "iPadOS": "17.5", "Android": "14", "Windows": "10.0.22631", "macOS": "14.5"}


def _op_add_device(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    os_name = _arg(a, "operatingSystem")
    owner_id = _arg(a, "owner_id", required=False)
    owner = None
    if owner_id is not None:
        owner = t.user_by_key(owner_id)
        if owner is None:
            raise DirectoryError("no such user", "owner_id")
    oid = _arg(a, "id", required=False) or str(uuid.uuid4())
    if t.find(oid) is not None:
        raise DirectoryError("id already used", "id")
    did = _arg(a, "deviceId", required=False) or str(uuid.uuid4())
    d = Device(oid, did, _arg(a, "displayName", required=False) or f"{os_name}-{oid[:6]}", os_name,
               _arg(a, "operatingSystemVersion", required=False) or _OS_VERSIONS.get(os_name, "1.0"),
               _arg(a, "trustType", required=False) or "Workplace",
               _arg(a, "isManaged", bool, required=False, default=False),
               _arg(a, "isCompliant", bool, required=False, default=False), True, "2026-01-01T00:00:00Z",
               None, t.new_ord())
    until, owner_until = _lag(t, a), _lag(t, a, "owner_lag_seconds")
    if until is not None:
        t.readable_at[d.id] = until
    if owner_until is not None:
        t.owner_readable_at[d.id] = owner_until
    t.devices.add(d)
    t.device_id_index[d.device_id] = d.id
    if owner is not None:
        t._set_owner(d, owner.id)
    t.log("devices", d.id, "new")
    return {"id": d.id, "object": d.props()}


def _op_set_enabled(enabled: bool) -> Any:
    def op(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
        u = _user(t, a)
        u.enabled = enabled
        t.log("users", u.id, "upd", props=frozenset({"accountEnabled"}))
        return {"id": u.id}

    return op


def _op_set_owner(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    d = _device(t, a)
    if "owner_id" not in a:
        raise DirectoryError("missing field 'owner_id' (null clears the owner)", "owner_id")
    owner_id = a["owner_id"]
    if owner_id is not None:
        if not isinstance(owner_id, str):
            raise DirectoryError("owner_id must be a string or null", "owner_id")
        owner = t.user_by_key(owner_id)
        if owner is None:
            raise DirectoryError("no such user", "owner_id")
        owner_id = owner.id
    # At most one registered owner (Get-MgDeviceRegisteredOwner: "Currently, there can be only one owner."):
    # setting replaces. registeredOwners is a navigation property, so devices/delta does not report it
    # (delta-query-overview.md: navigation properties are not tracked) — nothing is journaled.
    t._set_owner(d, owner_id)
    return {"id": d.id, "owner_id": owner_id}


def _op_add_mam(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    u = _user(t, a, "userId")
    data = {k: v for k, v in a.items() if k not in ("userId", "id")}
    m = MamRegistration(_arg(a, "id", required=False) or str(uuid.uuid4()), u.id,
                        _mam_defaults(data), t.new_ord())
    t.mam.add(m)
    return {"id": m.id, "object": m.props()}


def _mam_defaults(data: dict[str, Any]) -> dict[str, Any]:
    # Properties of managedAppRegistration (intune.md §4).
    base: dict[str, Any] = {"createdDateTime": "2026-01-01T00:00:00Z", "lastSyncDateTime": "2026-01-02T00:00:00Z",
            "applicationVersion": "1.0", "managementSdkVersion": "19.0", "platformVersion": "17.5",
            "deviceType": "iPhone", "deviceTag": None, "deviceName": "iPhone", "flaggedReasons": [],
            "appIdentifier": {"@odata.type": "#microsoft.graph.iosMobileAppIdentifier",
                              "bundleId": "com.microsoft.outlook"}, "version": "1"}
    base.update(data)
    return base


def _domain(t: Tenant) -> str:
    for u in t.users:
        return str(u.upn.split("@", 1)[1])
    return "contoso.example"


def _uuid_from(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "sim:" + "/".join(parts)))


def _op_set_intune_endpoints(w: World, t: Tenant, a: dict[str, Any]) -> dict[str, Any]:
    providers = _arg(a, "providers", list)
    if any(p not in INTUNE_PROVIDERS for p in providers) or len(set(providers)) != len(providers):
        raise DirectoryError(f"providers must be distinct names of {sorted(INTUNE_PROVIDERS)}", "providers")
    w.ensure_intune_sp(t, providers)
    return {"providers": providers}


_MUTATIONS: dict[str, Any] = {
    "add_member": _op_add_member, "remove_member": _op_remove_member, "nest_group": _op_nest_group,
    "unnest_group": _op_unnest_group, "delete_user": _op_delete_user, "delete_device": _op_delete_device,
    "delete_group": _op_delete_group, "change_os": _op_change_os, "rename_group": _op_rename_group,
    "add_device": _op_add_device, "add_user": _op_add_user, "add_group": _op_add_group,
    "disable_user": _op_set_enabled(False), "enable_user": _op_set_enabled(True), "set_owner": _op_set_owner,
    "add_mam_registration": _op_add_mam, "restore_user": _op_restore_user,
    "set_intune_endpoints": _op_set_intune_endpoints,
}
