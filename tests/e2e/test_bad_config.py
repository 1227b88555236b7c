"""Bad configuration is refused at the door, and a stored one the poll cannot use never crash-loops a tenant.

Through the real stack: devhost serves function_app.py over HTTP, the ``dispatch_polls`` timer and the
``poll_tenant`` queue worker run against Azurite and the simulator.

Before the text rule, ``PUT {"enrollmentGroups": ["Sales \\ud800"]}`` answered 200; every later poll then failed
with UnicodeEncodeError while building the group ``$filter`` and the tenant ended in quarantine. Now the PUT is a
400 naming the field, and a configuration stored before the rule puts the tenant in ``config_invalid`` (no Graph
call, no failure streak, no retry) until a valid PUT.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import MovableClock

PROBLEM = "https://mtd-connector.dev/problems/"
# One of each kind the text rule refuses (shared_code/validation.py).
NOT_TEXT = {
    "lone high surrogate": "\ud800",
    "lone low surrogate": "\udfff",
    "noncharacter U+FFFE": "\ufffe",
    "noncharacter U+FDD0": "\ufdd0",
    "noncharacter U+10FFFF": "\U0010ffff",
    "bidi override U+202E": "\u202e",
    "bidi isolate U+2066": "\u2066",
    "C0 control U+0001": "\u0001",
    "line feed": "\n",
    "C1 control U+0085": "\u0085",
    "DEL": "\u007f",
}


# The connector's clock is installed before any service is built (services bind it when they are made).
pytestmark = pytest.mark.usefixtures("clock")


def _raw(body: Any) -> dict[str, Any]:
    # json.dumps escapes a lone surrogate as "\ud800": exactly what a console's JSON encoder sends.
    return {"content": json.dumps(body).encode(), "headers": {"Content-Type": "application/json"}}


def _problem(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("bad", list(NOT_TEXT.values()), ids=list(NOT_TEXT))
async def test_every_stored_string_must_be_valid_text(sim: Any, api: httpx.AsyncClient, bad: str) -> None:
    tid = str(uuid.uuid4())
    device = str(uuid.uuid4())
    cases = [
        ("PUT", f"/api/tenants/{tid}", {"enrollmentGroups": ["MTD Users", f"Sales {bad}"]}, "enrollmentGroups[1]"),
        ("PUT", f"/api/tenants/{tid}", {"enrollmentGroups": ["MTD Users"],
                                        "partnerEnrollmentUrl": f"https://mtd.example/{bad}"}, "partnerEnrollmentUrl"),
        ("PUT", f"/api/tenants/{tid}/devices/{device}/threat",
         {"level": "high", "detectedAt": "2026-01-05T10:00:00Z", "threats": [{"name": f"x{bad}"}]}, "threats[0].name"),
        ("PUT", f"/api/tenants/{tid}/devices/{device}/threat",
         {"level": "high", "detectedAt": "2026-01-05T10:00:00Z", "idempotencyKey": f"k{bad}"}, "idempotencyKey"),
    ]
    for method, path, body, field in cases:
        problem = _problem(await api.request(method, path, **_raw(body)))
        assert (problem["type"], problem["field"]) == (PROBLEM + "validation-error", field), problem
        assert "valid Unicode text" in problem["detail"]
    # A query parameter is held to the same rule (percent-encoded as a client would; a surrogate as CESU-8 bytes,
    # which the host decodes to U+FFFD, itself valid text, so only the other kinds are asserted).
    query = urllib.parse.quote(f"ev1.{bad}", errors="surrogatepass")
    response = await api.get(f"/api/tenants/{tid}/events?after={query}")
    if not 0xD800 <= ord(bad) <= 0xDFFF:
        problem = _problem(response)
        assert (problem["type"], problem["field"]) == (PROBLEM + "invalid-parameter", "after"), problem


async def test_an_unknown_field_spelled_with_a_lone_surrogate_is_named_safely(api: httpx.AsyncClient) -> None:
    problem = _problem(await api.put(f"/api/tenants/{uuid.uuid4()}",
                                     **_raw({"enrollmentGroups": ["A"], "x\ud800": 1})))
    assert (problem["type"], problem["field"]) == (PROBLEM + "unknown-field", "x\\ud800"), problem


async def test_right_to_left_names_and_astral_characters_are_text(sim: Any, api: httpx.AsyncClient) -> None:
    summary = sim.create_tenant("small", seed=931)
    groups = [*summary["enrollment_groups"], "מכשירים \u200fניידים", "Mobile 📱"]
    response = await api.put(f"/api/tenants/{summary['tenant_id']}", **_raw({"enrollmentGroups": groups}))
    assert response.status_code == 201, response.text
    assert response.json()["config"]["enrollmentGroups"] == groups


async def test_a_stored_config_the_poll_cannot_use_is_config_invalid_until_a_valid_put(
    sim: Any, api: httpx.AsyncClient, devhost: Any, app_container: Any, clock: MovableClock
) -> None:
    from shared_code.adapters.tenant_store import build_tenant_repository
    from shared_code.enrollment.service import build_enrollment_service
    from shared_code.tenants import TenantConfig

    summary = sim.create_tenant("small", seed=932)
    tid, groups = summary["tenant_id"], summary["enrollment_groups"]
    # What a connector without the text rule stored after answering 200 to the PUT.
    tenants = app_container.service(build_tenant_repository)
    await tenants.put_config(TenantConfig(tenant_id=tid, enrollment_groups=(groups[0], "Sales \ud800")))
    graph_before = sim.counters(tid).get(tid, {}).get("totals", {}).get("requests", 0)

    # Six poll intervals of timer ticks: one poll finds the config unusable and records it; no tick polls again.
    leases = app_container.service(build_enrollment_service).leases
    polled_at: list[float] = []
    for _ in range(6):
        await devhost.run_timer("dispatch_polls")
        left = await devhost.drain_queues()
        assert not any(left.values()), left
        info = (await leases.all()).get(tid)
        polled_at.append(info.last_started if info else 0.0)
        clock.offset += 6 * 60
    assert polled_at[0] > 0 and len(set(polled_at)) == 1, polled_at  # polled once, then skipped by dispatch
    assert sim.counters(tid).get(tid, {}).get("totals", {}).get("requests", 0) == graph_before  # no Graph call
    counts = await devhost.queue_counts()
    assert not any(v for k, v in counts.items() if k.endswith("-poison")), counts

    status = (await api.get(f"/api/tenants/{tid}")).json()["status"]
    assert status["config"]["state"] == "config_invalid"
    assert status["config"]["field"] == "enrollmentGroups[1]"
    assert "lone surrogate" in status["config"]["detail"]
    assert "config_invalid: enrollmentGroups[1]" in status["problems"]
    assert not (status["quarantine"] or {}).get("failures")  # no failure streak, no quarantine
    assert status["lastPoll"] is None

    # The console's actions say why instead of queueing work that cannot run.
    for params in ({}, {"dryRun": "true"}):
        problem = _problem(await api.post(f"/api/tenants/{tid}/sync", params=params), 409)
        assert (problem["type"], problem["field"]) == (PROBLEM + "config-invalid", "enrollmentGroups[1]"), problem

    # A valid PUT clears it at once, and the next tick polls and enrolls.
    assert clock.offset > 30 * 60  # the poll interval (5 min) had elapsed many times over: dispatch skipped it
    response = await api.put(f"/api/tenants/{tid}", json={"enrollmentGroups": groups})
    assert response.status_code == 200, response.text
    assert response.json()["status"]["config"] == {"state": "valid"}
    await devhost.run_timer("dispatch_polls")
    await devhost.drain_queues()
    doc = (await api.get(f"/api/tenants/{tid}")).json()
    truth = {d["id"] for d in sim.truth(tid, groups)["devices"]}
    assert doc["status"]["lastPoll"]["result"] == "ok"
    assert doc["status"]["counts"]["enrolled"] == len(truth) > 0
    assert doc["status"]["config"] == {"state": "valid"}
    assert not [p for p in doc["status"]["problems"] if p.startswith("config_invalid")]
