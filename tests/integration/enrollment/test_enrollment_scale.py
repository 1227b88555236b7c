"""Counts on an L tenant (20k users, 35k devices): full reconcile near the page lower bound, far below the seed."""

from __future__ import annotations

from typing import Any

import pytest

from bench.__main__ import lower_bound
from bench.baseline import seed_strategy
from shared_code.adapters.http_retry import UsageMeter
from shared_code.adapters.memory_tenant_store import MemoryTenantRepository
from shared_code.enrollment.cursors import MemoryCursorStore
from shared_code.enrollment.engine import PollEngine
from shared_code.enrollment.store import MemoryEnrollmentStore
from shared_code.tenants import TenantConfig


@pytest.mark.slow
async def test_full_sync_of_L_is_within_1_2x_the_page_lower_bound_and_20x_below_the_seed(
    sim: Any, app_container: Any
) -> None:
    summary = sim.create_tenant("L", seed=5)
    tid, groups = summary["tenant_id"], summary["enrollment_groups"]
    repo = MemoryTenantRepository()
    await repo.put_config(TenantConfig(tenant_id=tid, enrollment_groups=tuple(groups)))
    store = MemoryEnrollmentStore()  # Graph cost is the subject here; Table writes are covered elsewhere
    engine = PollEngine(tenants=repo, store=store, cursors=MemoryCursorStore(), graph_factory=app_container.graph)
    sim.call("POST", "/_sim/counters/reset")
    full = await engine.poll(tid)
    routes = sim.counters(tid)[tid]["routes"]
    assert full.strategy is not None and full.strategy["strategy"] == "users_expand_owned"
    groups_pages = sum(v["requests"] for k, v in routes.items() if "groups/delta" in k)
    bound = lower_bound(summary["counts"], groups_pages, int((full.shape or {}).get("cappedUsers") or 0))
    assert full.usage["requests"] <= 1.2 * bound, (full.usage, bound)
    truth = sim.truth(tid, groups)
    enrolled = {k for k, v in (await store.load_devices(tid)).items() if v.state == "enrolled"}
    assert {d["id"] for d in truth["devices"]} <= enrolled  # (+ owned direct device members)

    meter = UsageMeter()
    graph = app_container.graph(tid, meter)
    try:
        baseline = await seed_strategy(graph, groups)
    finally:
        await graph.aclose()
    assert baseline["users"] == truth["users_in_scope"]
    assert meter.requests >= 20 * full.usage["requests"], (meter.requests, full.usage["requests"])
