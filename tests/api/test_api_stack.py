"""The console API end to end: devhost + simulator + Azurite, simulator-minted console tokens, every route.

* auth matrix over HTTP on every registered route (401/403 problem+json), valid tokens → 2xx;
* every response validated against openapi.yaml (status documented, content type, body schema);
* tenant isolation: ids from tenant A never reach tenant B's data through any route;
* no secrets in logs: every log record of the cycle and every response body is searched for the client secret,
  the console bearer tokens, the user token and any JWT-shaped string.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest_asyncio
import schemathesis

from tests.api.routes import OPENAPI_PATH, documented_operations, fill_path, registered_routes, required_role
from tests.api.test_console_auth_sim import sim_mint
from tests.api.tokens import MANAGE, READ, bad_auth_cases

JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")
SCHEMA = schemathesis.openapi.from_path(str(OPENAPI_PATH))


@dataclass
class Exchange:
    method: str
    template: str
    status: int
    body: str


@dataclass
class Stack:
    http: httpx.AsyncClient
    sim: Any
    read: str
    manage: str
    exchanges: list[Exchange] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)
    records: list[logging.LogRecord] = field(default_factory=list)

    async def call(self, method: str, template: str, *, token: str | None = None, expect: int | tuple[int, ...] = (),
                   validate: bool = True, **kw: Any) -> httpx.Response:
        path = fill_path(template, **kw.pop("ids", {}))
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        response = await self.http.request(method, "/api" + path, headers=headers, **kw)
        self.exchanges.append(Exchange(method, template, response.status_code, response.text))
        if validate:
            check_response(method, template, response)
        wanted = (expect,) if isinstance(expect, int) else expect
        assert not wanted or response.status_code in wanted, (method, path, response.status_code, response.text[:300])
        return response


def check_response(method: str, template: str, response: httpx.Response) -> None:
    """Status documented, problem+json for errors, body valid against the operation's schema."""
    op = documented_operations()[(method, template)]
    assert str(response.status_code) in op["responses"], (method, template, response.status_code, response.text)
    ctype = response.headers.get("content-type", "")
    if response.status_code >= 400:
        assert ctype.startswith("application/problem+json"), (method, template, ctype)
    if response.status_code != 204:
        SCHEMA[template][method].validate_response(response)


