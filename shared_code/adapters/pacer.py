"""Graph pacing: wait *before* a request so the documented resource-unit budgets hold, instead of learning them
from 429s.

Graph's identity-and-access limits (reference/graph.md §1,
https://learn.microsoft.com/graph/throttling-limits#identity-and-access-service-limits) are token buckets on
resource units (RU): 150,000 RU per 20 s for the application across all tenants, and per app + tenant pair 3,500
(tenants under 50 users) / 5,000 / 8,000 (over 500 users) RU per 10 s. Graph keeps charging while a client is
throttled, so a 429 costs the budget it was meant to protect.

One :class:`GraphPacer` per process holds a bucket for the process's *share* of the application budget
(``GRAPH_APP_RU_PER_20S`` ÷ ``GRAPH_PACER_INSTANCES``: the number of processes expected to call Graph at once) and one
bucket per tenant (``GRAPH_TENANT_RU_PER_10S``; default the smallest class, S, so no tenant is ever paced above its
quota without the pacer knowing its size). A tenant bucket starts with half the quota as burst: a tenant is polled by
one process at a time (its lease), and a continuation picked up by another process right after can add at most the
other half. Rates are the budget × ``HEADROOM``, which absorbs the RU a request turns out to cost above its estimate
before the response says so.

A request reserves its estimated RU (the call's documented price; for ``$batch`` one per inner request) from both
buckets — a balance may go negative, and the request waits until the debt has refilled, so waiters are served in
order — then the estimate is corrected with the ``x-ms-resource-unit`` Graph returns. The pacer sits below the retry
layer, so a retried attempt is paced like any other request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import orjson

APP_WINDOW_SECONDS = 20.0
TENANT_WINDOW_SECONDS = 10.0
HEADROOM = 0.9


@dataclass
class TokenBucket:
    """A continuously refilling budget; ``reserve`` may overdraw it and says how long to wait."""

    capacity: float
    rate: float  # tokens per second
    tokens: float
    stamp: float

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def reserve(self, cost: float, now: float) -> float:
        """Take ``cost`` now; return the seconds until the balance is back at zero (0 when it never went below)."""
        self._refill(now)
        self.tokens -= cost
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def correct(self, delta: float) -> None:
        """Charge ``delta`` more (or give back ``-delta``) once the real cost is known."""
        self.tokens = min(self.capacity, self.tokens - delta)


@dataclass
class PacerStats:
    """What the pacer did (process lifetime): requests and RU paced, how many waited and for how long in total."""

    requests: int = 0
    resource_units: int = 0
    waited: int = 0
    wait_seconds: float = 0.0
    longest_wait_seconds: float = 0.0
    by_tenant: dict[str, int] = field(default_factory=dict)


class GraphPacer:
    """Per-process pacing of Graph RU: this process's share of the application budget and each tenant's budget."""

    def __init__(
        self,
        *,
        app_ru_per_window: float,
        instances: int,
        tenant_ru_per_window: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Budgets are Graph's documented quotas; the pacer applies ``HEADROOM`` and the instance share itself.

        Args:
            app_ru_per_window: the application's RU quota per ``APP_WINDOW_SECONDS`` (all tenants, all processes).
            instances: processes expected to call Graph at once; this one takes ``1 / instances`` of the app quota.
            tenant_ru_per_window: one tenant's RU quota per ``TENANT_WINDOW_SECONDS`` for this application.
            clock: monotonic seconds (tests pass a fake).
            sleep: how to wait (tests pass a recorder).
        """
        if app_ru_per_window <= 0 or tenant_ru_per_window <= 0 or instances < 1:
            msg = "pacer budgets must be positive and instances at least 1"
            raise ValueError(msg)
        self._clock = clock
        self._sleep = sleep
        share = app_ru_per_window / instances
        now = clock()
        self._app = TokenBucket(share, share * HEADROOM / APP_WINDOW_SECONDS, share, now)
        self._tenant_quota = tenant_ru_per_window
        self._tenants: dict[str, TokenBucket] = {}
        self.stats = PacerStats()

    def _tenant(self, tenant_id: str, now: float) -> TokenBucket:
        bucket = self._tenants.get(tenant_id)
        if bucket is None:
            burst = self._tenant_quota / 2
            bucket = TokenBucket(burst, self._tenant_quota * HEADROOM / TENANT_WINDOW_SECONDS, burst, now)
            self._tenants[tenant_id] = bucket
        return bucket

    async def acquire(self, tenant_id: str, ru: int) -> float:
        """Reserve ``ru`` from the app share and the tenant's budget; wait until both allow it. Returns the wait."""
        now = self._clock()
        wait = max(self._app.reserve(ru, now), self._tenant(tenant_id, now).reserve(ru, now))
        self.stats.requests += 1
        self.stats.resource_units += ru
        self.stats.by_tenant[tenant_id] = self.stats.by_tenant.get(tenant_id, 0) + 1
        if wait > 0:
            self.stats.waited += 1
            self.stats.wait_seconds += wait
            self.stats.longest_wait_seconds = max(self.stats.longest_wait_seconds, wait)
            await self._sleep(wait)
        return wait

    def settle(self, tenant_id: str, reserved: int, charged: int) -> None:
        """Correct a reservation with the RU Graph charged (``x-ms-resource-unit``)."""
        delta = charged - reserved
        if delta:
            self.stats.resource_units += delta
            self._app.correct(delta)
            self._tenant(tenant_id, self._clock()).correct(delta)


def _estimate(request: httpx.Request) -> int:
    """RU a request is expected to cost: the call's documented price, or one per inner request of a ``$batch``."""
    if request.method == "POST" and request.url.path.endswith("/$batch"):
        try:
            return max(1, len(orjson.loads(request.content).get("requests", [])))
        except (orjson.JSONDecodeError, AttributeError):
            return 1
    return max(1, int(request.extensions.get("documented_ru", 1)))


def _charged(request: httpx.Request, response: httpx.Response, estimate: int) -> int:
    """RU Graph charged: ``x-ms-resource-unit`` (summed over a ``$batch``'s inner responses), else the estimate."""
    if request.method == "POST" and request.url.path.endswith("/$batch"):
        try:
            inner = orjson.loads(response.content).get("responses", [])
            units = [int((r.get("headers") or {}).get("x-ms-resource-unit", 0)) for r in inner]
        except (orjson.JSONDecodeError, AttributeError, ValueError):
            return estimate
        return sum(units) or estimate
    header = response.headers.get("x-ms-resource-unit")
    return int(header) if header is not None and header.isdigit() else estimate


class PacedTransport(httpx.AsyncBaseTransport):
    """Wraps one tenant's connection pool: every request waits for the pacer first."""

    def __init__(self, inner: httpx.AsyncBaseTransport, pacer: GraphPacer, tenant_id: str) -> None:
        self._inner = inner
        self._pacer = pacer
        self._tenant_id = tenant_id

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Pace, send, then correct the reservation with what Graph charged."""
        estimate = _estimate(request)
        await self._pacer.acquire(self._tenant_id, estimate)
        response = await self._inner.handle_async_request(request)
        await response.aread()  # the retry layer reads it anyway; the $batch price is in the body
        self._pacer.settle(self._tenant_id, estimate, _charged(request, response, estimate))
        return response

    async def aclose(self) -> None:
        """Close the inner pool."""
        await self._inner.aclose()
