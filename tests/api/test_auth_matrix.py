"""Auth matrix on EVERY registered route, in process: each bad token → 401/403 problem+json, a good one passes.

The route functions come from ``function_app.app.get_functions()`` (so a new route is covered the moment it is
registered) and are called with ``azure.functions.HttpRequest`` objects, with a container whose console auth is the
real :class:`JwtConsoleAuth` pointed at a local OIDC provider. The "valid token" case stops right after
authentication (``StopAfterAuth``) so this test needs no storage; tests/api/test_api_stack.py repeats the matrix
over HTTP on devhost + simulator + Azurite with simulator-minted tokens and expects 2xx there.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import azure.functions as func
import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization

from functions.http_support import PROBLEM_BASE, ApiError
from shared_code.adapters.console_auth import JwtConsoleAuth
from shared_code.bootstrap import Container, use_container
from shared_code.settings import Settings
from tests.api.oidc_stub import AUDIENCE, CONSOLE_CLIENT_ID, OidcStub
from tests.api.routes import Route, fill_path, registered_routes, required_role, sample_body
from tests.api.tokens import MANAGE, READ, bad_auth_cases

AUTH_OK = 299  # status StopAfterAuth answers with: "authentication and role check passed"


class StopAfterAuth:
    """Wraps the real validator; after a successful check it stops the request before the route's action runs."""

    def __init__(self, inner: JwtConsoleAuth) -> None:
        self.inner = inner
        self.accepted = 0

    async def authenticate(self, authorization: str | None, role: str) -> dict[str, Any]:
        await self.inner.authenticate(authorization, role)
        self.accepted += 1
        raise ApiError(AUTH_OK, "internal-error", "authenticated")


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def stub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OidcStub]:
    s = await OidcStub().start(str(tmp_path_factory.mktemp("oidc-matrix")))
    yield s
    await s.stop()


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def auth(stub: OidcStub) -> AsyncIterator[StopAfterAuth]:
    settings = Settings(storage_connection="UseDevelopmentStorage=true", client_id="c", client_secret="s",
                        authority_host=stub.base_url, console_audience=AUDIENCE, console_tenant_id=stub.tenant_id,
                        console_allowed_client_ids=(CONSOLE_CLIENT_ID,))
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=stub.ca_path)) as http:
        wrapped = StopAfterAuth(JwtConsoleAuth(settings, http=http))
        use_container(Container(settings, console_auth=wrapped))
        yield wrapped
        use_container(None)


def _request(route: Route, authorization: str | None) -> func.HttpRequest:
    path = fill_path(route.path)
    body = sample_body(route.method, route.path)
    params = dict(zip(_names(route.path), path.strip("/").split("/"), strict=False))
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    return func.HttpRequest(
        method=route.method, url=f"http://localhost/api{path}", headers=headers, params={},
        route_params={k.strip("{}"): v for k, v in params.items() if k.startswith("{")},
        body=json.dumps(body).encode() if body is not None else b"",
    )


def _names(path: str) -> list[str]:
    return path.strip("/").split("/")


SECURED = [r for r in registered_routes() if r.path != "/health"]


def test_matrix_covers_every_registered_route():
    # Placeholders register nothing yet; the list grows as owners land routes — each is covered automatically.
    assert {(r.method, r.path) for r in SECURED} | {("GET", "/health")} == {
        (r.method, r.path) for r in registered_routes()
    }


@pytest.mark.parametrize("route", SECURED, ids=[f"{r.method} {r.path}" for r in SECURED])
async def test_bad_tokens_are_refused_and_good_ones_pass(route: Route, stub: OidcStub, auth: StopAfterAuth):
    role = required_role(route.method, route.path)
    assert role in (READ, MANAGE)
    pem = stub.keys[-1].private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    cases = bad_auth_cases(lambda roles, **o: stub.token(roles, **o), write=role == MANAGE, hmac_secret=pem)
    for case in cases:
        resp = await route.user_function(_request(route, case.header))
        assert resp.status_code == case.status, case.name
        assert resp.mimetype == "application/problem+json", case.name
        body = json.loads(resp.get_body())
        assert body["type"] == PROBLEM_BASE + ("unauthenticated" if case.status == 401 else "forbidden")
        assert "eyJ" not in resp.get_body().decode(), case.name  # no token echoed
        if case.status == 401:
            # One generic detail for every reason: which check failed is logged, never told to the caller.
            assert body["detail"] == "the bearer token is missing or invalid", case.name
    before = auth.accepted
    good_roles = [[MANAGE]] if role == MANAGE else [[READ], [MANAGE]]
    for roles in good_roles:
        resp = await route.user_function(_request(route, "Bearer " + stub.token(roles)))
        assert resp.status_code == AUTH_OK, roles
    assert auth.accepted == before + len(good_roles)


async def test_health_is_anonymous_and_says_nothing_else():
    health = next(r for r in registered_routes() if r.path == "/health")
    resp = await health.user_function(func.HttpRequest(method="GET", url="http://localhost/api/health", body=b""))
    assert resp.status_code == 200
    assert json.loads(resp.get_body()) == {"status": "ok"}
