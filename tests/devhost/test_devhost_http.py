"""HTTP triggers served by devhost: routing, request/response mapping, host-like errors."""

from __future__ import annotations

import aiohttp


async def test_route_params_query_body_status_headers(make_host):
    host = await make_host()
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{host.base_url}/api/items/abc-1?status=201&q=x&q=y", data=b'{"a": 1}', headers={"X-Test": "yes"}) as r,
    ):
        assert r.status == 201
        assert r.headers["Content-Type"].startswith("application/json")
        assert r.headers["X-Echo"] == "1"
        body = await r.json()
    assert body["method"] == "POST"
    assert body["route_params"] == {"item_id": "abc-1"}
    assert body["params"] == {"status": "201", "q": "x,y"}
    assert body["body"] == '{"a": 1}'
    assert body["x_test"] == "yes"
    assert body["url"].endswith("/api/items/abc-1?status=201&q=x&q=y")
    assert host.stats["items"].invocations == 1
    assert host.stats["items"].successes == 1


async def test_constraints_literal_precedence_catch_all_and_async_context(make_host):
    host = await make_host()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{host.base_url}/api/things/42") as r:
            assert r.status == 200
            assert await r.json() == {"id": 42, "function": "thing_by_id"}
        async with s.get(f"{host.base_url}/api/things/special") as r:
            assert r.status == 200
            assert await r.text() == "special"
            assert r.headers["Content-Type"].startswith("text/plain")
        async with s.get(f"{host.base_url}/api/things/notanint") as r:
            assert r.status == 404
        async with s.get(f"{host.base_url}/api/files/a/b/c.txt") as r:
            assert await r.text() == "a/b/c.txt"
        async with s.delete(f"{host.base_url}/api/nothing") as r:
            assert r.status == 204


async def test_unknown_route_404_wrong_method_405_json(make_host):
    host = await make_host()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{host.base_url}/api/nope") as r:
            assert r.status == 404
            assert (await r.json())["error"] == "NotFound"
        async with s.get(f"{host.base_url}/items/abc") as r:  # no /api prefix
            assert r.status == 404
        async with s.delete(f"{host.base_url}/api/items/abc") as r:
            assert r.status == 405
            data = await r.json()
            assert data["error"] == "MethodNotAllowed"
            assert set(data["allowed"]) == {"GET", "POST", "PUT"}
            assert "GET" in r.headers["Allow"]


async def test_function_exception_is_500_and_counted(make_host):
    host = await make_host()
    async with aiohttp.ClientSession() as s, s.post(f"{host.base_url}/api/items/x1/boom") as r:
        assert r.status == 500
        data = await r.json()
    assert data["error"] == "FunctionInvocationException"
    assert "boom x1" in data["detail"]
    assert host.stats["boom"].failures == 1


async def test_body_cap_413(make_host):
    host = await make_host(body_limit=1024)
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{host.base_url}/api/items/big", data=b"x" * 2048) as r:
            assert r.status == 413
            assert (await r.json())["error"] == "PayloadTooLarge"
        async with s.put(f"{host.base_url}/api/items/small", data=b"x" * 100) as r:
            assert r.status == 200
    assert host.stats["items"].invocations == 1


async def test_route_prefix_from_host_json(make_host):
    host = await make_host(host_json={"extensions": {"http": {"routePrefix": ""}}})
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{host.base_url}/items/abc") as r:
            assert r.status == 200
        async with s.get(f"{host.base_url}/api/items/abc") as r:
            assert r.status == 404
