"""The stack runs: devhost serves function_app.py, the connector reaches the simulator's Graph with real tokens."""

from __future__ import annotations

from typing import Any

import httpx

from shared_code.adapters.http_retry import UsageMeter


async def test_health_is_anonymous_and_reveals_nothing(devhost: Any) -> None:
    async with httpx.AsyncClient(base_url=devhost.base_url) as client:
        response = await client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_graph_client_pages_users_with_a_real_token(sim: Any, app_container: Any) -> None:
    tenant = sim.create_tenant("small", seed=11)
    meter = UsageMeter()
    graph = app_container.graph(tenant["tenant_id"], meter)
    try:
        users = [
            user
            async for page in graph.pages("/users", permission="User.Read.All", params={"$select": "id", "$top": "10"})
            for user in page["value"]
        ]
    finally:
        await graph.aclose()
    assert len(users) == tenant["counts"]["users"]
    assert meter.requests == -(-len(users) // 10)
