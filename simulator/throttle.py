"""Simulated clock, Graph identity resource-unit (RU) token buckets and request counters.

Limits follow https://learn.microsoft.com/graph/throttling-limits#identity-and-access-service-limits
(see shared reference graph.md §1): per app+tenant S 3,500 / M 5,000 / L 8,000 RU per 10 s, per app 150,000 RU per
20 s; writes: app+tenant 3,000 per 150 s, app 70,000 per 300 s, tenant 18,000 per 300 s. Buckets refill continuously
(token bucket) from an injectable clock, so tests can scale them down or advance time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


class Clock:
    """Simulated time: wall clock plus an offset that tests advance through the admin API."""

    def __init__(self, source: Callable[[], float] = time.time) -> None:
        self._source = source
        self._offset = 0.0

    def now(self) -> float:
        """Simulated epoch seconds."""
        return self._source() + self._offset

    def utcnow(self) -> datetime:
        """Simulated time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.now(), tz=UTC)

    @property
    def offset(self) -> float:
        return self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0 or math.isnan(seconds) or math.isinf(seconds):
            raise ValueError("seconds must be a finite number >= 0")
        self._offset += seconds


# Tenant size classes: S under 50 users, M 50–500, L over 500 (graph.md §1, includes/throttling-identity-and-access.md).
APP_TENANT_RU = {"S": 3500, "M": 5000, "L": 8000}  # per 10 s (throttling-limits#identity-and-access-service-limits)
APP_TENANT_WINDOW = 10.0
APP_RU = 150_000  # per 20 s across all tenants (same page)
APP_WINDOW = 20.0
APP_TENANT_WRITES = (3000, 150.0)  # 3,000 requests per 2 min 30 s (same page)
APP_WRITES = (70_000, 300.0)  # 70,000 per 5 min (same page)
TENANT_WRITES = (18_000, 300.0)  # 18,000 per 5 min, all apps (same page)


def size_class(user_count: int) -> str:
    """S < 50 users, M 50–500, L > 500 (graph.md §1)."""
    if user_count < 50:
        return "S"
    if user_count <= 500:
        return "M"
    return "L"


@dataclass
class Bucket:
    capacity: float
    window: float
    tokens: float
    stamp: float

    @property
    def rate(self) -> float:
        return self.capacity / self.window

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def usage(self) -> float:
        return (self.capacity - self.tokens) / self.capacity if self.capacity > 0 else 0.0


@dataclass(frozen=True)
class Decision:
    """Outcome of a charge: retry_after is None when allowed."""

    retry_after: float | None
    scope: str | None = None
    limit_percentage: float | None = None
    information: str | None = None


@dataclass
class RouteCounter:
    requests: int = 0
    ru: int = 0
    throttled: int = 0
    # Of ``requests``, those inside a ``$batch`` (each is charged and throttled on its own, but is not an HTTP
    # request: the envelope is counted once under ``/v1.0/$batch``).
    batched: int = 0
    status: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "ru": self.ru, "throttled": self.throttled, "batched": self.batched,
                "status": dict(self.status)}


