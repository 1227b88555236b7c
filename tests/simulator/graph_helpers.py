"""In-process harness for the Graph half of the simulator (no TLS, no Entra): a stand-in auth middleware reads the
principal from a test header so route, paging, delta and permission rules can be exercised quickly."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from simulator import graph
from simulator.auth import CLOCK, FAULTS, THROTTLE, Principal
from simulator.directory import World
from simulator.faults import Faults
from simulator.throttle import Clock, Throttle

APP_ID = "11111111-2222-3333-4444-555555555555"
CONNECTOR_ROLES = ("Device.Read.All", "GroupMember.Read.All", "User.Read.All", "Application.Read.All",
                   "DeviceManagementApps.Read.All")


def app_principal(tenant_id: str, roles: tuple[str, ...] | list[str] = CONNECTOR_ROLES) -> Principal:
    return Principal(tenant_id, APP_ID, "https://graph.microsoft.com", frozenset(roles), frozenset(), None)


def user_principal(tenant_id: str, user_id: str, scopes: tuple[str, ...] = ("User.Read",)) -> Principal:
    return Principal(tenant_id, APP_ID, "https://graph.microsoft.com", frozenset(), frozenset(scopes), user_id)


def _encode(p: Principal) -> str:
    return json.dumps({"tenant_id": p.tenant_id, "app_id": p.app_id, "roles": sorted(p.roles),
                       "scopes": sorted(p.scopes), "user_id": p.user_id})


@web.middleware
async def _principal_mw(request: web.Request, handler: Any) -> web.StreamResponse:
    raw = request.headers.get("X-Test-Principal")
    if raw:
        d = json.loads(raw)
        request["principal"] = Principal(d["tenant_id"], d["app_id"], "https://graph.microsoft.com",
                                         frozenset(d["roles"]), frozenset(d["scopes"]), d["user_id"])
    return await handler(request)


class Harness:
    """aiohttp TestServer with graph + admin routes, a core Clock/Faults/Throttle, and helpers."""

    def __init__(self, world: World | None = None) -> None:
        self.world = world or World("https://sim.invalid")
        self.clock = Clock()
        self.faults = Faults()
        self.throttle = Throttle(self.clock, self.world.user_count)
        self.client: TestClient | None = None

    async def __aenter__(self) -> Harness:
        app = web.Application(middlewares=[_principal_mw])
        app[CLOCK] = self.clock
        app[FAULTS] = self.faults
        app[THROTTLE] = self.throttle
        graph.register(app, self.world)
        graph.register_admin(app, self.world)
        self.client = TestClient(TestServer(app))
        await self.client.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.client is not None
        await self.client.close()

    def rel(self, url: str) -> str:
        """nextLink/deltaLink (absolute, same base) → path+query for the test client."""
        parts = urlsplit(url)
        return parts.path + ("?" + parts.query if parts.query else "")

    async def req(self, method: str, url: str, principal: Principal | None, *, headers: dict[str, str] | None = None,
                  body: Any = None) -> tuple[int, Any, dict[str, str]]:
        assert self.client is not None
        h = dict(headers or {})
        if principal is not None:
            h["X-Test-Principal"] = _encode(principal)
        if url.startswith("http"):
            url = self.rel(url)
        kw: dict[str, Any] = {"headers": h}
        if body is not None:
            kw["data"] = json.dumps(body)
            h["Content-Type"] = "application/json"
        async with self.client.request(method, url, **kw) as resp:
            raw = await resp.read()
            ct = resp.headers.get("Content-Type", "")
            data: Any = json.loads(raw) if raw and "json" in ct else raw.decode()
            return resp.status, data, dict(resp.headers)

    async def get(self, url: str, principal: Principal | None, **kw: Any) -> tuple[int, Any, dict[str, str]]:
        return await self.req("GET", url, principal, **kw)

    async def walk(self, url: str, principal: Principal, *, headers: dict[str, str] | None = None,
                   link: str = "@odata.nextLink") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Follow nextLinks; return (all items, all page bodies)."""
        items: list[dict[str, Any]] = []
        pages: list[dict[str, Any]] = []
        while url:
            status, body, _ = await self.get(url, principal, headers=headers)
            assert status == 200, body
            pages.append(body)
            items.extend(body["value"])
            url = body.get(link)
        return items, pages

    async def delta_round(self, url: str, principal: Principal) -> tuple[list[dict[str, Any]], str]:
        """One delta round: follow nextLinks to the deltaLink; return (rows, deltaLink)."""
        rows: list[dict[str, Any]] = []
        while True:
            status, body, _ = await self.get(url, principal)
            assert status == 200, body
            assert not ("@odata.nextLink" in body and "@odata.deltaLink" in body)
            rows.extend(body["value"])
            if "@odata.deltaLink" in body:
                return rows, body["@odata.deltaLink"]
            url = body["@odata.nextLink"]

    async def mutate(self, tenant_id: str, **op: Any) -> dict[str, Any]:
        status, body, _ = await self.req("POST", f"/_sim/tenants/{tenant_id}/mutations", None, body=op)
        assert status == 200, body
        return body  # type: ignore[no-any-return]
