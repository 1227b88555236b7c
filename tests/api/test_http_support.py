"""The shared validators and the error mapping of functions/http_support.py."""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceNotFoundError, ServiceRequestError

from functions import http_support as hs
from functions.http_support import MANAGE, READ, ApiError, RequestContext, handle, strict_object
from shared_code.bootstrap import Container, use_container
from shared_code.errors import (
    AuthenticationError,
    ConflictError,
    ConsentRequiredError,
    FatalError,
    ForbiddenError,
    NotFoundError,
    PermissionMissingError,
    RetriableError,
    ValidationError,
)
from shared_code.settings import Settings
from shared_code.validation import Bool, DateTime, Guid, Int, List, Obj, Prop, Str

GUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


class AcceptAll:
    """Console auth stand-in for these tests (the real validator is tested in test_console_auth.py)."""

    async def authenticate(self, authorization: str | None, role: str) -> dict[str, Any]:
        if authorization != "Bearer ok":
            raise AuthenticationError("missing bearer token")
        return {"roles": [READ]}


@pytest.fixture
def services():
    c = Container(Settings(storage_connection="UseDevelopmentStorage=true", client_id="x", client_secret="s"),
                  console_auth=AcceptAll())
    use_container(c)
    yield c
    use_container(None)


def _req(body: bytes = b"", params: dict[str, str] | None = None, route: dict[str, str] | None = None,
         headers: dict[str, str] | None = None, method: str = "POST") -> func.HttpRequest:
    return func.HttpRequest(method=method, url="http://h/api/x", body=body, params=params or {},
                            route_params=route or {}, headers={"Authorization": "Bearer ok", **(headers or {})})


def _problem(resp: func.HttpResponse) -> dict[str, Any]:
    assert resp.mimetype == "application/problem+json"
    body = json.loads(resp.get_body())
    assert body["type"].startswith(hs.PROBLEM_BASE)
    assert body["type"][len(hs.PROBLEM_BASE):] in hs.PROBLEM_TYPES
    assert body["status"] == resp.status_code
    return body


TENANT_SCHEMA = Obj({
    "enrollmentGroups": Prop(List(Str(max_length=256), min_items=1, max_items=3, unique=True), required=True),
    "platforms": Prop(List(Str(enum=("iOS", "iPadOS", "Android")), max_items=3)),
    "threshold": Prop(Int(minimum=1, maximum=100)),
    "enabled": Prop(Bool()),
    "owner": Prop(Guid(), nullable=True),
    "at": Prop(DateTime()),
    "roles": Prop(Obj(values=Str(max_length=32), key=Str(max_length=8), max_properties=2)),
    "nested": Prop(Obj({"a": Prop(Int())})),
})


