"""Smaller doors (issue 11 §5) through devhost: the host's request-body limit the Bicep deploys, and logs free of
outbound Graph URLs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, running_devhost

# The value infra/main.bicep deploys (tests/infra checks the setting is there; this test checks what it does).
BODY_LIMIT = int(re.search(r"FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: '(\d+)'", (REPO / "infra" / "main.bicep").read_text())
                 .group(1))  # type: ignore[union-attr]


@pytest.fixture(scope="module")
async def limited_host(module_env: dict[str, str], app_container: Any) -> AsyncIterator[Any]:
    async with running_devhost(module_env | {"FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": str(BODY_LIMIT)}) as host:
        yield host


async def test_large_anonymous_bodies_are_refused_by_the_host(limited_host: Any, console_token: Any) -> None:
    async with httpx.AsyncClient(base_url=limited_host.base_url, timeout=60) as client:
        # Anonymous and over the host limit: refused before any function (or authentication) runs.
        huge = await client.post("/api/sso/roles", content=b"x" * (BODY_LIMIT + 1),
                                 headers={"Content-Type": "application/json"})
        assert huge.status_code == 413
        # Under the host limit but over the API's own cap: the app's problem+json, after authentication.
        token = console_token(["Console.Read"])
        large = await client.post("/api/sso/roles", content=b"x" * (64 * 1024 + 1),
                                  headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        assert large.status_code == 413 and large.json()["type"].endswith("body-too-large")
        anonymous = await client.post("/api/sso/roles", content=b"x" * (64 * 1024 + 1))
        assert anonymous.status_code == 401


async def test_a_poll_logs_no_graph_url(
    sim: Any, limited_host: Any, console_token: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything the app's own loggers emit, at any level
    summary = sim.create_tenant("small", seed=1301)
    tid = summary["tenant_id"]
    token = console_token(["Console.Manage", "Console.Read"])
    async with httpx.AsyncClient(base_url=limited_host.base_url, timeout=120,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        put = await client.put(f"/api/tenants/{tid}", json={"enrollmentGroups": summary["enrollment_groups"]})
        assert put.status_code in (200, 201), put.text
        assert (await client.post(f"/api/tenants/{tid}/sync")).status_code == 202
        await limited_host.drain_queues()
        devices = (await client.get(f"/api/tenants/{tid}/devices")).json()["devices"]
    assert devices, "the poll ran and enrolled devices"
    graph = sim.info["graph_base_url"].rstrip("/")
    leaks = [r.getMessage() for r in caplog.records
             if f"{graph}/v1.0" in r.getMessage() or "$deltatoken" in r.getMessage() or "$skiptoken" in r.getMessage()]
    assert caplog.records and not leaks, leaks[:3]
