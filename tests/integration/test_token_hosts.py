"""Tokens go only to the hosts they are for (issue 11 §2), through the real adapters against the simulator.

A recording transport sits under the connector's own Graph client (the retry layer and everything above it are the
real ones) and notes every request that actually left the process, with whether it carried a bearer token.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from shared_code.adapters.graph import GraphClient, GraphUrlRejectedError
from shared_code.enrollment.cursors import DEVICES, GROUPS
from shared_code.enrollment.service import build_enrollment_service
from shared_code.errors import FatalError


class RecordingTransport(httpx.AsyncBaseTransport):
    """A real HTTPS transport that remembers (host, port, path, had a token) of every request it sent."""

    def __init__(self, ca_path: str) -> None:
        self.inner = httpx.AsyncHTTPTransport(retries=0, verify=ssl.create_default_context(cafile=ca_path))
        self.sent: list[tuple[str, int | None, str, bool]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.url.host, request.url.port, request.url.path, "authorization" in request.headers))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def tenant(sim: Any) -> str:
    return str(sim.create_tenant("small", seed=4343)["tenant_id"])


@pytest.fixture
async def graph(sim: Any, app_container: Any, tenant: str) -> Any:
    recorder = RecordingTransport(sim.info["ca_path"])
    client = GraphClient(tenant_id=tenant, credentials=app_container.credentials,
                         base_url=app_container.settings.graph_base_url, max_retries=2, transport=recorder)
    try:
        yield client, recorder
    finally:
        await client.aclose()
        sim.clear_faults()


def _foreign_urls(graph_base: str) -> list[str]:
    parts = urlsplit(graph_base)
    host, port = parts.hostname, parts.port or 443
    return [
        "https://redirected.invalid/v1.0/users",  # another host
        f"https://{host}:{port + 1}/v1.0/users",  # same host, another port
        f"http://{host}:{port}/v1.0/users",  # plain http
        f"https://{host}:{port}/_sim/info",  # same origin, not under /v1.0 or /beta
        f"https://{host}:{port}/v1.0/../_sim/info",  # dot segments
        f"https://{host}:{port}/v1.0/%2e%2e/_sim/info",  # encoded dot segments
        f"https://{host}:{port}@redirected.invalid/v1.0/users",  # userinfo trick: the host is redirected.invalid
    ]


async def test_no_request_leaves_for_a_url_outside_graph(sim: Any, graph: Any) -> None:
    client, recorder = graph
    for url in _foreign_urls(sim.info["graph_base_url"]):
        with pytest.raises(GraphUrlRejectedError):
            await client.get_json(url, permission="User.Read.All")
        with pytest.raises(GraphUrlRejectedError):
            async for _ in client.pages(url, permission="User.Read.All"):
                pass
    assert recorder.sent == []
    # A genuine absolute Graph URL (what a nextLink is) still works, with the token.
    page = await client.get_json(sim.info["graph_base_url"].rstrip("/") + "/v1.0/users?$top=2",
                                 permission="User.Read.All")
    assert len(page["value"]) == 2 and recorder.sent[-1][3] is True


async def test_a_redirect_is_an_error_and_is_not_followed(sim: Any, graph: Any, tenant: str) -> None:
    client, recorder = graph
    sim.fault("redirect", match={"tenant": tenant, "path_prefix": "/v1.0/users"}, count=1)
    with pytest.raises(FatalError, match="redirect"):
        await client.get_json("/users", permission="User.Read.All")
    assert [s[0] for s in recorder.sent] == [urlsplit(sim.info["graph_base_url"]).hostname]
    # The SDK path has no RedirectHandler either: the 3xx is not followed to the Location host.
    sim.fault("redirect", match={"tenant": tenant, "path_prefix": "/v1.0/groups"}, count=1)
    await client.ensure_token()
    # kiota's reaction to a bare 3xx is its own; only where the request went matters here.
    with contextlib.suppress(Exception):
        await client.sdk.groups.get()
    assert all(host != "redirected.invalid" for host, *_ in recorder.sent), recorder.sent


async def test_a_non_json_body_is_a_clear_error(sim: Any, graph: Any, tenant: str) -> None:
    client, _ = graph
    sim.fault("html", match={"tenant": tenant, "path_prefix": "/v1.0/users"}, count=2)
    with pytest.raises(FatalError, match="not JSON"):
        await client.get_json("/users", permission="User.Read.All")
    with pytest.raises(FatalError, match="not JSON"):
        async for _ in client.pages("/users", permission="User.Read.All"):
            pass


async def test_a_stored_cursor_pointing_elsewhere_starts_a_fresh_round(sim: Any, app_container: Any) -> None:
    from shared_code.tenants import TenantConfig

    service = app_container.service(build_enrollment_service)
    summary = sim.create_tenant("small", seed=4344)
    tid = summary["tenant_id"]
    await service.tenants.put_config(TenantConfig(tenant_id=tid, enrollment_groups=tuple(summary["enrollment_groups"]),
                                                  guard_max_percent=100.0))
    assert (await service.run_poll(tid))["result"] == "ok"
    evil = "https://redirected.invalid/v1.0/groups/delta?$deltatoken=stolen"
    for stream in (DEVICES, GROUPS):
        cursor = await service.cursors.get(tid, stream)
        assert cursor.committed.startswith(sim.info["graph_base_url"])
        await service.cursors.put(tid, stream, replace(cursor, committed=evil))
        result = await service.run_poll(tid)
        assert result["result"] == "ok", result
        assert (await service.cursors.get(tid, stream)).committed.startswith(sim.info["graph_base_url"]), stream
    assert result["mode"] == "full", result  # a dead groups cursor means a full reconcile


async def test_intune_urls_outside_the_service_domains_never_get_the_token(sim: Any, app_container: Any) -> None:
    import time
    from dataclasses import replace as dc_replace

    from shared_code.adapters.intune import IntuneUrlRejectedError
    from shared_code.intune.discovery import DiscoveryService, IntuneServiceMissingError
    from shared_code.intune.status import INTUNE, iso
    from shared_code.intune.wiring import build_intune
    from shared_code.tenants import TenantConfig

    services = app_container.service(build_intune)
    summary = sim.create_tenant("small", seed=4345)
    tid = summary["tenant_id"]
    await services.tenants.put_config(TenantConfig(tenant_id=tid, enrollment_groups=("x",)))
    found = await services.discovery.endpoint(tid, "tenant")
    assert urlsplit(found.url).hostname in app_container.settings.intune_service_domains

    # At use: the adapter refuses before any token is fetched or any byte leaves (not "unreachable": refused).
    for url in ("https://intune.evil.example/StatelessPartnerTenantDataSyncService",
                "http://localhost/StatelessPartnerTenantDataSyncService",
                "https://localhost@evil.example/StatelessPartnerTenantDataSyncService"):
        with pytest.raises(IntuneUrlRejectedError):
            await services.intune.heartbeat(url, tid)

    # A tampered copy in the tenant's status is not used: the next use rediscovers from Graph.
    tampered = {"state": "available", "provider": found.provider, "discoveredAt": iso(time.time())}
    await services.tenants.update_status(tid, INTUNE, {"services": {
        "tenant": {**tampered, "url": "https://intune.evil.example/t"},
        "device": {**tampered, "url": "https://intune.evil.example/d"},
    }})
    services.discovery.invalidate(tid)
    before = services.discovery.discoveries
    again = await services.discovery.endpoint(tid, "tenant")
    assert (again.url, services.discovery.discoveries) == (found.url, before + 1)

    # At discovery: Graph listing endpoints outside the configured cloud's domains is refused.
    public_cloud = DiscoveryService(
        settings=dc_replace(app_container.settings, intune_service_domains=("manage.microsoft.com",)),
        graph_for=app_container.graph, tenants=services.tenants, now=time.time,
    )
    with pytest.raises(IntuneServiceMissingError, match="outside the Intune service domains"):
        await public_cloud.endpoint(tid, "tenant", refresh=True)

    # A redirect or an HTML page from Intune is a clear error, not a followed hop or a decode crash.
    sim.fault("redirect", match={"tenant": tid, "path_prefix": f"/intune/{tid}/"}, count=1)
    sim.fault("html", match={"tenant": tid, "path_prefix": f"/intune/{tid}/"}, count=1)
    try:
        with pytest.raises(FatalError, match="redirect"):
            await services.intune.heartbeat(found.url, tid)
        with pytest.raises(FatalError, match="non-JSON"):
            await services.intune.heartbeat(found.url, tid)
    finally:
        sim.clear_faults()