class TestStrictObject:
    def test_valid_body_is_normalised(self):
        out = strict_object({"enrollmentGroups": [" MTD users "], "owner": GUID.upper(), "threshold": 5.0},
                            TENANT_SCHEMA)
        assert out == {"enrollmentGroups": ["MTD users"], "owner": GUID, "threshold": 5}

    @pytest.mark.parametrize(("body", "type_", "field"), [
        ([], "invalid-body", "body"),
        ({}, "validation-error", "enrollmentGroups"),
        ({"enrollmentGroups": ["a"], "extra": 1}, "unknown-field", "extra"),
        ({"enrollmentGroups": ["a"], "nested": {"b": 1}}, "unknown-field", "nested.b"),
        ({"enrollmentGroups": ["a"], "nested": {"a": "1"}}, "validation-error", "nested.a"),
        ({"enrollmentGroups": []}, "validation-error", "enrollmentGroups"),
        ({"enrollmentGroups": ["a", "b", "c", "d"]}, "validation-error", "enrollmentGroups"),
        ({"enrollmentGroups": ["a", "a"]}, "validation-error", "enrollmentGroups[1]"),
        ({"enrollmentGroups": ["x" * 257]}, "validation-error", "enrollmentGroups[0]"),
        ({"enrollmentGroups": ["a\u0000b"]}, "validation-error", "enrollmentGroups[0]"),
        ({"enrollmentGroups": [""]}, "validation-error", "enrollmentGroups[0]"),
        ({"enrollmentGroups": [1]}, "validation-error", "enrollmentGroups[0]"),
        ({"enrollmentGroups": ["a"], "platforms": ["Windows"]}, "validation-error", "platforms[0]"),
        ({"enrollmentGroups": ["a"], "threshold": 0}, "validation-error", "threshold"),
        ({"enrollmentGroups": ["a"], "threshold": True}, "validation-error", "threshold"),
        ({"enrollmentGroups": ["a"], "threshold": 1.5}, "validation-error", "threshold"),
        ({"enrollmentGroups": ["a"], "enabled": "true"}, "validation-error", "enabled"),
        ({"enrollmentGroups": ["a"], "owner": "not-a-guid"}, "validation-error", "owner"),
        ({"enrollmentGroups": ["a"], "enabled": None}, "validation-error", "enabled"),
        ({"enrollmentGroups": ["a"], "at": "2026-01-01"}, "validation-error", "at"),
        ({"enrollmentGroups": ["a"], "at": "2026-01-01T00:00:00"}, "validation-error", "at"),
        ({"enrollmentGroups": ["a"], "roles": {"a": "x", "b": "y", "c": "z"}}, "validation-error", "roles"),
        ({"enrollmentGroups": ["a"], "roles": {"toolongkey": "x"}}, "validation-error", "roles.toolongkey"),
        ({"enrollmentGroups": ["a"], "a/b~": 1}, "unknown-field", "a/b~"),
    ])
    def test_rejections_name_the_field(self, body, type_, field):
        with pytest.raises(ValidationError) as info:
            strict_object(body, TENANT_SCHEMA)
        assert (info.value.kind, info.value.field) == (type_, field)

    def test_datetime_with_zone_and_null_allowed(self):
        out = strict_object({"enrollmentGroups": ["a"], "at": "2026-01-01T00:00:00Z", "owner": None}, TENANT_SCHEMA)
        assert out["owner"] is None and out["at"].endswith("Z")


