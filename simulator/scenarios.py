"""Seeded, deterministic tenant generator: ``small``, ``M``, ``L``, ``XL``, ``scale`` and ``fleet`` mixes.

Every scenario carries the awkward cases a connector meets in real tenants: nested enrollment subgroups (depth ≤ 4),
a membership cycle inside an enrollment tree and another outside it, a group name with an apostrophe, two groups
sharing one display name, devices without a registered owner, users owning more than 20 devices (past Graph's
``$expand`` cap of 20, graph.md §6), disabled users, org contacts and service principals as members, direct device
members, and a mix of iOS/iPadOS/Android/Windows/macOS devices. Same (scenario, seed) → same objects and ids.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

from simulator.directory import (
    Device,
    DirectoryError,
    Group,
    MamRegistration,
    OrgContact,
    ServicePrincipal,
    Tenant,
    User,
    World,
    _mam_defaults,
)


@dataclass(frozen=True)
class Size:
    users: int
    devices: int
    subgroups: int
    depth: int
    roots: tuple[str, ...]
    scope_fraction: float


APOSTROPHE_GROUP = "O'Brien Field Team"
DUPLICATE_GROUP = "Field Sales"

SIZES: dict[str, Size] = {
    "small": Size(40, 70, 4, 2, ("MTD Enrollment", APOSTROPHE_GROUP), 0.5),
    "M": Size(400, 700, 8, 3, ("MTD Enrollment", APOSTROPHE_GROUP), 0.4),
    "L": Size(20_000, 35_000, 20, 4, ("MTD Enrollment", "MTD Pilot Users", APOSTROPHE_GROUP), 0.34),
    "XL": Size(100_000, 180_000, 40, 4, ("MTD Enrollment", "MTD Pilot Users", APOSTROPHE_GROUP), 0.34),
    # Issue 9's tenant: one enrollment group of ≈ 20,000 users in 25 subgroups (≈ 23,000 mobile devices in scope)
    # inside a 30,000-user / 50,000-device directory; most of the tenant is outside scope.
    "scale": Size(30_000, 50_000, 25, 4, ("MTD Enrollment",), 0.667),
}
SCENARIOS = (*SIZES, "fleet")

# Platform mix (operatingSystem values as Entra reports them for registered devices).
_OS = ("iOS", "Android", "iPadOS", "Windows", "macOS")
_OS_WEIGHTS = (35, 30, 8, 20, 7)
_OS_VERSIONS = {"iOS": ("16.7.8", "17.5.1", "17.6", "18.0"), "iPadOS": ("17.5", "18.0"),
                "Android": ("12", "13", "14"), "Windows": ("10.0.19045.4529", "10.0.22631.3880"),
                "macOS": ("14.5", "15.0")}
_MODELS = {"iOS": "iPhone", "iPadOS": "iPad", "Android": "Pixel", "Windows": "DESKTOP", "macOS": "MacBook"}
_FIRST = ("Ada", "Ben", "Chloe", "Dan", "Eve", "Finn", "Gia", "Hugo", "Ines", "Jon", "Kai", "Lea", "Max", "Nora",
          "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Xena", "Yuri", "Zoe")
_LAST = ("Smith", "Jones", "Garcia", "Miller", "Davis", "Lopez", "Wilson", "Moore", "Taylor", "Clark", "Lewis",
         "Young", "King", "Wright", "Hill", "Green", "Baker", "Adams", "Nelson", "Carter", "O'Neil")


def fleet_plan(count: int, seed: int) -> list[tuple[str, int]]:
    """Scenario and seed for each tenant of a fleet: mostly ``small``, every fifth ``M``."""
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 2000:
        raise DirectoryError("count must be an integer 1..2000", "count")
    return [("M" if i % 5 == 4 else "small", seed * 10_007 + i) for i in range(count)]


def add_tenant(world: World, scenario: str, seed: int, tenant_id: str | None = None, *,
               with_intune_sp: bool = True) -> Tenant:
    """Generate a tenant of ``scenario`` and install it in ``world``.

    Raises:
        DirectoryError: a bad scenario or seed, a tenant id that is not a GUID or already taken.
    """
    if tenant_id is not None:
        try:
            tenant_id = str(uuid.UUID(tenant_id))
        except (ValueError, AttributeError, TypeError):
            raise DirectoryError("tenant_id must be a GUID", "tenant_id") from None
        if tenant_id in world.tenants:
            raise DirectoryError("tenant already exists", "tenant_id")
    return world.install(build(scenario, seed, tenant_id), with_intune_sp=with_intune_sp)


def add_fleet(world: World, count: int, seed: int) -> list[Tenant]:
    """A fleet of generated tenants (:func:`fleet_plan`) installed in ``world``."""
    return [add_tenant(world, scenario, s) for scenario, s in fleet_plan(count, seed)]


def build(scenario: str, seed: int, tenant_id: str | None = None) -> Tenant:
    """Generate one tenant. Raises DirectoryError for an unknown scenario or bad seed."""
    if scenario not in SIZES:
        raise DirectoryError(f"unknown scenario {scenario!r}; one of {sorted(SIZES)} (fleet via count)", "scenario")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise DirectoryError("seed must be an integer", "seed")
    return _Builder(scenario, SIZES[scenario], seed, tenant_id).run()


class _Builder:
    def __init__(self, scenario: str, size: Size, seed: int, tenant_id: str | None) -> None:
        self.rng = random.Random(f"{scenario}:{seed}")
        self.size = size
        tid = tenant_id or str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self.t = Tenant(tenant_id=tid, scenario=scenario, seed=seed)
        self.domain = f"{scenario.lower()}{seed}.contoso.example"

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def group(self, name: str, security: bool = True) -> Group:
        g = Group(self.uid(), name, security, self.t.new_ord())
        self.t.groups.add(g)
        return g

    def run(self) -> Tenant:
        t, rng, size = self.t, self.rng, self.size
        # ---- users ----------------------------------------------------------------------------------------------
        users: list[User] = []
        nf, nl = len(_FIRST), len(_LAST)
        for i in range(size.users):
            first, last = _FIRST[i % nf], _LAST[(i // nf) % nl]
            upn = f"{first.lower()}.{last.lower().replace(chr(39), '')}{i}@{self.domain}"
            u = User(self.uid(), upn, f"{first} {last} {i}", rng.random() >= 0.02, upn, t.new_ord())
            users.append(u)
            t.users.add(u)
            t.upn_index[upn.casefold()] = u.id
        if users and all(u.enabled for u in users):
            users[-1].enabled = False  # at least one disabled user in every tenant

        # ---- enrollment trees: roots + nested subgroups (depth ≤ size.depth) -------------------------------------
        roots = [self.group(name) for name in size.roots]
        if APOSTROPHE_GROUP not in size.roots:
            self.group(APOSTROPHE_GROUP)  # the awkward name exists in every tenant, in scope or not
        t.enrollment_groups = list(size.roots)
        nodes: list[tuple[Group, int]] = [(r, 0) for r in roots]
        subgroups: list[tuple[Group, int]] = []
        for i in range(size.subgroups):
            parents = [n for n in nodes if n[1] < size.depth]
            parent, depth = parents[rng.randrange(len(parents))] if i >= len(roots) else nodes[i]
            sg = self.group(f"{parent.display_name} / Team {i + 1}")
            t._link(parent, sg.id, "group")
            nodes.append((sg, depth + 1))
            subgroups.append((sg, depth + 1))
        # A membership cycle inside the first enrollment tree: its deepest subgroup contains a shallower one.
        tree0 = [n for n in subgroups if self._under(roots[0], n[0])]
        if tree0:
            deepest = max(tree0, key=lambda n: n[1])[0]
            shallow = min(tree0, key=lambda n: n[1])[0]
            t._link(deepest, (shallow if deepest is not shallow else roots[0]).id, "group")

        # ---- scope: about scope_fraction of users in one node, some in two -------------------------------------
        node_groups = [n[0] for n in nodes]
        for u in users:
            if rng.random() < size.scope_fraction:
                t._link(node_groups[rng.randrange(len(node_groups))], u.id, "user")
                if rng.random() < 0.05:
                    t._link(node_groups[rng.randrange(len(node_groups))], u.id, "user")

        # ---- other groups --------------------------------------------------------------------------------------
        n = len(users)
        dup_a, dup_b = self.group(DUPLICATE_GROUP), self.group(DUPLICATE_GROUP)
        all_staff = self.group("All Staff")
        contractors = self.group("Contractors")
        device_pilot = self.group("Device Pilot")
        cyc_a, cyc_b = self.group("Cycle A"), self.group("Cycle B")
        t._link(cyc_a, cyc_b.id, "group")
        t._link(cyc_b, cyc_a.id, "group")
        console_admins, console_readers = self.group("MTD Console Admins"), self.group("MTD Console Readers")
        self.group("Marketing (M365)", security=False)
        for i, u in enumerate(users):
            if i % 7 == 0:
                t._link(all_staff, u.id, "user")
        for k in range(min(n, 6)):
            t._link(dup_a if k % 2 else dup_b, users[(k * 13) % n].id, "user")
        t._link(cyc_a, users[0].id, "user")
        t._link(all_staff, contractors.id, "group")  # nested non-enrollment group
        if n:
            t._link(console_admins, users[0].id, "user")
            t._link(console_readers, users[1 % n].id, "user")
            t._link(console_readers, console_admins.id, "group")

        # ---- contacts and service principals (as members) ------------------------------------------------------
        for i in range(max(3, n // 50)):
            c = OrgContact(self.uid(), f"Vendor Contact {i}", f"contact{i}@partner.example", t.new_ord())
            t.contacts.add(c)
            t._link(contractors, c.id, "orgContact")
            if i == 0:
                t._link(roots[0], c.id, "orgContact")  # non-user member inside an enrollment group
        for i, name in enumerate(("Payroll Sync", "Backup Agent", "HR Connector")):
            sp = ServicePrincipal(self.uid(), self.uid(), name, t.new_ord())
            t.service_principals.add(sp)
            if i == 0:
                t._link(roots[-1], sp.id, "servicePrincipal")
            t._link(contractors, sp.id, "servicePrincipal")
        for k in range(min(n, 4)):
            t._link(contractors, users[(k * 31 + 5) % n].id, "user")

        # ---- devices -------------------------------------------------------------------------------------------
        self._devices(users)
        devs = t.devices.items
        for d in devs[: min(5, len(devs))]:
            t._link(device_pilot, d.id, "device")
        if len(devs) > 7:
            t._link(roots[0], devs[6].id, "device")  # direct device member of an enrollment group
            t._link(roots[0], devs[7].id, "device")

        # ---- MAM registrations for a slice of mobile owners ----------------------------------------------------
        for d in devs[:: max(1, len(devs) // max(1, n // 10))]:
            if d.owner and d.os in ("iOS", "Android", "iPadOS"):
                ios = d.os != "Android"
                ident = ({"@odata.type": "#microsoft.graph.iosMobileAppIdentifier",
                          "bundleId": "com.microsoft.Office.Outlook"} if ios else
                         {"@odata.type": "#microsoft.graph.androidMobileAppIdentifier",
                          "packageId": "com.microsoft.office.outlook"})
                data = _mam_defaults({
                    "@odata.type": "#microsoft.graph.iosManagedAppRegistration" if ios
                    else "#microsoft.graph.androidManagedAppRegistration",
                    "deviceName": d.display_name, "deviceType": _MODELS[d.os], "platformVersion": d.os_version,
                    "deviceTag": d.device_id, "appIdentifier": ident})
                t.mam.add(MamRegistration(self.uid(), d.owner, data, t.new_ord()))
        return t

    def _under(self, root: Group, g: Group) -> bool:
        return g.id in self.t.transitive_members(root.id)

    def _devices(self, users: list[User]) -> None:
        t, rng, size = self.t, self.rng, self.size
        n = len(users)
        dates = [f"2026-{m:02d}-{d:02d}T{h:02d}:15:00Z" for m in range(7, 12) for d in range(1, 29) for h in (8, 17)]
        heavy = max(2, n // 5000)  # users with more than 20 devices (graph.md §6: $expand returns at most 20)
        owners: list[User | None] = []
        for k in range(heavy):
            owners.extend([users[(k * 97 + 3) % n]] * (21 + rng.randrange(10)))
        remaining = size.devices - len(owners)
        choice = rng.random
        randrange = rng.randrange
        for _ in range(max(0, remaining)):
            owners.append(None if choice() < 0.03 else users[randrange(n)])
        os_pick = rng.choices(_OS, weights=_OS_WEIGHTS, k=len(owners))
        for i, owner in enumerate(owners[: size.devices]):
            os_name = os_pick[i]
            mobile = os_name in ("iOS", "Android", "iPadOS")
            trust = "Workplace" if mobile or os_name == "macOS" else ("AzureAd", "ServerAd", "Workplace")[i % 3]
            managed = choice() < (0.7 if mobile else 0.5)
            vers = _OS_VERSIONS[os_name]
            d = Device(self.uid(), self.uid(), f"{_MODELS[os_name]}-{i:06d}", os_name, vers[i % len(vers)], trust,
                       managed, managed and choice() < 0.9, choice() >= 0.01, dates[i % len(dates)], None,
                       t.new_ord())
            t.devices.add(d)
            t.device_id_index[d.device_id] = d.id
            if owner is not None:
                t._set_owner(d, owner.id)
                if i % 50 == 0:  # a second registered user that is not the owner
                    other = users[randrange(n)]
                    if other.id != owner.id:
                        d.registered_users.append(other.id)


def describe(tenant: Tenant) -> dict[str, Any]:
    """Facts tests check about a generated tenant's shape."""
    over20 = [uid for uid, ds in tenant.owned.items() if len(ds) > 20]
    names: dict[str, int] = {}
    for g in tenant.groups:
        names[g.display_name] = names.get(g.display_name, 0) + 1
    return {"users_over_20_devices": over20, "duplicate_names": [k for k, v in names.items() if v > 1],
            "apostrophe_groups": [k for k in names if "'" in k]}
