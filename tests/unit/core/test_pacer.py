"""Graph pacing: requests wait for the app share and the tenant budget before they are sent (counts, fake clock)."""

from __future__ import annotations

import httpx

from shared_code.adapters.pacer import HEADROOM, GraphPacer, PacedTransport


class FakeTime:
    """A clock that only moves when the pacer sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def pacer(t: FakeTime, *, app: float = 150_000, instances: int = 1, tenant: float = 3500) -> GraphPacer:
    return GraphPacer(app_ru_per_window=app, instances=instances, tenant_ru_per_window=tenant, clock=t.clock,
                      sleep=t.sleep)


async def test_a_tenant_gets_half_its_quota_as_burst_then_its_rate() -> None:
    t = FakeTime()
    p = pacer(t, tenant=100)  # 100 RU per 10 s: burst 50, then 9 RU/s (with headroom)
    for _ in range(50):
        await p.acquire("t1", 1)
    assert t.sleeps == [] and p.stats.waited == 0
    for _ in range(90):
        await p.acquire("t1", 1)
    assert p.stats.waited == 90
    # 90 RU past the burst at 100 × HEADROOM / 10 RU per second.
    assert round(t.now, 6) == round(90 / (100 * HEADROOM / 10), 6)
    # 140 RU in 10 s: inside what Graph's own bucket allows in 10 s (100 + 10 s × 10 RU/s).
    assert p.stats.requests == 140 and p.stats.resource_units == 140


async def test_tenants_have_their_own_budgets_and_share_the_app_budget() -> None:
    t = FakeTime()
    p = pacer(t, app=1000, instances=4, tenant=3500)  # this process: 250 RU burst, 250 × 0.9 / 20 RU/s
    for i in range(250):
        await p.acquire(f"t{i % 5}", 1)  # five tenants, 50 RU each: no tenant budget binds
    assert p.stats.waited == 0
    await p.acquire("t9", 9)  # a new tenant with a full budget still waits for the app share
    assert p.stats.waited == 1 and round(t.now, 6) == round(9 / (250 * HEADROOM / 20), 6)
    assert p.stats.by_tenant == {"t0": 50, "t1": 50, "t2": 50, "t3": 50, "t4": 50, "t9": 1}


async def test_the_transport_reserves_the_documented_price_and_settles_what_graph_charged() -> None:
    t = FakeTime()
    p = pacer(t, tenant=20)  # burst 10
    charged = {"/v1.0/users": "2", "/v1.0/$batch": None}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("$batch"):
            inner = [{"id": str(i), "status": 200, "headers": {"x-ms-resource-unit": "1"}, "body": {}}
                     for i in range(3)]
            return httpx.Response(200, json={"responses": inner})
        return httpx.Response(200, json={"value": []}, headers={"x-ms-resource-unit": charged[request.url.path]})

    transport = PacedTransport(httpx.MockTransport(handler), p, "t1")
    async with httpx.AsyncClient(transport=transport) as client:
        users = client.build_request("GET", "https://graph.test/v1.0/users", extensions={"documented_ru": 1})
        await client.send(users)  # reserved 1, charged 2
        await client.post("https://graph.test/v1.0/$batch",
                          json={"requests": [{"id": str(i), "method": "GET", "url": "/x"} for i in range(3)]})
    assert p.stats.requests == 2 and p.stats.resource_units == 2 + 3
    assert p.stats.waited == 0
    # 5 RU of the 10 RU burst are gone: 5 more pass at once, the 6th waits.
    for _ in range(5):
        await p.acquire("t1", 1)
    assert p.stats.waited == 0
    await p.acquire("t1", 1)
    assert p.stats.waited == 1
