"""Injected faults: latency, forced 429 storms, 5xx, connection resets, truncated bodies, token outages, delta expiry,
redirects, non-JSON bodies and glitched membership rounds.

`redirect` answers a 3xx whose `Location` names another host (`https://redirected.invalid` + the same path): what a
client that follows redirects would send its bearer token to. RFC 9110 §15.4 lets any server answer 3xx; kiota's
RedirectHandler follows them by default. `html` answers an HTML page (default status 200), as a proxy or front door
between the client and the service may (Azure Front Door's error pages are HTML): a client must not crash decoding it.

Faults are added through `POST /_sim/faults` and consumed one request at a time (count), matched on tenant, path
prefix and method. The core middleware applies the transport kinds; the Graph delta handler consumes the rest
(`delta_expiry` on a token, and the glitches of a *new* `groups/delta` round: `round_empty` — the round answers no
groups and an intact deltaLink; `round_truncated` — the page is cut in half and ends the round with a deltaLink;
`members_short` — every group record of the page loses the second half of its `members@delta`, as member pages
that ended early). The same three on the first page of `/groups/{id}/members` answer no members, or the first
half of them without a nextLink. Graph is an eventually consistent, distributed directory (a read can miss what a
replica has not seen yet:
https://devblogs.microsoft.com/identity/designing-for-eventual-consistency-for-microsoft-entra/), and the connector
must never turn such a read into deactivations (issue 10 §2).
"""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
KINDS = ("latency", "throttle", "status", "reset", "truncate", "token_outage", "delta_expiry", "redirect", "html",
         "round_empty", "round_truncated", "members_short")
_STATUS_RANGES = {"redirect": (301, 308, 302), "html": (200, 599, 200)}


class FaultError(ValueError):
    """Bad fault definition; carries the offending field."""

    def __init__(self, message: str, field_name: str) -> None:
        super().__init__(message)
        self.field = field_name


@dataclass
class Fault:
    id: int
    kind: str
    tenant: str | None = None
    path_prefix: str | None = None
    method: str | None = None
    remaining: int | None = 1  # None = until cleared
    status: int = 503
    retry_after: float | None = None
    latency_ms: int = 0
    hits: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind,
            "match": {"tenant": self.tenant, "path_prefix": self.path_prefix, "method": self.method},
            "remaining": self.remaining, "status": self.status, "retry_after": self.retry_after,
            "latency_ms": self.latency_ms, "hits": self.hits,
        }


def request_tenant(request: web.Request) -> str | None:
    """Tenant of a request: the token's tid if authenticated, else the tenant segment of the path."""
    principal = request.get("principal")
    if principal is not None:
        return str(principal.tenant_id)
    parts = request.path.split("/")
    candidate = parts[2] if len(parts) > 2 and parts[1] == "intune" else parts[1] if len(parts) > 2 else ""
    # Only GUID tenant segments count (keeps counters free of junk paths; "common" etc. are not tenants).
    return candidate.lower() if _GUID.fullmatch(candidate) else None


class Faults:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, spec: Any) -> Fault:
        """Validate an admin fault spec and store it."""
        if not isinstance(spec, dict):
            raise FaultError("body must be a JSON object", "body")
        unknown = set(spec) - {"kind", "match", "count", "status", "retry_after", "latency_ms", "unlimited"}
        if unknown:
            raise FaultError(f"unknown field(s): {sorted(unknown)}", sorted(unknown)[0])
        kind = spec.get("kind")
        if kind not in KINDS:
            raise FaultError(f"kind must be one of {list(KINDS)}", "kind")
        match = spec.get("match", {}) or {}
        if not isinstance(match, dict) or set(match) - {"tenant", "path_prefix", "method"}:
            raise FaultError("match must be an object with tenant, path_prefix, method", "match")
        for k, v in match.items():
            if v is not None and not isinstance(v, str):
                raise FaultError(f"match.{k} must be a string", f"match.{k}")
        count = spec.get("count", 1)
        unlimited = spec.get("unlimited", False)
        if not isinstance(unlimited, bool):
            raise FaultError("unlimited must be a boolean", "unlimited")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
            raise FaultError("count must be an integer >= 1", "count")
        low, high, default_status = _STATUS_RANGES.get(kind, (400, 599, 503))
        status = spec.get("status", default_status)
        if not isinstance(status, int) or isinstance(status, bool) or not low <= status <= high:
            raise FaultError(f"status must be an integer {low}..{high}", "status")
        retry_after = spec.get("retry_after")
        if retry_after is not None and (
            not isinstance(retry_after, int | float) or isinstance(retry_after, bool) or not 0 <= retry_after <= 3600
        ):
            raise FaultError("retry_after must be a number 0..3600", "retry_after")
        latency_ms = spec.get("latency_ms", 0)
        if not isinstance(latency_ms, int) or isinstance(latency_ms, bool) or not 0 <= latency_ms <= 60_000:
            raise FaultError("latency_ms must be an integer 0..60000", "latency_ms")
        if kind == "latency" and latency_ms == 0:
            raise FaultError("latency needs latency_ms > 0", "latency_ms")
        if kind == "throttle" and retry_after is None and "retry_after" not in spec:
            retry_after = 1.0  # an explicit null sends the 429 without Retry-After
        with self._lock:
            f = Fault(
                id=next(self._ids), kind=kind, tenant=match.get("tenant"), path_prefix=match.get("path_prefix"),
                method=(match.get("method") or None) and str(match.get("method")).upper(),
                remaining=None if (unlimited or count is None) else count,
                status=status, retry_after=float(retry_after) if retry_after is not None else None,
                latency_ms=latency_ms,
            )
            self._faults.append(f)
        return f

    def clear(self) -> int:
        with self._lock:
            n = len(self._faults)
            self._faults.clear()
            return n

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_dict() for f in self._faults]

    def _matches(self, f: Fault, request: web.Request) -> bool:
        if f.method and request.method.upper() != f.method:
            return False
        if f.path_prefix and not request.path.startswith(f.path_prefix):
            return False
        return not (f.tenant and request_tenant(request) != f.tenant)

    def consume(self, kind: str, request: web.Request) -> Fault | None:
        """Return and use up one matching fault of this kind, or None."""
        if not self._faults:
            return None
        with self._lock:
            for f in self._faults:
                if f.kind == kind and self._matches(f, request):
                    f.hits += 1
                    if f.remaining is not None:
                        f.remaining -= 1
                        if f.remaining <= 0:
                            self._faults.remove(f)
                    return f
        return None

    def consume_any(self, kinds: tuple[str, ...], request: web.Request) -> Fault | None:
        """First matching fault among kinds (in insertion order)."""
        if not self._faults:
            return None
        with self._lock:
            for f in self._faults:
                if f.kind in kinds and self._matches(f, request):
                    f.hits += 1
                    if f.remaining is not None:
                        f.remaining -= 1
                        if f.remaining <= 0:
                            self._faults.remove(f)
                    return f
        return None
