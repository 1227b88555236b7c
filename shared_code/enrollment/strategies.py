"""How a full reconcile reads devices and their owners: candidate strategies, their cost, and the cheapest one.

Graph's documented limits decide the costs (reference/graph.md §5-6): a directory list pages up to 999 objects
without ``$expand`` but at most 100 with it, an expanded relationship holds at most 20 objects and takes no nested
``$select``; ``$batch`` holds 20 requests. RU prices: list ``/users`` 2 RU, ``/devices`` 1 RU, ``$select`` −1,
``$expand`` +1, floor 1 (graph.md §1). Strategies:

* ``devices_expand_owners`` — ``/devices?$expand=registeredOwners``: every device with its (single) owner,
  ceil(D/100) pages at 2 RU. Cheapest for small tenants.
* ``users_expand_owned`` — ``/devices?$select`` (ceil(D/999) pages, 1 RU) + ``/users?$select=id,accountEnabled
  &$expand=ownedDevices`` (ceil(U/100) pages, 2 RU) + per-user ``ownedDevices`` for users whose expansion hit the
  20-object cap, batched 20 per ``$batch``. Cheapest for large tenants with many devices per user.
* ``per_user_batch`` — ``/users/{id}/ownedDevices`` for each in-scope user, 20 per ``$batch`` (ceil(S/20)
  requests, S RU). Cheapest when the scope is tiny compared to the tenant; cannot report ownerless devices.

The seed connector called ``ownedDevices`` once per user: S requests (the baseline ``bench/`` measures).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared_code.domain.devices import DeviceRecord, device_from_graph, normalize_platforms, platform_matches
from shared_code.domain.scope import Scope
from shared_code.enrollment.reader import BATCH_SIZE, DirectoryReader

log = logging.getLogger("connector.enrollment")

EXPAND_PAGE = 100
LIST_PAGE = 999
EXPAND_CAP = 20
# One request costs a round trip; RU cost throttle budget. We weigh 5 RU like one request when comparing.
RU_PER_REQUEST_WEIGHT = 5.0

DEVICES_EXPAND = "devices_expand_owners"
USERS_EXPAND = "users_expand_owned"
PER_USER = "per_user_batch"


@dataclass(frozen=True)
class Shape:
    """What the estimate needs: users and devices in the tenant, users and direct devices in scope.

    ``capped_users``: users expected past the 20-device expand cap (known from the previous full reconcile).
    """

    users: int
    devices: int
    scope_users: int
    scope_devices: int = 0
    capped_users: int = 1


@dataclass(frozen=True)
class Cost:
    """Estimated cost of one strategy."""

    strategy: str
    requests: int
    resource_units: int

    @property
    def score(self) -> float:
        """Single figure used to compare strategies."""
        return self.requests + self.resource_units / RU_PER_REQUEST_WEIGHT

    def to_dict(self) -> dict[str, Any]:
        """Log/status form."""
        return {"strategy": self.strategy, "requests": self.requests, "resourceUnits": self.resource_units}


def _pages(n: int, size: int) -> int:
    return max(1, math.ceil(n / size))


def estimate(shape: Shape) -> list[Cost]:
    """Cost of each strategy for a tenant shape, cheapest first."""
    direct_batches = math.ceil(shape.scope_devices / BATCH_SIZE)
    costs = [
        Cost(DEVICES_EXPAND, _pages(shape.devices, EXPAND_PAGE), 2 * _pages(shape.devices, EXPAND_PAGE)),
        Cost(
            USERS_EXPAND,
            _pages(shape.users, EXPAND_PAGE) + _pages(shape.devices, LIST_PAGE)
            + math.ceil(shape.capped_users / BATCH_SIZE),
            2 * _pages(shape.users, EXPAND_PAGE) + _pages(shape.devices, LIST_PAGE) + shape.capped_users,
        ),
        Cost(
            PER_USER,
            math.ceil(shape.scope_users / BATCH_SIZE) + direct_batches,
            shape.scope_users + shape.scope_devices,
        ),
    ]
    return sorted(costs, key=lambda c: (c.score, c.requests))


def choose(shape: Shape) -> tuple[Cost, list[Cost]]:
    """The cheapest strategy and all estimates."""
    costs = estimate(shape)
    return costs[0], costs


@dataclass
class Inventory:
    """What a strategy found.

    Attributes:
        records: devices owned by in-scope users or directly in scope (any platform), with owner.
        seen: every device id in the tenant (None when the strategy does not list all devices).
        ownerless: ids of tenant devices in the platforms that have no registered owner (None: not observed).
        disabled: ids of disabled users among those seen (only when the strategy reads ``accountEnabled``).
        users_seen, devices_seen: tenant shape observed (for the next estimate).
        capped_users: users whose expansion hit the 20 cap.
    """

    records: dict[str, DeviceRecord] = field(default_factory=dict)
    seen: set[str] | None = None
    ownerless: list[str] | None = None
    disabled: set[str] | None = None
    users_seen: int | None = None
    devices_seen: int | None = None
    capped_users: int = 0


def _owner_of(obj: dict[str, Any]) -> str | None:
    owners = obj.get("registeredOwners") or []
    return str(owners[0]["id"]) if owners else None


async def devices_expand_owners(reader: DirectoryReader, scope: Scope, platforms: Iterable[str]) -> Inventory:
    """Run ``devices_expand_owners``; memory holds only in-scope records and id sets.

    Endpoint: ``GET /devices?$select=…&$expand=registeredOwners`` (Device.Read.All).

    Raises:
        PermissionMissingError, RetriableError, FatalError: from the reader.
    """
    plat = normalize_platforms(platforms)
    inv = Inventory(seen=set(), ownerless=[])
    assert inv.seen is not None and inv.ownerless is not None
    count = 0
    async for page in reader.devices_with_owners():
        for obj in page.get("value", ()):
            count += 1
            did = str(obj["id"])
            inv.seen.add(did)
            owner = _owner_of(obj)
            if owner is None and platform_matches(str(obj.get("operatingSystem") or ""), plat):
                inv.ownerless.append(did)
            if scope.may_contain(did, owner):
                inv.records[did] = device_from_graph(obj, owner)
    inv.devices_seen = count
    return inv


async def users_expand_owned(reader: DirectoryReader, scope: Scope, platforms: Iterable[str]) -> Inventory:
    """Run ``users_expand_owned``.

    Endpoints: ``GET /devices?$select=…&$top=999`` (Device.Read.All), ``GET /users?$select=id,accountEnabled
    &$expand=ownedDevices`` (User.Read.All), ``POST /$batch`` of ``/users/{id}/ownedDevices`` for capped users.

    Raises:
        PermissionMissingError, RetriableError, FatalError: from the reader.
    """
    plat = normalize_platforms(platforms)
    inv = Inventory(seen=set(), ownerless=[], disabled=set())
    assert inv.seen is not None and inv.ownerless is not None and inv.disabled is not None
    platform_ok: set[str] = set()
    direct: dict[str, dict[str, Any]] = {}
    count = 0
    async for page in reader.devices():
        for obj in page.get("value", ()):
            count += 1
            did = str(obj["id"])
            inv.seen.add(did)
            if platform_matches(str(obj.get("operatingSystem") or ""), plat):
                platform_ok.add(did)
            if did in scope.devices:
                direct[did] = obj
    inv.devices_seen = count
    owned: set[str] = set()
    capped: list[str] = []
    users = 0
    owner_of_direct: dict[str, str] = {}

    def take(uid: str, devices: Iterable[dict[str, Any]]) -> None:
        for dev in devices:
            did = str(dev["id"])
            owned.add(did)
            if uid in scope.users:
                inv.records[did] = device_from_graph(dev, uid)
            if did in direct:
                owner_of_direct[did] = uid

    async for page in reader.users_with_owned_devices():
        for user in page.get("value", ()):
            users += 1
            uid = str(user["id"])
            if user.get("accountEnabled") is False:
                inv.disabled.add(uid)
            devices = user.get("ownedDevices") or []
            if len(devices) >= EXPAND_CAP:
                capped.append(uid)  # the expansion may be cut at 20: read this user's list in full below
            take(uid, devices)
    if capped:
        for uid, devices in (await reader.owned_devices(capped)).items():
            take(uid, devices or ())
    for did, obj in direct.items():
        if did not in inv.records:
            inv.records[did] = device_from_graph(obj, owner_of_direct.get(did))
    inv.ownerless = sorted(platform_ok - owned)
    inv.users_seen = users
    inv.capped_users = len(capped)
    return inv


async def per_user_batch(reader: DirectoryReader, scope: Scope, platforms: Iterable[str]) -> Inventory:
    """Run ``per_user_batch``.

    Endpoints: ``POST /$batch`` of ``/users/{id}/ownedDevices`` (User.Read.All) and of
    ``/devices/{id}?$expand=registeredOwners`` for direct device members (Device.Read.All).

    Raises:
        PermissionMissingError, RetriableError, FatalError: from the reader.
    """
    inv = Inventory()
    for uid, devices in (await reader.owned_devices(sorted(scope.users))).items():
        for dev in devices or ():
            inv.records[str(dev["id"])] = device_from_graph(dev, uid)
    missing = [d for d in sorted(scope.devices) if d not in inv.records]
    for did, obj in (await reader.devices_by_id(missing)).items():
        if obj is not None:
            inv.records[did] = device_from_graph(obj, _owner_of(obj))
    return inv


RUNNERS = {DEVICES_EXPAND: devices_expand_owners, USERS_EXPAND: users_expand_owned, PER_USER: per_user_batch}
