"""Fixtures for the end-to-end tests: a console API client on the module's devhost, and a provisioned tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

PLATFORMS = ["iOS", "iPadOS", "Android"]


@pytest.fixture(scope="module")
async def api(devhost: Any, console_token: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the module's devhost with a Console.Manage + Console.Read token."""
    token = console_token(["Console.Manage", "Console.Read"])
    async with httpx.AsyncClient(base_url=devhost.base_url, timeout=120,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


async def provision(sim: Any, api: httpx.AsyncClient, seed: int) -> dict[str, Any]:
    """A new ``small`` simulated tenant, provisioned through ``PUT /api/tenants/{id}``; returns its summary."""
    summary: dict[str, Any] = sim.create_tenant("small", seed=seed)
    body = {"enrollmentGroups": summary["enrollment_groups"], "platforms": PLATFORMS}
    response = await api.put(f"/api/tenants/{summary['tenant_id']}", json=body)
    assert response.status_code in (200, 201), response.text
    return summary
