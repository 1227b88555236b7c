"""Paged reads of the console API that the scripted chaos suite and the fault campaign both check against."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

Get = Callable[..., Awaitable[httpx.Response]]


async def all_devices(get: Get, tid: str) -> list[dict[str, Any]]:
    """Every device row of the tenant through ``GET …/devices`` (followed to the last page)."""
    out: list[dict[str, Any]] = []
    after = ""
    while True:
        response = await get(f"/api/tenants/{tid}/devices", params={"after": after, "limit": 200})
        assert response.status_code == 200, response.text
        page = response.json()
        out.extend(page["devices"])
        if page["next"] is None:
            return out
        after = page["next"]


async def all_events(get: Get, tid: str, *, limit: int = 200) -> list[dict[str, Any]]:
    """The tenant's whole change feed through ``GET …/events`` (followed while ``hasMore``)."""
    out: list[dict[str, Any]] = []
    after = ""
    while True:
        response = await get(f"/api/tenants/{tid}/events", params={"after": after, "limit": limit})
        assert response.status_code == 200, response.text
        page = response.json()
        out.extend(page["events"])
        after = page["next"]
        if not page["hasMore"]:
            return out
