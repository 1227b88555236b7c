"""The connector's Graph client with the unmodified msgraph-sdk on top: typed paging, one retry layer, batching.

Our GraphClient removes kiota's RetryHandler and retries in its own transport (fractional Retry-After); these tests
prove the SDK still works on that transport and that a 429 storm is retried exactly once per throttled request.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared_code.adapters.graph import BatchItem
from shared_code.adapters.http_retry import UsageMeter


@pytest.fixture(scope="module")
def tenant(sim: Any) -> dict[str, Any]:
    return sim.create_tenant("small", seed=4242)


async def test_sdk_pages_users_as_typed_models_on_our_transport(app_container: Any, tenant: dict[str, Any]) -> None:
    from msgraph.generated.users.users_request_builder import UsersRequestBuilder

    meter = UsageMeter()
    graph = app_container.graph(tenant["tenant_id"], meter)
    try:
        await graph.ensure_token()
        config = UsersRequestBuilder.UsersRequestBuilderGetRequestConfiguration(
            query_parameters=UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(select=["id"], top=7)
        )
        page = await graph.sdk.users.get(request_configuration=config)
        ids = []
        while page is not None:
            ids += [user.id for user in page.value or []]
            page = await graph.sdk.users.with_url(page.odata_next_link).get() if page.odata_next_link else None
    finally:
        await graph.aclose()
    assert len(ids) == len(set(ids)) == tenant["counts"]["users"]
    assert meter.requests == -(-len(ids) // 7)


async def test_a_429_storm_is_retried_once_per_throttled_request_with_fractional_retry_after(
    sim: Any, app_container: Any, tenant: dict[str, Any]
) -> None:
    tid = tenant["tenant_id"]
    sim.fault("throttle", match={"tenant": tid, "path_prefix": "/v1.0/groups"}, count=3, retry_after=0.05)
    meter = UsageMeter()
    graph = app_container.graph(tid, meter)
    try:
        await graph.ensure_token()
        groups = await graph.sdk.groups.get()
    finally:
        await graph.aclose()
        sim.clear_faults()
    assert groups is not None and groups.value
    assert (meter.requests, meter.throttled, meter.retries) == (4, 3, 3)


async def test_batch_answers_each_item_by_id_and_relative_urls_only(app_container: Any, tenant: dict[str, Any]) -> None:
    tid = tenant["tenant_id"]
    graph = app_container.graph(tid, UsageMeter())
    try:
        users = await graph.get_json("/users", permission="User.Read.All", params={"$select": "id", "$top": "2"})
        first, second = (u["id"] for u in users["value"][:2])
        results = await graph.batch(
            [
                BatchItem("a", f"/users/{first}?$select=id"),
                BatchItem("b", "/users/00000000-0000-0000-0000-000000000001?$select=id"),
                BatchItem("c", f"/users/{second}/ownedDevices?$select=id"),
            ],
            permission="User.Read.All",
        )
    finally:
        await graph.aclose()
    assert set(results) == {"a", "b", "c"}
    assert results["a"]["status"] == 200 and results["a"]["body"]["id"] == first
    assert results["b"]["status"] == 404
    assert results["c"]["status"] == 200 and "value" in results["c"]["body"]


async def test_batch_refuses_more_than_twenty_items_before_sending(app_container: Any, tenant: dict[str, Any]) -> None:
    meter = UsageMeter()
    graph = app_container.graph(tenant["tenant_id"], meter)
    try:
        with pytest.raises(ValueError, match="20"):
            await graph.batch([BatchItem(str(i), "/users?$top=1") for i in range(21)], permission="User.Read.All")
    finally:
        await graph.aclose()
    assert meter.requests == 0
