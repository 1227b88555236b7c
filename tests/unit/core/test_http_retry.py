"""The one retry layer: honours fractional Retry-After, backs off without it, gives up after max retries."""

from __future__ import annotations

import httpx
import pytest

from shared_code.adapters.http_retry import RetryTransport, UsageMeter, backoff_delay, parse_retry_after


def _scripted(responses: list[httpx.Response | Exception]) -> httpx.MockTransport:
    script = iter(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        item = next(script)
        if isinstance(item, Exception):
            raise item
        return item

    return httpx.MockTransport(handler)


async def _send(transport: httpx.AsyncBaseTransport) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get("https://graph.test/v1.0/users")


class TestRetryTransport:
    async def test_honours_fractional_retry_after_then_succeeds(self) -> None:
        sleeps: list[float] = []
        meter = UsageMeter()

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)

        inner = _scripted(
            [
                httpx.Response(429, headers={"Retry-After": "0.25", "x-ms-resource-unit": "2"}),
                httpx.Response(200, json={"value": []}, headers={"x-ms-resource-unit": "2"}),
            ]
        )
        response = await _send(RetryTransport(inner, max_retries=3, meter_for=lambda r: meter, sleep=sleep))
        assert response.status_code == 200
        assert sleeps == [0.25]
        assert meter.snapshot() == {"requests": 2, "pages": 0, "resourceUnits": 4, "throttled": 1, "retries": 1}

    async def test_gives_up_after_max_retries_and_returns_last_response(self) -> None:
        sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)

        inner = _scripted([httpx.Response(503) for _ in range(3)])
        response = await _send(RetryTransport(inner, max_retries=2, meter_for=lambda r: None, sleep=sleep))
        assert response.status_code == 503
        assert len(sleeps) == 2

    async def test_retries_connection_resets(self) -> None:
        async def sleep(seconds: float) -> None:
            return None

        meter = UsageMeter()
        inner = _scripted([httpx.ReadError("reset"), httpx.Response(200, json={})])
        response = await _send(RetryTransport(inner, max_retries=2, meter_for=lambda r: meter, sleep=sleep))
        assert response.status_code == 200
        assert meter.retries == 1

    async def test_does_not_retry_client_errors(self) -> None:
        async def sleep(seconds: float) -> None:
            raise AssertionError("must not sleep")

        inner = _scripted([httpx.Response(403)])
        response = await _send(RetryTransport(inner, max_retries=5, meter_for=lambda r: None, sleep=sleep))
        assert response.status_code == 403


@pytest.mark.parametrize(
    ("header", "expected"),
    [("2.128", 2.128), ("0", 0.0), ("-1", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", None), (None, None)],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_backoff_without_retry_after_is_bounded_and_grows() -> None:
    import random

    # Full jitter: each delay is uniform in [0, min(30, 0.5 * 2**(attempt-1))], so the ceiling grows and then caps.
    rng = random.Random(7)
    samples = {attempt: [backoff_delay(attempt, None, rng) for _ in range(200)] for attempt in (1, 3, 6, 12)}
    assert max(samples[1]) <= 0.5 < max(samples[3]) <= 2.0 < max(samples[6]) <= 16.0 < max(samples[12]) <= 30.0
    assert all(d >= 0 for values in samples.values() for d in values)
    assert backoff_delay(1, 2.128) == 2.128  # Retry-After wins over the jitter


class _CutOffStream(httpx.AsyncByteStream):
    """A body that breaks off mid-stream, as a reset or truncated chunked response does."""

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        yield b'{"value": ['
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


async def test_a_body_cut_off_mid_stream_is_retried_inside_the_layer() -> None:
    async def sleep(seconds: float) -> None:
        return None

    meter = UsageMeter()
    inner = _scripted([httpx.Response(200, stream=_CutOffStream()), httpx.Response(200, json={"value": []})])
    response = await _send(RetryTransport(inner, max_retries=2, meter_for=lambda r: meter, sleep=sleep))
    assert response.json() == {"value": []}
    assert (meter.requests, meter.retries) == (2, 1)


async def test_a_retry_after_longer_than_a_worker_should_sleep_is_handed_back_not_retried_early() -> None:
    async def sleep(seconds: float) -> None:
        raise AssertionError("must not sleep through a two-minute Retry-After")

    meter = UsageMeter()
    inner = _scripted([httpx.Response(429, headers={"Retry-After": "120"})])
    response = await _send(RetryTransport(inner, max_retries=5, meter_for=lambda r: meter, sleep=sleep))
    assert response.status_code == 429 and response.headers["Retry-After"] == "120"
    assert (meter.requests, meter.retries) == (1, 0)