class Counters:
    """Requests, RU, 429s and status codes per tenant and route label."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, RouteCounter]] = defaultdict(lambda: defaultdict(RouteCounter))
        self._lock = threading.Lock()

    def record_charge(self, tenant: str, route: str, ru: int, throttled: bool) -> None:
        with self._lock:
            c = self._data[tenant][route]
            c.requests += 1
            c.ru += ru
            if throttled:
                c.throttled += 1

    def record_batched(self, tenant: str, route: str) -> None:
        """Mark the last charge of ``route`` as an inner request of a ``$batch``."""
        with self._lock:
            self._data[tenant][route].batched += 1

    def record_request(self, tenant: str, route: str) -> None:
        with self._lock:
            self._data[tenant][route].requests += 1

    def record_throttled(self, tenant: str, route: str) -> None:
        with self._lock:
            self._data[tenant][route].throttled += 1

    def record_status(self, tenant: str, route: str, status: int) -> None:
        with self._lock:
            s = self._data[tenant][route].status
            s[str(status)] = s.get(str(status), 0) + 1

    def reset(self) -> None:
        with self._lock:
            self._data.clear()

    def snapshot(self, tenant: str | None = None) -> dict[str, Any]:
        """Per tenant: {"routes": {label: counters}, "totals": {...}}."""
        with self._lock:
            tenants = [tenant] if tenant is not None else list(self._data)
            out: dict[str, Any] = {}
            for t in tenants:
                routes = self._data.get(t, {})
                totals = RouteCounter()
                for c in routes.values():
                    totals.requests += c.requests
                    totals.ru += c.ru
                    totals.throttled += c.throttled
                    totals.batched += c.batched
                    for k, v in c.status.items():
                        totals.status[k] = totals.status.get(k, 0) + v
                out[t] = {"routes": {r: c.as_dict() for r, c in routes.items()}, "totals": totals.as_dict()}
            return out


class Throttle:
    """Token buckets for Graph identity-service RU and write quotas.

    Args:
        clock: time source (simulated).
        user_count: callable tenant_id -> number of users, for the S/M/L bucket size.
    """

    def __init__(self, clock: Clock, user_count: Callable[[str], int] | None = None) -> None:
        self.clock = clock
        self.counters = Counters()
        self._user_count = user_count
        self.scale = 1.0
        self.enabled = True
        self._buckets: dict[tuple[str, ...], Bucket] = {}
        self._lock = threading.Lock()

    def configure(self, *, scale: float | None = None, enabled: bool | None = None) -> None:
        with self._lock:
            if scale is not None:
                self.scale = scale
            if enabled is not None:
                self.enabled = enabled
            self._buckets.clear()

    def state(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "enabled": self.enabled,
            "limits": {
                "app_tenant_ru_per_10s": {k: v * self.scale for k, v in APP_TENANT_RU.items()},
                "app_ru_per_20s": APP_RU * self.scale,
                "app_tenant_writes_per_150s": APP_TENANT_WRITES[0] * self.scale,
                "app_writes_per_300s": APP_WRITES[0] * self.scale,
                "tenant_writes_per_300s": TENANT_WRITES[0] * self.scale,
            },
        }

    def _size(self, tenant_id: str) -> str:
        if self._user_count is None:
            return "S"
        try:
            return size_class(int(self._user_count(tenant_id)))
        except Exception:  # noqa: BLE001 - guard: unknown tenant in the world: smallest bucket
            return "S"

    def _bucket(self, key: tuple[str, ...], capacity: float, window: float, now: float) -> Bucket:
        b = self._buckets.get(key)
        if b is None or b.capacity != capacity:
            b = Bucket(capacity=capacity, window=window, tokens=capacity, stamp=now)
            self._buckets[key] = b
        else:
            b.refill(now)
        return b

    def decide(self, *, tenant_id: str, app_id: str, ru: int, route: str, write: bool = False) -> Decision:
        """Charge RU (and a write) and tell whether the request is allowed; records counters."""
        ru = max(1, int(ru))
        if not self.enabled:
            self.counters.record_charge(tenant_id, route, ru, False)
            return Decision(None)
        now = self.clock.now()
        size = self._size(tenant_id)
        s = self.scale
        with self._lock:
            checks: list[tuple[Bucket, float, str]] = [
                (self._bucket(("at", app_id, tenant_id), APP_TENANT_RU[size] * s, APP_TENANT_WINDOW, now), ru,
                 f"Tenant_Application/ReadWrite/{app_id}/{tenant_id}"),
                (self._bucket(("a", app_id), APP_RU * s, APP_WINDOW, now), ru,
                 f"Application/ReadWrite/{app_id}/{tenant_id}"),
            ]
            if write:
                checks += [
                    (self._bucket(("atw", app_id, tenant_id), APP_TENANT_WRITES[0] * s, APP_TENANT_WRITES[1], now), 1,
                     f"Tenant_Application/Write/{app_id}/{tenant_id}"),
                    (self._bucket(("aw", app_id), APP_WRITES[0] * s, APP_WRITES[1], now), 1,
                     f"Application/Write/{app_id}/{tenant_id}"),
                    (self._bucket(("tw", tenant_id), TENANT_WRITES[0] * s, TENANT_WRITES[1], now), 1,
                     f"Tenant/Write/{app_id}/{tenant_id}"),
                ]
            blocked = [(b, cost, scope) for b, cost, scope in checks if b.tokens < cost]
            # Graph keeps charging usage while a client is throttled, so immediate retries make it worse
            # (https://learn.microsoft.com/graph/throttling); the debt is capped at one bucket so it stays bounded.
            for b, cost, _ in checks:
                b.tokens = max(-b.capacity, b.tokens - cost)
            pct = max(b.usage() for b, _, _ in checks)
            if blocked:
                retry = max((cost - b.tokens) / b.rate for b, cost, _ in blocked)
                scope = blocked[0][2]
                info = "WriteLimitExceeded" if "/Write/" in scope else "ResourceUnitLimitExceeded"
                decision = Decision(round(max(retry, 0.001), 3), scope, min(pct, 1.8), info)
            else:
                # x-ms-throttle-limit-percentage is only sent above 0.8 of a limit (graph.md §1).
                decision = Decision(None, None, round(min(pct, 1.8), 2) if pct > 0.8 else None)
        self.counters.record_charge(tenant_id, route, ru, decision.retry_after is not None)
        return decision

    def charge(self, *, tenant_id: str, app_id: str, ru: int, route: str, write: bool = False) -> float | None:
        """Contract API: None if allowed, else Retry-After seconds (float)."""
        return self.decide(tenant_id=tenant_id, app_id=app_id, ru=ru, route=route, write=write).retry_after
