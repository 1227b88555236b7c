"""The seed connector's enrollment read, reimplemented as the baseline to beat (issue 3).

The seed's permission table (seed/000_…txt) describes it: find enrollment group ids by name (``GET /groups``),
read group members to find users and subgroups (``GET /groups/{id}/members``), then "retrieve a single user to
obtain their owned devices" — ``GET /users/{id}/ownedDevices`` once per user. We give the baseline every benefit:
``$top=999`` member pages and no per-device ``GET /devices/{id}`` (which the seed also lists).
"""

from __future__ import annotations

from typing import Any

from shared_code.adapters.graph import GraphClient
from shared_code.domain.scope import odata_string


async def seed_strategy(graph: GraphClient, group_names: list[str]) -> dict[str, Any]:
    """Run the per-user ``ownedDevices`` strategy; returns owners → device ids and the user count."""
    roots: list[str] = []
    for name in group_names:
        params = {"$filter": f"displayName eq {odata_string(name)}", "$select": "id"}
        found = [g["id"] async for page in graph.pages("/groups", permission="GroupMember.Read.All", params=params)
                 for g in page["value"]]
        if len(found) == 1:
            roots.extend(found)
    seen = set(roots)
    queue = list(roots)
    users: set[str] = set()
    while queue:
        gid = queue.pop()
        async for page in graph.pages(f"/groups/{gid}/members", permission="GroupMember.Read.All",
                                      params={"$select": "id", "$top": "999"}):
            for m in page["value"]:
                kind = m.get("@odata.type", "")
                if kind.endswith(".user"):
                    users.add(m["id"])
                elif kind.endswith(".group") and m["id"] not in seen:
                    seen.add(m["id"])
                    queue.append(m["id"])
    devices: dict[str, list[str]] = {}
    for uid in sorted(users):
        owned: list[str] = []
        async for page in graph.pages(f"/users/{uid}/ownedDevices", permission="User.Read.All"):
            owned.extend(d["id"] for d in page["value"])
        devices[uid] = owned
    return {"users": len(users), "devices": devices}