class TestParams:
    def _ctx(self, services, **kw: Any) -> RequestContext:
        return RequestContext(req=_req(**kw), caller={}, services=services)

    def test_guid_route_param(self, services):
        assert self._ctx(services, route={"tenantId": GUID.upper()}).guid("tenantId") == GUID
        for bad in ["", "x", GUID + "0", GUID.replace("-", ""), "{" + GUID + "}", GUID[:-1] + "g"]:
            with pytest.raises(ValidationError) as info:
                self._ctx(services, route={"tenantId": bad}).guid("tenantId")
            assert (info.value.kind, info.value.field) == ("invalid-parameter", "tenantId")

    @pytest.mark.parametrize(("raw", "ok"), [
        ("1", 1), ("1000", 1000), ("0", None), ("1001", None), ("-1", None), ("1e3", None), (" 5", None),
        ("abc", None), ("9" * 30, None), ("", None), ("+5", None),
    ])
    def test_query_int_range(self, services, raw, ok):
        ctx = self._ctx(services, params={"limit": raw})
        if ok is None:
            with pytest.raises(ValidationError) as info:
                ctx.query_int("limit", default=100, minimum=1, maximum=1000)
            assert info.value.field == "limit"
        else:
            assert ctx.query_int("limit", default=100, minimum=1, maximum=1000) == ok

    def test_query_defaults_bools_and_unknown_params(self, services):
        ctx = self._ctx(services, params={"dryRun": "TRUE", "junk": "1"})
        assert ctx.query_int("limit", default=100, minimum=1, maximum=1000) == 100
        assert ctx.query_bool("dryRun") is True
        with pytest.raises(ValidationError) as info:
            ctx.allow_query("dryRun")
        assert info.value.field == "junk"
        with pytest.raises(ValidationError):
            self._ctx(services, params={"dryRun": "yes"}).query_bool("dryRun")

    def test_json_body_errors(self, services):
        cases = [
            (_req(body=b"{"), 400, "invalid-json"),
            (_req(body=b"[1]"), 400, "invalid-body"),
            (_req(body=b"\xff\xfe"), 400, "invalid-json"),
            (_req(body=b"[" * 100000 + b"]" * 100000), 413, "body-too-large"),
            (_req(body=b"a=b", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415,
             "unsupported-media-type"),
            (_req(body=b'{"a":1}', headers={"Content-Type": "application/merge-patch+json"}), None, None),
        ]
        for req, status, type_ in cases:
            ctx = RequestContext(req=req, caller={}, services=services)
            if status is None:
                assert ctx.json_body() == {"a": 1}
                continue
            with pytest.raises(ApiError) as info:
                ctx.json_body()
            assert (info.value.status, info.value.type) == (status, type_)


class TestHandle:
    @pytest.mark.parametrize(("exc", "status", "type_"), [
        (AuthenticationError("token expired"), 401, "unauthenticated"),
        (ForbiddenError("the caller lacks the app role Console.Manage"), 403, "forbidden"),
        (ValidationError("bad", field="x"), 400, "validation-error"),
        (NotFoundError("tenant not provisioned"), 404, "not-found"),
        (ConflictError("connector not enabled"), 409, "conflict"),
        (PermissionMissingError("denied", permission="Device.Read.All"), 424, "permission-missing"),
        (ConsentRequiredError("no consent", aadsts="65001"), 424, "consent-required"),
        (RetriableError("503"), 503, "upstream-unavailable"),
        (FatalError("https://internal.example/x?sig=SECRET refused", status=400), 502, "upstream-error"),
        (RuntimeError("Traceback ... https://internal.example/secret"), 500, "internal-error"),
        (ResourceNotFoundError("TableNotFound https://internal.example/tenants"), 503, "storage-unavailable"),
        (ServiceRequestError("connection refused https://internal.example:10002"), 503, "storage-unavailable"),
    ])
    async def test_errors_map_to_problem_json_without_internals(self, services, exc, status, type_):
        async def action(ctx: RequestContext) -> func.HttpResponse:
            raise exc

        resp = await handle(_req(), MANAGE, action)
        body = _problem(resp)
        assert (resp.status_code, body["type"]) == (status, hs.PROBLEM_BASE + type_)
        text = resp.get_body().decode()
        assert "internal.example" not in text and "Traceback" not in text and "SECRET" not in text
        assert resp.headers["Cache-Control"] == "no-store"
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")

    async def test_auth_runs_before_validation_and_body_cap(self, services):
        ran = []

        async def action(ctx: RequestContext) -> func.HttpResponse:
            ran.append(ctx.guid("tenantId"))
            return hs.json_response({})

        req = func.HttpRequest(method="POST", url="http://h/api/x", body=b"x" * (hs.MAX_BODY_BYTES + 1),
                               route_params={"tenantId": "bad"}, headers={})
        assert (await handle(req, READ, action)).status_code == 401
        resp = await handle(_req(body=b"x" * (hs.MAX_BODY_BYTES + 1), route={"tenantId": "bad"}), READ, action)
        assert resp.status_code == 413 and _problem(resp)["field"] == "body"
        resp = await handle(_req(route={"tenantId": "bad"}), READ, action)
        assert resp.status_code == 400 and _problem(resp)["field"] == "tenantId"
        assert ran == []

    def test_urls_are_scrubbed_from_details(self):
        resp = hs.problem(404, "not-found", "no device at https://graph.internal/v1.0/devices/1?$skiptoken=abc")
        assert "graph.internal" not in resp.get_body().decode()
