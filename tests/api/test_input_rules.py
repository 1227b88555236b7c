"""Input rules every route shares, in process (no storage: each case is refused before the action touches any).

* ids in the path or query are canonical GUIDs (8-4-4-4-12): braces, ``urn:uuid:``, missing dashes and padding are
  refused with 400 ``invalid-parameter`` naming the parameter — ``uuid.UUID`` would accept and rewrite them, so one
  tenant could be addressed under several spellings;
* threat levels are lower case exactly as openapi.yaml lists them; ``Idempotency-Key`` is 1..128 characters;
* ``POST /sso/roles`` refuses unknown fields and a non-canonical ``tenantId``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest

from functions.http_support import PROBLEM_BASE
from shared_code.bootstrap import Container, use_container
from shared_code.settings import Settings
from tests.api.routes import Route, fill_path, registered_routes, sample_body

GUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
MALFORMED = [
    "{" + GUID + "}",
    GUID.replace("-", ""),
    "urn:uuid:" + GUID,
    GUID + "0",
    GUID[:-1],
    " " + GUID,
    "not-a-guid",
    GUID + "\n",  # a regex `$` would accept it; Table Storage refuses such a PartitionKey
]


class AcceptAll:
    """Console auth that lets every request through (these tests are about what comes after authentication)."""

    async def authenticate(self, authorization: str | None, role: str) -> dict[str, Any]:
        return {"oid": "test", "roles": [role]}


@pytest.fixture(autouse=True)
def _container() -> Iterator[None]:
    settings = Settings(storage_connection="UseDevelopmentStorage=true", client_id="c", client_secret="s")
    use_container(Container(settings, console_auth=AcceptAll()))  # type: ignore[arg-type]
    yield
    use_container(None)


def _call(route: Route, ids: dict[str, str], *, body: Any = None, params: dict[str, str] | None = None,
          headers: dict[str, str] | None = None) -> func.HttpRequest:
    path = fill_path(route.path, **ids)
    names = route.path.strip("/").split("/")
    values = path.strip("/").split("/")
    route_params = {n.strip("{}"): v for n, v in zip(names, values, strict=True) if n.startswith("{")}
    if body is None:
        body = sample_body(route.method, route.path)
    return func.HttpRequest(
        method=route.method, url=f"http://localhost/api{path}", params=params or {}, route_params=route_params,
        headers={"Content-Type": "application/json", "Authorization": "Bearer x", **(headers or {})},
        body=json.dumps(body).encode() if body is not None else b"",
    )


def _problem(resp: func.HttpResponse) -> dict[str, Any]:
    assert resp.mimetype == "application/problem+json", resp.get_body()[:200]
    problem: dict[str, Any] = json.loads(resp.get_body())
    return problem


def _route(method: str, path: str) -> Route:
    return next(r for r in registered_routes() if (r.method, r.path) == (method, path))


WITH_IDS = [r for r in registered_routes() if "{" in r.path]
PARAMS = sorted({p for r in WITH_IDS for p in ("tenantId", "deviceId", "userId") if "{" + p + "}" in r.path})


@pytest.mark.parametrize("route", WITH_IDS, ids=[f"{r.method} {r.path}" for r in WITH_IDS])
async def test_malformed_path_ids_are_refused_with_invalid_parameter(route: Route) -> None:
    refused = 0
    for param in PARAMS:
        if "{" + param + "}" not in route.path:
            continue
        for bad in MALFORMED:
            ids = {p: GUID for p in PARAMS} | {param: bad}
            resp = await route.user_function(_call(route, ids))
            assert resp.status_code == 400, (param, bad, resp.get_body()[:200])
            problem = _problem(resp)
            assert problem["type"] == PROBLEM_BASE + "invalid-parameter", (param, bad, problem)
            assert problem["field"] == param, (param, bad, problem)
            refused += 1
    assert refused >= len(MALFORMED)


async def test_mam_device_query_must_be_a_canonical_guid() -> None:
    route = _route("GET", "/tenants/{tenantId}/users/{userId}/mam")
    for bad in [*MALFORMED, ""]:
        resp = await route.user_function(_call(route, {"tenantId": GUID, "userId": GUID}, params={"deviceId": bad}))
        problem = _problem(resp)
        assert (resp.status_code, problem["type"], problem["field"]) == (
            400, PROBLEM_BASE + "invalid-parameter", "deviceId"), (bad, problem)


@pytest.mark.parametrize("level", ["High", "HIGH", "Secured", "critical", ""])
async def test_threat_levels_are_lower_case_only(level: str) -> None:
    route = _route("PUT", "/tenants/{tenantId}/devices/{deviceId}/threat")
    body = {"level": level, "detectedAt": "2026-11-30T10:00:00Z"}
    resp = await route.user_function(_call(route, {"tenantId": GUID, "deviceId": GUID}, body=body))
    problem = _problem(resp)
    assert (resp.status_code, problem["type"], problem["field"]) == (
        400, PROBLEM_BASE + "validation-error", "level"), problem


@pytest.mark.parametrize("key", ["", "k" * 129])
async def test_idempotency_key_header_is_bounded(key: str) -> None:
    route = _route("PUT", "/tenants/{tenantId}/devices/{deviceId}/threat")
    body = {"level": "high", "detectedAt": "2026-11-30T10:00:00Z"}
    resp = await route.user_function(_call(route, {"tenantId": GUID, "deviceId": GUID}, body=body,
                                           headers={"Idempotency-Key": key}))
    problem = _problem(resp)
    assert (resp.status_code, problem["type"], problem["field"]) == (
        400, PROBLEM_BASE + "invalid-parameter", "Idempotency-Key"), problem


@pytest.mark.parametrize(
    ("body", "type_", "field"),
    [
        ({"accessToken": "x", "tenantId": "{" + GUID + "}"}, "validation-error", "tenantId"),
        ({"accessToken": "x", "tenantId": GUID.replace("-", "")}, "validation-error", "tenantId"),
        ({"accessToken": "x", "tenant": GUID}, "unknown-field", "tenant"),
        ({"tenantId": GUID}, "validation-error", "accessToken"),
        ({"accessToken": ""}, "validation-error", "accessToken"),
        # A well-formed body whose token is no sign-in token: 401, like every invalid sign-in token (issue 11 §1).
        ({"accessToken": "not a jwt"}, "user-token-rejected", "accessToken"),
    ],
)
async def test_sso_body_is_strict(body: dict[str, Any], type_: str, field: str) -> None:
    route = _route("POST", "/sso/roles")
    resp = await route.user_function(_call(route, {}, body=body))
    problem = _problem(resp)
    status = 401 if type_ == "user-token-rejected" else 400
    assert (resp.status_code, problem["type"], problem["field"]) == (status, PROBLEM_BASE + type_, field), problem


def test_the_malformed_spellings_are_ones_uuid_would_have_accepted() -> None:
    # Why the rule is worth a test: the standard library normalises these into the same tenant id.
    accepted = [m for m in MALFORMED if _uuid_ok(m)]
    assert len(accepted) >= 3, accepted


def _uuid_ok(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("path", ["/tenants/{tenantId}/devices", "/tenants/{tenantId}/events"])
async def test_limit_with_a_non_ascii_digit_is_a_400(path: str) -> None:
    route = _route("GET", path)
    resp = await route.user_function(_call(route, {"tenantId": GUID}, params={"limit": "²"}))
    assert resp.status_code == 400, resp.get_body()[:200]
