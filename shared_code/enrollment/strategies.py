"""How a full reconcile reads devices and their owners: candidate strategies, their cost, and the cheapest one.

Graph's documented limits decide the costs (reference/graph.md §5-6): a directory list pages up to 999 objects
without ``$expand`` but at most 100 with it, an expanded relationship holds at most 20 objects and takes no nested
``$select``; ``$batch`` holds 20 requests. RU prices: list ``/users`` 2 RU, ``/devices`` 1 RU, ``$select`` −1,
``$expand`` +1, floor 1 (graph.md §1). Strategies:

* ``devices_expand_owners`` — ``/devices?$expand=registeredOwners``: every device with its (single) owner,
  ceil(D/100) pages at 2 RU. Cheapest for small tenants.
* ``users_expand_owned`` — ``/users?$select=id,accountEnabled&$expand=ownedDevices`` (ceil(U/100) pages, 2 RU; the
  expanded devices carry their properties) + per-user ``ownedDevices`` for users whose expansion hit the 20-object
  cap, batched 20 per ``$batch`` + direct device members by id (``$batch``). Cheapest for large tenants with many
  devices per user; does not observe ownerless devices (that needs the whole ``/devices`` list).
* ``per_user_batch`` — ``/users/{id}/ownedDevices`` for each in-scope user, 20 per ``$batch`` (ceil(S/20)
  requests, S RU). Cheapest when the scope is tiny compared to the tenant; cannot report ownerless devices.

The seed connector called ``ownedDevices`` once per user: S requests (the baseline ``bench/`` measures). The reads
themselves run in bounded, resumable steps in full_reconcile.py.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from shared_code.enrollment.reader import BATCH_SIZE

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
            _pages(shape.users, EXPAND_PAGE) + math.ceil(shape.capped_users / BATCH_SIZE) + direct_batches,
            2 * _pages(shape.users, EXPAND_PAGE) + shape.capped_users + shape.scope_devices,
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
