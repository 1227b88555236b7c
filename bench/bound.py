"""The page lower bound of a full reconcile: what a CORRECT reconcile must read, priced by Graph's documented table.

A full reconcile has to learn (1) which users are in scope — the configured groups by name, then the direct members
of every group in the enrollment trees (nested groups included), and (2) the devices those users own, with owner and
platform. It also needs cursors for the incremental polls that follow. It does **not** need the tenant's other
groups or their members: ``groups/delta?$deltatoken=latest`` returns a groups cursor without data
(https://learn.microsoft.com/graph/delta-query-overview#use-delta-query-to-track-changes-from-now), and a group
nested into scope later arrives through ``members@delta`` and is walked then. So the bound is:

* one ``GET /groups?$filter=displayName eq '…'`` per configured name;
* one ``GET /groups/delta?$deltatoken=latest`` (the groups cursor) and ``ceil(direct members / 999)`` pages of
  ``GET /groups/{id}/members?$select=id&$top=999`` for every group in the enrollment trees (at least one page each;
  999 is the documented ``$top`` maximum for directory collections) — or, when that is fewer requests (small
  tenants), the whole ``groups/delta?$select=displayName,members`` round as the service pages it;
* the owners of devices that are direct members of those groups: one ``$batch`` per 20 such devices;
* devices + owners by the cheapest of three plans (graph.md §6: ``$expand`` pages hold ≤ 100 objects, an expanded
  collection holds ≤ 20 items): ``/devices?$expand=registeredOwners`` (every device, 100 per page); ``/users?$expand=
  ownedDevices`` (every user, 100 per page) + a ``$batch`` per 20 in-scope users owning more than 20 devices; or one
  ``$batch`` of ``/users/{id}/ownedDevices`` per 20 in-scope users;
* the first page of the ``devices/delta`` round (devices have no ``$deltatoken=latest``; the round itself can be
  spread over later polls, so only its first page is owed by the reconcile).

RU per request come from ``simulator/pricing.py`` (the documented identity-and-access price list; a ``$batch``
costs the sum of its inner requests). The bound's plan is the one with the fewest requests; its RU is reported
with it, and the RU of every plan is kept in the results (``plans``).
"""

from __future__ import annotations

import math
import ssl
from collections import Counter
from typing import Any

import httpx

from simulator.pricing import price

MEMBERS_PAGE = 999  # documented $top maximum for directory collections
EXPAND_PAGE = 100  # documented page size with $expand (graph.md §6)
EXPAND_CAP = 20  # items per expanded collection (graph.md §6)
BATCH = 20  # requests per $batch (graph.md §3)
ALL_OS = "iOS,iPadOS,Android,Windows,macOS"


