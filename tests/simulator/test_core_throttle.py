"""Graph identity RU token buckets (graph.md §1): unit rules with a fake clock, then 429s over HTTPS."""

from __future__ import annotations

import pytest

from simulator.throttle import Clock, Throttle, size_class
from tests.simulator.conftest import SimHandle


class FakeTime:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def make(users: int = 10) -> tuple[Throttle, FakeTime]:
    ft = FakeTime()
    return Throttle(Clock(ft), lambda _t: users), ft


@pytest.mark.parametrize(("users", "size"), [(0, "S"), (49, "S"), (50, "M"), (500, "M"), (501, "L")])
def test_size_classes(users: int, size: str) -> None:
    assert size_class(users) == size


@pytest.mark.parametrize(("users", "capacity"), [(10, 3500), (100, 5000), (1000, 8000)])
def test_app_tenant_bucket_size_and_refill(users: int, capacity: int) -> None:
    th, ft = make(users)
    # Spend exactly the 10-second quota: all allowed.
    for _ in range(capacity // 5):
        assert th.charge(tenant_id="t", app_id="a", ru=5, route="r") is None
    retry = th.charge(tenant_id="t", app_id="a", ru=5, route="r")
    assert retry is not None
    # Charged while throttled (debt 5 RU): waiting Retry-After refills exactly enough for one more 5-RU request.
    assert retry == pytest.approx(10 * 10 / capacity, abs=0.002)
    ft.t += retry
    assert th.charge(tenant_id="t", app_id="a", ru=5, route="r") is None
    snap = th.counters.snapshot("t")["t"]["routes"]["r"]
    assert snap["requests"] == capacity // 5 + 2 and snap["throttled"] == 1


def test_continuous_refill() -> None:
    th, ft = make()
    th.configure(scale=0.01)  # 35 RU per 10 s
    for _ in range(35):
        assert th.charge(tenant_id="t", app_id="a", ru=1, route="r") is None
    assert th.charge(tenant_id="t", app_id="a", ru=1, route="r") is not None
    ft.t += 10.0  # a full window refills the whole bucket (minus the 1 RU debt)
    allowed = sum(th.charge(tenant_id="t", app_id="a", ru=1, route="r") is None for _ in range(40))
    assert allowed == 34


def test_app_bucket_spans_tenants() -> None:
    th, _ = make()
    th.configure(scale=0.001)  # app: 150 RU / 20 s; app+tenant S: 3.5 RU / 10 s
    allowed = 0
    for i in range(200):
        if th.charge(tenant_id=f"t{i}", app_id="a", ru=1, route="r") is None:
            allowed += 1
    assert allowed == 150
    d = th.decide(tenant_id="fresh", app_id="a", ru=1, route="r")
    assert d.retry_after is not None and d.scope is not None and d.scope.startswith("Application/")


def test_write_quota() -> None:
    th, _ = make()
    th.configure(scale=0.01)  # 30 writes per 150 s per app+tenant
    results = [th.decide(tenant_id="t", app_id="a", ru=1, route="w", write=True) for _ in range(31)]
    assert all(r.retry_after is None for r in results[:30])
    assert results[30].information == "WriteLimitExceeded"


def test_limit_percentage_only_above_080() -> None:
    th, _ = make()
    th.configure(scale=0.01)  # 35 RU
    pcts = [th.decide(tenant_id="t", app_id="a", ru=1, route="r").limit_percentage for _ in range(35)]
    assert pcts[27] is None  # 28/35 = 0.8: not above
    assert pcts[28] is not None and 0.8 < pcts[28] <= 1.8


def test_disabled_never_throttles() -> None:
    th, _ = make()
    th.configure(scale=0.0001, enabled=False)
    assert all(th.charge(tenant_id="t", app_id="a", ru=9, route="r") is None for _ in range(100))


def test_http_429_after_scaled_bucket(sim: SimHandle) -> None:
    tid = sim.tenant_ids[1]
    token = sim.app_token(tid)
    assert sim.admin("POST", "/_sim/throttle", {"scale": 0.01}).status_code == 200  # S: 35 RU / 10 s
    sim.admin("POST", "/_sim/counters/reset")
    try:
        statuses, last = [], None
        for _ in range(30):
            r = sim.get("/v1.0/users", token)  # GET /users costs 2 RU
            statuses.append(r.status_code)
            assert r.headers["x-ms-resource-unit"] == "2"
            if r.status_code == 429:
                last = r
                break
        assert statuses.count(200) == 17 and statuses[-1] == 429
        assert last is not None
        assert last.json()["error"]["code"] == "TooManyRequests"
        assert float(last.headers["Retry-After"]) > 0  # fractional seconds, e.g. "0.571"
        assert last.headers["x-ms-throttle-information"] == "ResourceUnitLimitExceeded"
        assert last.headers["x-ms-throttle-scope"] == f"Tenant_Application/ReadWrite/{sim.connector_id}/{tid}"
        assert float(last.headers["x-ms-throttle-limit-percentage"]) > 0.8
        counters = sim.admin("GET", "/_sim/counters", params={"tenant": tid}).json()[tid]
        route = counters["routes"]["/v1.0/users"]
        assert route["requests"] == 18 and route["ru"] == 36 and route["throttled"] == 1
        assert route["status"] == {"200": 17, "429": 1}
    finally:
        sim.admin("POST", "/_sim/throttle", {"scale": 1.0})
    assert sim.get("/v1.0/users", token).status_code == 200


def test_throttle_admin_bad_input(sim: SimHandle) -> None:
    for body in ({"scale": 0}, {"scale": "x"}, {"enabled": "yes"}, {"bogus": 1}, [1]):
        r = sim.admin("POST", "/_sim/throttle", body)
        assert r.status_code == 400 and "field" in r.json()
