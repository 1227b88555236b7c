"""Fixtures for the port contract suites: each port's tests run against every implementation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from shared_code.adapters.memory_tenant_store import MemoryTenantRepository
from shared_code.adapters.storage import StorageClients
from shared_code.adapters.tenant_store import TableTenantRepository


@pytest.fixture(scope="session")
def contract_storage_connection(request: pytest.FixtureRequest) -> Iterator[str]:
    """Azurite's connection string: the lead's session ``azurite`` fixture when present, else a private one."""
    try:
        handle: Any = request.getfixturevalue("azurite")
    except pytest.FixtureLookupError:
        from devhost.azurite import start_azurite

        own = start_azurite()
        try:
            yield own.connection_string
        finally:
            own.stop()
        return
    yield handle.connection_string


@pytest.fixture(params=["memory", "table"])
async def tenant_repo(request: pytest.FixtureRequest, contract_storage_connection: str) -> AsyncIterator[Any]:
    """A fresh, empty TenantRepository of each implementation (table: a new prefix per test)."""
    if request.param == "memory":
        yield MemoryTenantRepository()
        return
    prefix = "c" + uuid.uuid4().hex[:10]
    storage = StorageClients(contract_storage_connection, table_prefix=prefix)
    try:
        yield TableTenantRepository(storage)
    finally:
        await storage.close()