class Capture(logging.Handler):
    def __init__(self, sink: list[logging.LogRecord]) -> None:
        super().__init__(level=logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stack(devhost: Any, sim: Any, app_container: Any) -> AsyncIterator[Stack]:
    records: list[logging.LogRecord] = []
    handler = Capture(records)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        async with httpx.AsyncClient(base_url=devhost.base_url, timeout=60) as http:
            s = Stack(http=http, sim=sim, read=sim.console_token([READ]), manage=sim.console_token([MANAGE]),
                      records=records)
            s.secrets |= {sim.info["connector"]["client_secret"], sim.info["console"]["client_secret"], s.read,
                          s.manage}
            yield s
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


SECURED = [r for r in registered_routes() if r.path != "/health"]


async def test_auth_matrix_over_http_on_every_route(stack: Stack):
    mint = sim_mint(stack.sim)
    cases = {False: bad_auth_cases(mint, write=False), True: bad_auth_cases(mint, write=True)}
    for case in cases[True]:
        if case.header:
            stack.secrets.add(case.header.split(" ")[-1])
    total = 0
    for route in SECURED:
        write = required_role(route.method, route.path) == MANAGE
        for case in cases[write]:
            headers = {"Authorization": case.header} if case.header is not None else {}
            body = b"{}" if route.method in ("PUT", "POST") else None
            resp = await stack.call(route.method, route.path, headers=headers, content=body,
                                    expect=case.status)
            problem = resp.json()
            assert problem["type"].endswith("/unauthenticated" if case.status == 401 else "/forbidden"), case.name
            assert "eyJ" not in resp.text
            total += 1
    # Figures for the report: routes × cases.
    print(f"auth matrix over HTTP: {len(SECURED)} routes, {total} rejected requests")
    assert total >= len(SECURED) * 18


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def world(stack: Stack, devhost: Any, app_container: Any) -> dict[str, Any]:
    """Two provisioned tenants, A and B, with A's devices enrolled (through the poll when it exists)."""
    from shared_code.intune.devices import EnrolledDevice, StaticEnrolledDevices
    from shared_code.intune.wiring import build_enrolled_devices, use_enrolled_devices

    sim = stack.sim
    tenants = {}
    for name, seed in (("A", 11), ("B", 12)):
        summary = sim.create_tenant("small", seed=seed)
        truth = sim.truth(summary["tenant_id"], summary["enrollment_groups"])
        tenants[name] = {"id": summary["tenant_id"], "groups": summary["enrollment_groups"], "truth": truth}
    polling = "dispatch_polls" in devhost.timer_names
    if not polling and build_enrolled_devices not in app_container._services:
        # Until the enrollment feature lands, enroll the ground truth directly in the Intune flows' lookup.
        static = StaticEnrolledDevices()
        for t in tenants.values():
            for d in t["truth"]["devices"]:
                static.add(t["id"], EnrolledDevice(device_id=d["deviceId"], user_id=d["ownerId"],
                                                   operating_system=d["operatingSystem"]))
        use_enrolled_devices(app_container, static)
    for t in tenants.values():
        body = {"enrollmentGroups": t["groups"], "roleMappings": []}
        await stack.call("PUT", "/tenants/{tenantId}", token=stack.manage, ids={"tenantId": t["id"]}, json=body,
                         expect=201)
    if polling:
        await devhost.run_timer("dispatch_polls")
        await devhost.drain_queues(120)
    return tenants


def _has(path: str) -> bool:
    return any(r.path == path for r in SECURED)


async def test_valid_tokens_reach_every_route_and_responses_match_the_schema(stack: Stack, world: dict[str, Any]):
    a = world["A"]
    device = a["truth"]["devices"][0]
    ids = {"tenantId": a["id"], "deviceId": device["deviceId"], "userId": device["ownerId"]}
    ok: set[tuple[str, str]] = set()

    async def hit(method: str, template: str, token: str, expect: int | tuple[int, ...], **kw: Any) -> httpx.Response:
        resp = await stack.call(method, template, token=token, ids=ids, expect=expect, **kw)
        if 200 <= resp.status_code < 300:
            ok.add((method, template))
        return resp

    await hit("PUT", "/tenants/{tenantId}", stack.manage, 200, json={"enrollmentGroups": a["groups"]})
    await hit("GET", "/tenants/{tenantId}", stack.read, 200)
    if _has("/tenants/{tenantId}/sync"):
        await hit("POST", "/tenants/{tenantId}/sync", stack.manage, 200, params={"dryRun": "true"})
        await hit("POST", "/tenants/{tenantId}/sync", stack.manage, 202)
    if _has("/tenants/{tenantId}/devices"):
        await hit("GET", "/tenants/{tenantId}/devices", stack.read, 200, params={"limit": "5"})
    if _has("/tenants/{tenantId}/events"):
        await hit("GET", "/tenants/{tenantId}/events", stack.read, 200, params={"limit": "5"})
    if _has("/tenants/{tenantId}/deactivations/approve"):
        # Nothing is staged for a freshly polled tenant: 409 conflict (documented); staging is the guard tests' job.
        await hit("POST", "/tenants/{tenantId}/deactivations/approve", stack.manage, (202, 409),
                  json={"planId": "plan-" + "0" * 24})
    threat = {"level": "high", "detectedAt": "2026-11-30T10:00:00Z", "threats": ["jailbreak"],
              "idempotencyKey": "k-" + uuid.uuid4().hex}
    await hit("PUT", "/tenants/{tenantId}/devices/{deviceId}/threat", stack.manage, 202, json=threat)
    await hit("GET", "/tenants/{tenantId}/devices/{deviceId}/threat", stack.read, 200)
    if device["operatingSystem"] in ("iOS", "iPadOS"):
        await hit("POST", "/tenants/{tenantId}/devices/{deviceId}/inventory", stack.manage, 202)
        await hit("GET", "/tenants/{tenantId}/devices/{deviceId}/inventory", stack.read, 200)
    await hit("GET", "/tenants/{tenantId}/users/{userId}/mam", stack.read, 200)
    user_token = stack.sim.call("POST", "/_sim/tokens/user", json={
        "tenant_id": a["id"], "user_id": device["ownerId"], "scopes": ["Console.SignIn"],
        "audience": "api://mtd-connector"})["access_token"]
    stack.secrets.add(user_token)
    await hit("POST", "/sso/roles", stack.read, 200, json={"accessToken": user_token})
    print(f"routes answered 2xx with valid tokens: {len(ok)} of {len(SECURED)}: {sorted(ok)}")


async def test_tenant_isolation_ids_of_a_never_reach_b(stack: Stack, world: dict[str, Any]):
    a, b = world["A"], world["B"]
    a_devices = {d["deviceId"].lower() for d in a["truth"]["devices"]} | {
        d["id"].lower() for d in a["truth"]["devices"]}
    a_users = {d["ownerId"].lower() for d in a["truth"]["devices"] if d.get("ownerId")}
    device, user = next(iter(sorted(a_devices))), next(iter(sorted(a_users)))
    probes = 0
    for route in SECURED:
        if "{tenantId}" not in route.path:
            continue
        token = stack.manage
        kwargs: dict[str, Any] = {}
        if route.path.endswith("/threat") and route.method == "PUT":
            kwargs["json"] = {"level": "low", "detectedAt": "2026-11-30T10:00:00Z"}
        elif route.path == "/tenants/{tenantId}" and route.method == "PUT":
            continue  # provisioning B with a body has no A ids to leak
        elif route.path == "/tenants/{tenantId}" and route.method == "DELETE":
            continue
        elif route.path.endswith("/sync"):
            kwargs["params"] = {"dryRun": "true"}
        if route.path.endswith("/mam"):
            kwargs["params"] = {"deviceId": device}
        resp = await stack.call(route.method, route.path, token=token,
                                ids={"tenantId": b["id"], "deviceId": device, "userId": user}, **kwargs)
        probes += 1
        text = resp.text.lower()
        leaked = {x for x in a_devices | a_users if x in text and x not in (device, user)}
        assert not leaked, (route.method, route.path, leaked)
        if "{deviceId}" in route.path:
            # A's device addressed under B: not found (never A's data).
            assert resp.status_code == 404, (route.method, route.path, resp.status_code, resp.text[:200])
    # A user token of tenant A cannot be used to read B's role mappings: the tenant comes from the token.
    print(f"tenant isolation: {probes} cross-tenant probes")
    assert probes >= 5


async def _poll(stack: Stack, devhost: Any, tenant_id: str) -> None:
    """One poll of the tenant, requested over the API (POST /sync → 202) and run by the queue trigger."""
    await stack.call("POST", "/tenants/{tenantId}/sync", token=stack.manage, ids={"tenantId": tenant_id}, expect=202)
    await devhost.drain_queues(120)


async def test_valid_manage_token_approves_a_staged_mass_deactivation_and_deletes_the_tenant(
    stack: Stack, world: dict[str, Any], devhost: Any, app_container: Any
):
    """The writes the in-process auth matrix stops short of: approve (202, something staged) and DELETE (204)."""
    from shared_code.adapters.http_retry import UsageMeter

    assert "dispatch_polls" in devhost.timer_names, "the enrollment feature (polls, guard) is registered"
    sim = stack.sim
    summary = sim.create_tenant("small", seed=13)
    tid = summary["tenant_id"]
    # Enroll through the root with the most devices only, so emptying it deactivates everything it enrolled.
    root = max(summary["enrollment_groups"], key=lambda g: len(sim.truth(tid, [g])["devices"]))
    truth = sim.truth(tid, [root])
    # The default guard (500 / 20 %) allows floor(20 % of enrolled) deactivations: emptying the group exceeds it.
    assert truth["devices"]
    ids = {"tenantId": tid}
    await stack.call("PUT", "/tenants/{tenantId}", token=stack.manage, ids=ids, expect=201,
                     json={"enrollmentGroups": [root]})  # default guard: 500 / 20 %
    await _poll(stack, devhost, tid)
    # The connector's own credential worked: the connector-level state says so (issue 11 §4).
    connector = (await stack.call("GET", "/connector", token=stack.read, expect=200)).json()
    assert connector["credential"]["state"] == "ok", connector
    page = (await stack.call("GET", "/tenants/{tenantId}/devices", token=stack.read, ids=ids, expect=200)).json()
    enrolled = [d for d in page["devices"] if d.get("state") == "enrolled"]
    # Owner transitively in the group (truth), plus owned devices that are direct members of it.
    assert len(enrolled) >= len(truth["devices"]), (len(enrolled), len(truth["devices"]))

    # Empty the enrollment group (direct members, read from Graph as the connector would see them).
    root_id = truth["resolved_groups"][root]
    graph = app_container.graph(tid, UsageMeter())
    try:
        members = [m async for p in graph.pages(f"/groups/{root_id}/members", permission="Directory.Read.All")
                   for m in p.get("value", ())]
    finally:
        await graph.aclose()
    assert members
    for member in members:
        sim.mutate(tid, "remove_member", group_id=root_id, member_id=member["id"])
    await _poll(stack, devhost, tid)
    doc = (await stack.call("GET", "/tenants/{tenantId}", token=stack.read, ids=ids, expect=200)).json()
    staged = doc["status"]["stagedDeactivations"]
    assert staged and staged["state"] == "deactivations_staged" and staged["staged"] == len(enrolled), staged

    # A read token may not approve (403); the manage token does (202), and the poll it enqueues applies them.
    plan = {"planId": staged["planId"]}
    await stack.call("POST", "/tenants/{tenantId}/deactivations/approve", token=stack.read, ids=ids, expect=403,
                     json=plan)
    # Another plan than the staged one: 409 with the current plan, which the console then approves by its id.
    stale = await stack.call("POST", "/tenants/{tenantId}/deactivations/approve", token=stack.manage, ids=ids,
                             expect=409, json={"planId": "plan-" + "0" * 24})
    assert stale.json()["currentPlan"]["planId"] == staged["planId"], stale.text
    approval = await stack.call("POST", "/tenants/{tenantId}/deactivations/approve", token=stack.manage, ids=ids,
                                expect=202, json=plan)
    assert approval.json()["approved"] == staged["staged"], approval.text
    await devhost.drain_queues(120)
    page = (await stack.call("GET", "/tenants/{tenantId}/devices", token=stack.read, ids=ids, expect=200)).json()
    assert not [d for d in page["devices"] if d.get("state") == "enrolled"], page["devices"][:3]
    # Nothing staged any more: a second approval is a conflict (documented 409).
    gone = await stack.call("POST", "/tenants/{tenantId}/deactivations/approve", token=stack.manage, ids=ids,
                            expect=409, json=plan)
    assert gone.json()["currentPlan"] is None

    # DELETE: a read token is refused (403); the manage token deprovisions (204), idempotently; history stays readable.
    await stack.call("DELETE", "/tenants/{tenantId}", token=stack.read, ids=ids, expect=403)
    await stack.call("DELETE", "/tenants/{tenantId}", token=stack.manage, ids=ids, expect=204)
    await stack.call("DELETE", "/tenants/{tenantId}", token=stack.manage, ids=ids, expect=204)
    doc = (await stack.call("GET", "/tenants/{tenantId}", token=stack.read, ids=ids, expect=200)).json()
    assert doc["state"] == "deprovisioned", doc["state"]
    events = (await stack.call("GET", "/tenants/{tenantId}/events", token=stack.read, ids=ids, expect=200)).json()
    assert events["events"], "the change feed survives deprovisioning"


async def test_every_secured_route_answered_2xx_to_a_valid_token(stack: Stack, world: dict[str, Any]):
    # Over the module (the tests above): every registered route reached its action and succeeded at least once.
    succeeded = {(e.method, e.template) for e in stack.exchanges if 200 <= e.status < 300}
    missing = {(r.method, r.path) for r in SECURED} - succeeded
    print(f"routes answered 2xx with a valid token: {len(SECURED) - len(missing)} of {len(SECURED)}")
    assert not missing, sorted(missing)


async def test_no_secret_appears_in_any_log_record_or_response(stack: Stack, world: dict[str, Any]):
    # Runs last in this module: by now the module has provisioned, reported, fetched and rejected on every route.
    assert stack.exchanges and stack.records
    secrets = {s for s in stack.secrets if s and len(s) >= 16}
    lines = []
    for record in stack.records:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        lines.append(message)
        if record.exc_info and record.exc_info[1] is not None:
            lines.append(repr(record.exc_info[1]))
    bodies = [e.body for e in stack.exchanges]
    for where, texts in (("log", lines), ("response", bodies)):
        for text in texts:
            for secret in secrets:
                assert secret not in text, f"a secret appears in a {where}: {text[:120]!r}"
            # Any JWT-shaped string (bearer token, client assertion, user token) is a leak too.
            assert not JWT_RE.search(text), f"a JWT appears in a {where}: {text[:120]!r}"
    print(f"no-secrets: {len(lines)} log records, {len(bodies)} response bodies, {len(secrets)} secrets checked")
    # The search is only worth something if it searched a real cycle for real secrets: the client secrets, the
    # console tokens of every auth-matrix case and the user token at least.
    assert len(secrets) >= 10 and len(lines) >= 100 and len(bodies) >= 100
