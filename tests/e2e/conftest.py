"""Fixtures for the end-to-end tests: a console API client on the module's devhost, a provisioned tenant, and a
clock the test moves."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

PLATFORMS = ["iOS", "iPadOS", "Android"]


@pytest.fixture(scope="module")
async def api(devhost: Any, console_token: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the module's devhost with a Console.Manage + Console.Read token."""
    async with console_client(devhost, console_token) as client:
        yield client


def console_client(host: Any, console_token: Any, roles: tuple[str, ...] = ("Console.Manage", "Console.Read")
                   ) -> httpx.AsyncClient:
    """An HTTP client on ``host`` with a console token carrying ``roles`` (use as ``async with``)."""
    token = console_token(list(roles))
    return httpx.AsyncClient(base_url=host.base_url, timeout=120, headers={"Authorization": f"Bearer {token}"})


async def provision(sim: Any, api: httpx.AsyncClient, seed: int) -> dict[str, Any]:
    """A new ``small`` simulated tenant, provisioned through ``PUT /api/tenants/{id}``; returns its summary."""
    summary: dict[str, Any] = sim.create_tenant("small", seed=seed)
    body = {"enrollmentGroups": summary["enrollment_groups"], "platforms": PLATFORMS}
    response = await api.put(f"/api/tenants/{summary['tenant_id']}", json=body)
    assert response.status_code in (200, 201), response.text
    return summary


class MovableClock:
    """Wall clock plus an offset the test moves (the connector's side of time; the simulator's moves with
    ``/_sim/clock/advance``)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def clock(app_container: Any) -> MovableClock:
    """The module's connector clock. Services bind the container's clock when they are made, so a module that moves
    time installs it before its first request: ``pytestmark = pytest.mark.usefixtures("clock")``."""
    moved = MovableClock()
    app_container.clock = moved
    return moved
