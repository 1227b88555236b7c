"""Resource-unit (RU) price of a Graph request, per Graph's identity-and-access throttling table.

Source for every number here: https://learn.microsoft.com/graph/throttling-limits#identity-and-access-service-limits
(`includes/throttling-identity-and-access.md`; summarised in graph.md §1). Requests outside the identity-and-access
resources (Intune ``deviceAppManagement``, the ``$batch`` envelope whose inner requests are priced one by one) are
not RU-metered: ``price`` returns 0 for them and callers must not charge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

_COLLECTIONS = {"users", "groups", "devices", "serviceprincipals", "applications", "directoryobjects", "contacts",
                "managedappregistrations", "endpoints", "owneddevices", "registeredowners", "members",
                "transitivemembers", "memberof", "transitivememberof", "registeredusers"}
_KEYWORDS = {"delta", "$count", "$ref", "getbyids", "getobjectsbyid"}

# POST actions that are reads with their own price (not writes).
_READ_ACTIONS = {
    "getbyids": 3, "getobjectsbyid": 3,                                   # POST /directoryObjects/getByIds
    "ismemberof": 4, "checkmembergroups": 4, "checkmemberobjects": 4,     # POST isMemberOf, checkMember*
    "getmembergroups": 2, "getmemberobjects": 2,                          # POST getMember*
}
# GET on these trailing segments of me/… or users/{id}/… (costs for me/… also apply to users/{id|upn}/…).
_GET_TAIL_COSTS = {"memberof": 2, "transitivememberof": 2, "ownedobjects": 2, "licensedetails": 2}


def _segments(path: str) -> list[str]:
    p = unquote(path.split("?", 1)[0]).strip("/")
    segs = [s for s in p.split("/") if s]
    if segs and segs[0].lower() in ("v1.0", "beta"):
        segs = segs[1:]
    # Strip OData casts (".../microsoft.graph.user") and key-as-parens forms for matching purposes.
    out = []
    for s in segs:
        if s.lower().startswith("microsoft.graph."):
            continue
        out.append(re.sub(r"\(.*\)$", "", s))
    return out


def _query_keys(query: Any) -> dict[str, str]:
    if query is None:
        return {}
    if isinstance(query, str):
        return {k.lower(): v for k, v in parse_qsl(query.lstrip("?"), keep_blank_values=True)}
    if isinstance(query, Mapping):
        return {str(k).lower(): str(v) for k, v in query.items()}
    return {}


def is_write(method: str, path: str) -> bool:
    """True for requests Graph counts against the write quotas (POST/PATCH/PUT/DELETE except read actions)."""
    m = method.upper()
    if m in ("GET", "HEAD", "OPTIONS"):
        return False
    segs = _segments(path)
    if not segs or segs[0] == "$batch":
        return False
    return segs[-1].lower() not in _READ_ACTIONS


def price(method: str, path: str, query: Any = None) -> int:
    """RU cost of one request (0 = not an identity-and-access request, do not charge)."""
    segs = _segments(path)
    if not segs:
        return 1
    if segs[0].lower() in ("$batch", "deviceappmanagement", "devicemanagement", "$metadata"):
        return 0
    m = method.upper()
    lows = [s.lower() for s in segs]
    tail = lows[-1]
    if m == "POST" and tail in _READ_ACTIONS:
        base = _READ_ACTIONS[tail]
    elif m in ("POST", "PATCH", "PUT", "DELETE"):
        base = 1  # 1 RU + 1 write (is_write)
    elif lows == ["users"] or lows == ["applications"]:
        base = 2  # GET /users, GET /applications
    elif len(lows) >= 3 and lows[0] == "groups" and lows[2] == "members":
        base = 3  # GET /groups/{id}/members
    elif len(lows) >= 3 and lows[0] == "groups" and lows[2] == "transitivemembers":
        base = 5  # GET /groups/{id}/transitiveMembers
    elif tail in _GET_TAIL_COSTS or (tail == "$count" and len(lows) > 1 and lows[-2] in _GET_TAIL_COSTS):
        base = _GET_TAIL_COSTS[tail if tail in _GET_TAIL_COSTS else lows[-2]]
    elif len(lows) >= 3 and lows[0] == "serviceprincipals" and lows[2] in ("approleassignments",
                                                                          "oauth2permissiongrants"):
        base = 2
    else:
        base = 1  # anything else, including /devices, /users/{id}, delta, /servicePrincipals/{id}/endpoints
    q = _query_keys(query)
    cost = base
    if "$select" in q:
        cost -= 1
    if "$expand" in q:
        cost += 1
    top = q.get("$top")
    if top is not None:
        try:
            if int(top) < 20:
                cost -= 1
        except ValueError:
            pass
    return max(1, cost)


def route_label(path: str) -> str:
    """Counter label for a Graph path: ids and keys replaced by ``{id}``, e.g. ``/v1.0/groups/{id}/members``."""
    out: list[str] = []
    prev = ""
    for s in _segments(path):
        if prev in _COLLECTIONS and s.lower() not in _KEYWORDS:
            out.append("{id}")
        else:
            out.append(s)
        prev = s.lower()
    return "/v1.0/" + "/".join(out)
