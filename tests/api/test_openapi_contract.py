"""openapi.yaml is the truth: it describes exactly the routes function_app.py registers, with sound structure."""

from __future__ import annotations

import schemathesis

from functions.http_support import PROBLEM_BASE, PROBLEM_TYPES
from tests.api.routes import OPENAPI_PATH, documented_operations, openapi, registered_routes, required_role


def test_every_registered_route_is_documented_and_every_documented_route_is_registered():
    registered = {(r.method, r.path) for r in registered_routes()}
    documented = set(documented_operations())
    assert registered - documented == set(), "routes missing from openapi.yaml"
    assert documented - registered == set(), "openapi.yaml documents routes nobody registers"


def test_only_health_is_anonymous():
    anonymous = {key for key in documented_operations() if required_role(*key) is None}
    assert anonymous == {("GET", "/health")}


def test_every_secured_operation_documents_401_403_and_problem_json_errors():
    for (method, path), op in documented_operations().items():
        responses = op["responses"]
        assert any(code.startswith("2") for code in responses), (method, path)
        if required_role(method, path) is None:
            continue
        assert {"401", "403"} <= set(responses), (method, path)
        if "{" in path or "requestBody" in op:
            assert "400" in responses, (method, path)
        if "requestBody" in op:
            assert {"413", "415"} <= set(responses), (method, path)
        for code, response in responses.items():
            if code.startswith(("4", "5")):
                ref = response.get("$ref", "")
                body = openapi()["components"]["responses"][ref.rsplit("/", 1)[-1]] if ref else response
                assert list(body["content"]) == ["application/problem+json"], (method, path, code)


def test_write_operations_need_manage_and_reads_need_read():
    for method, path in documented_operations():
        role = required_role(method, path)
        if path == "/health":
            continue
        # /sso/roles is a POST that reads (it maps a user's groups; nothing is written), so Console.Read suffices.
        expected = "Console.Read" if method == "GET" or path == "/sso/roles" else "Console.Manage"
        assert role == expected, (method, path)


def test_problem_types_match_the_code():
    enum = openapi()["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
    assert enum == [PROBLEM_BASE + slug for slug in PROBLEM_TYPES]


def test_request_bodies_reject_unknown_fields():
    for (method, path), op in documented_operations().items():
        if "requestBody" not in op:
            continue
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = openapi()["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        assert schema.get("additionalProperties") is False, (method, path)


def test_schemathesis_loads_the_document_and_sees_every_operation():
    schema = schemathesis.openapi.from_path(str(OPENAPI_PATH))
    seen = {(op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())}
    assert seen == set(documented_operations())
