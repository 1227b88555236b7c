"""The one retry layer for outbound HTTP (Graph and Intune).

Why our own transport instead of kiota's ``RetryHandler``: kiota parses ``Retry-After`` with ``int()`` so Graph's
documented fractional values (``Retry-After: 2.128``) fall back to its own 3 s+ exponential delay
(reference/azure.md §4), and it does not retry 500/502 or connection resets. We remove kiota's handler from the
middleware chain and retry here, below it, so no request is ever retried by two layers.

Policy (reference/graph.md §2; msgraph-sdk-design RetryHandler.md): retry 429, 500, 502, 503, 504 and transport
errors; honour ``Retry-After`` (float seconds) when present; else exponential backoff with full jitter; cap both the
attempts and each delay. Every attempt is recorded in the request's :class:`UsageMeter`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from shared_code import telemetry

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Graph asks for a wait in Retry-After; we never wait longer than this per attempt so one tenant's storm cannot
# hold a worker for minutes (the poll is resumable and the queue redelivers).
MAX_DELAY_SECONDS = 30.0
BASE_DELAY_SECONDS = 0.5


@dataclass
class UsageMeter:
    """Counts what a unit of work cost: requests sent, resource units charged, throttles and retries."""

    requests: int = 0
    pages: int = 0  # collection pages read (GraphClient.pages)
    resource_units: int = 0
    throttled: int = 0
    retries: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def record(self, response: httpx.Response, *, documented_ru: int = 1) -> None:
        """Count one response; RU from ``x-ms-resource-unit`` when Graph sends it, else the documented cost."""
        self.requests += 1
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        header = response.headers.get("x-ms-resource-unit")
        try:
            self.resource_units += int(header) if header is not None else documented_ru
        except ValueError:
            self.resource_units += documented_ru
        if response.status_code == 429:
            self.throttled += 1

    def snapshot(self) -> dict[str, int]:
        """A plain dict for status documents and logs."""
        return {
            "requests": self.requests,
            "pages": self.pages,
            "resourceUnits": self.resource_units,
            "throttled": self.throttled,
            "retries": self.retries,
        }


def parse_retry_after(value: str | None) -> float | None:
    """Parse ``Retry-After`` as float seconds (Graph sends fractions). HTTP-dates are treated as absent."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds)


def backoff_delay(attempt: int, retry_after: float | None, rng: random.Random | None = None) -> float:
    """Delay before retry ``attempt`` (1-based): Retry-After if given, else full-jitter exponential backoff.

    The transport never calls this with a Retry-After above ``MAX_DELAY_SECONDS`` (it stops retrying instead).
    """
    if retry_after is not None:
        return min(retry_after, MAX_DELAY_SECONDS)
    ceiling = min(MAX_DELAY_SECONDS, BASE_DELAY_SECONDS * (2 ** (attempt - 1)))
    return (rng or random).uniform(0, ceiling)


Sleeper = Callable[[float], Awaitable[None]]


class RetryTransport(httpx.AsyncBaseTransport):
    """An httpx transport that retries transient failures; wraps the real connection pool."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        max_retries: int,
        meter_for: Callable[[httpx.Request], UsageMeter | None],
        sleep: Sleeper = asyncio.sleep,
    ) -> None:
        self._inner = inner
        self._max_retries = max_retries
        self._meter_for = meter_for
        self._sleep = sleep

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send, retrying transient failures. The last response (or transport error) is returned/raised."""
        meter = self._meter_for(request)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._inner.handle_async_request(request)
                # Read the body here, inside the retry loop: a body cut off mid-stream (reset, truncated chunked
                # encoding) is a transport fault like any other and must be retried, not surface after this layer.
                # Our responses are JSON documents, so buffering them costs nothing extra.
                await response.aread()
            except (httpx.TransportError, httpx.TimeoutException):
                if meter is not None:
                    meter.requests += 1
                if attempt > self._max_retries:
                    raise
                if meter is not None:
                    meter.retries += 1
                await self._sleep(backoff_delay(attempt, None))
                continue
            if meter is not None:
                meter.record(response, documented_ru=int(request.extensions.get("documented_ru", 1)))
            # Request ids of failed calls for spans and error logs (what Microsoft support asks for).
            telemetry.note_response(response.status_code, response.headers, request.headers, request.url.host)
            if response.status_code not in RETRY_STATUSES or attempt > self._max_retries:
                return response
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None and retry_after > MAX_DELAY_SECONDS:
                # The service asks for a longer pause than a worker should sleep through. Retrying early would be
                # charged and throttled again (reference/graph.md §2), so hand the response back: the caller
                # raises RetriableError(retry_after=…) and the tenant's own backoff takes over.
                return response
            await response.aclose()
            if meter is not None:
                meter.retries += 1
            await self._sleep(backoff_delay(attempt, retry_after))

    async def aclose(self) -> None:
        """Close the inner pool."""
        await self._inner.aclose()