def scope_shape(info: dict[str, Any], tenant_id: str, groups: list[str], platforms: list[str]) -> dict[str, Any]:
    """Walk the enrollment trees once with a bare client (before the measured run; counters are reset after).

    Returns the groups in scope with their direct member counts, the in-scope users, direct device members, and
    from the simulator's ground truth the in-scope users' device counts.
    """
    verify = ssl.create_default_context(cafile=info["ca_path"])
    with httpx.Client(timeout=120, verify=verify) as http:
        token = http.post(
            f"{info['authority']}/{tenant_id}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": info["connector"]["client_id"],
                  "client_secret": info["connector"]["client_secret"],
                  "scope": "https://graph.microsoft.com/.default"},
        ).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        v1 = f"{info['graph_base_url']}/v1.0"
        roots: list[str] = []
        for name in groups:
            quoted = name.replace("'", "''")
            found = http.get(f"{v1}/groups", params={"$filter": f"displayName eq '{quoted}'", "$select": "id"})
            ids = [g["id"] for g in found.json()["value"]]
            if len(ids) == 1:
                roots.extend(ids)
        members: dict[str, int] = {}
        users: set[str] = set()
        devices: set[str] = set()
        queue = list(dict.fromkeys(roots))
        while queue:
            gid = queue.pop()
            if gid in members:
                continue
            members[gid] = 0
            url: str | None = f"{v1}/groups/{gid}/members?$select=id&$top={MEMBERS_PAGE}"
            while url:
                page = http.get(url).json()
                for m in page["value"]:
                    members[gid] += 1
                    kind = m.get("@odata.type", "")
                    if kind.endswith(".user"):
                        users.add(m["id"])
                    elif kind.endswith(".group") and m["id"] not in members:
                        queue.append(m["id"])
                    elif kind.endswith(".device"):
                        devices.add(m["id"])
                url = page.get("@odata.nextLink")
        # The whole groups/delta round (every group with its members), as the service pages it: for a small tenant
        # one round can be cheaper than walking each group in scope.
        round_pages = 0
        url = f"{v1}/groups/delta?$select=displayName,members"
        while url:
            round_pages += 1
            page = http.get(url).json()
            url = page.get("@odata.nextLink")
        truth = http.get(f"{info['base_url']}/_sim/tenants/{tenant_id}/truth",
                         params=[*(("groups", g) for g in groups), ("platforms", ALL_OS)]).json()
    owned = Counter(d["ownerId"] for d in truth["devices"] if d.get("via") == "owner")
    return {"names": len(groups), "group_members": members, "groups_round_pages": round_pages,
            "scope_users": len(users),
            "direct_devices": len(devices), "capped_users": sum(1 for n in owned.values() if n > EXPAND_CAP),
            "platforms": platforms}


def lower_bound(shape: dict[str, Any], users: int, devices: int) -> dict[str, Any]:
    """Requests and RU of the cheapest correct full reconcile (see the module docstring)."""
    sel = {"$select": "id"}
    member_pages = sum(max(1, math.ceil(n / MEMBERS_PAGE)) for n in shape["group_members"].values())
    walk = (1 + member_pages, price("GET", "/groups/delta", {"$deltatoken": "latest"})
            + member_pages * price("GET", "/groups/x/members", {**sel, "$top": str(MEMBERS_PAGE)}))
    rounds = shape["groups_round_pages"]
    whole_round = (rounds, rounds * price("GET", "/groups/delta", {"$select": "displayName,members"}))
    membership = min(walk, whole_round)
    fixed_req = shape["names"] + membership[0] + math.ceil(shape["direct_devices"] / BATCH) + 1
    fixed_ru = (
        shape["names"] * price("GET", "/groups", {"$filter": "x", "$select": "id"})
        + membership[1]
        + shape["direct_devices"] * price("GET", "/devices/x/registeredOwners", sel)
        + price("GET", "/devices/delta", sel)
    )
    owned_ru = price("GET", "/users/x/ownedDevices", sel)
    capped = shape["capped_users"]
    scope = shape["scope_users"]
    plans = {
        "devices_expand_owners": (math.ceil(devices / EXPAND_PAGE),
                                  math.ceil(devices / EXPAND_PAGE)
                                  * price("GET", "/devices", {**sel, "$expand": "registeredOwners"})),
        "users_expand_owned": (math.ceil(users / EXPAND_PAGE) + math.ceil(capped / BATCH),
                               math.ceil(users / EXPAND_PAGE) * price("GET", "/users", {**sel, "$expand": "x"})
                               + capped * owned_ru),
        "per_user_batch": (math.ceil(scope / BATCH), scope * owned_ru),
    }
    best = min(plans, key=lambda k: (plans[k][0], plans[k][1]))
    return {
        "requests": fixed_req + plans[best][0], "ru": fixed_ru + plans[best][1], "plan": best,
        "fixed": {"requests": fixed_req, "ru": fixed_ru, "member_pages": member_pages,
                  "groups_in_scope": len(shape["group_members"]), "groups_round_pages": rounds,
                  "membership": "member walks" if membership == walk else "whole groups/delta round"},
        "plans": {k: {"requests": fixed_req + r, "ru": fixed_ru + u} for k, (r, u) in plans.items()},
    }
