"""Fixtures for devhost tests: a DevHost on the sample app per test (Azurite: tests/conftest.py, per session)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from devhost import Azurite, DevHost
from tests.devhost import devhost_sample_app as sample

QUIET_SCHEDULE = "0 0 0 1 1 *"  # once a year: timers exist but do not tick during a test

HOST_JSON: dict[str, Any] = {
    "version": "2.0",
    "extensions": {
        "http": {"routePrefix": "api"},
        "queues": {
            "batchSize": 4,
            "maxDequeueCount": 3,
            "visibilityTimeout": "00:00:00",
            "maxPollingInterval": "00:00:02",
        },
    },
}


@pytest.fixture
def queue_name() -> str:
    return f"work-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sample_env(azurite: Azurite, queue_name: str) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "TICK_SCHEDULE": QUIET_SCHEDULE,
        "SLOW_SCHEDULE": QUIET_SCHEDULE,
        "WORK_QUEUE": queue_name,
    }


@pytest.fixture
async def make_host(sample_env: dict[str, str]) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await make_host(env_overrides..., host_json=..., **DevHost kwargs)`` → started DevHost."""
    hosts: list[DevHost] = []
    sample.reset()

    async def factory(env: dict[str, str] | None = None, **kwargs: Any) -> DevHost:
        kwargs.setdefault("host_json", HOST_JSON)
        kwargs.setdefault("port", 0)
        host = DevHost(sample.app, {**sample_env, **(env or {})}, **kwargs)
        await host.start()
        hosts.append(host)
        return host

    yield factory
    for h in hosts:
        await h.stop()
