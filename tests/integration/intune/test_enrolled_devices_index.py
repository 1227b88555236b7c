"""TableEnrolledDevices over rows written by the real enrollment store (Azurite): deviceId lookups are point reads.

Table calls are counted through the storage seam (``StorageClients.table``), which hands out a wrapper that
delegates every call to the real aio TableClient.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared_code.adapters.storage import StorageClients
from shared_code.domain.devices import DeviceRecord
from shared_code.domain.reconcile import DEACTIVATE, ENROLL, ENROLLED, UPDATE, PlanItem, Stored
from shared_code.enrollment.store import TableEnrollmentStore
from shared_code.intune.devices import TableEnrolledDevices

TENANT = "21111111-2222-4333-8444-555555555555"


class CountingTable:
    """Delegates to the real aio TableClient and counts the reads asked of it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()

    async def get_entity(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["get_entity"] += 1
        return await self._inner.get_entity(*args, **kwargs)

    def query_entities(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["query_entities"] += 1
        return self._inner.query_entities(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CountingStorage(StorageClients):
    """StorageClients whose ``table()`` wraps the real client in :class:`CountingTable`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wrapped: dict[str, CountingTable] = {}

    async def table(self, logical: str) -> Any:
        if logical not in self.wrapped:
            self.wrapped[logical] = CountingTable(await super().table(logical))
        return self.wrapped[logical]


def record(i: int, device_id: str | None = None) -> DeviceRecord:
    return DeviceRecord(id=f"00000000-0000-4000-8000-{i:012d}",
                        device_id=device_id or f"aaaaaaaa-0000-4000-8000-{i:012d}", display_name=f"phone {i}",
                        operating_system="iOS", owner_id=f"user-{i}")


@pytest.fixture
async def world(azurite: Any) -> AsyncIterator[tuple[TableEnrollmentStore, TableEnrolledDevices, CountingTable]]:
    storage = CountingStorage(azurite.connection_string, table_prefix="i" + uuid.uuid4().hex[:10])
    try:
        store = TableEnrollmentStore(storage)
        await store.apply(TENANT, [PlanItem(ENROLL, record(i), "r", "Root") for i in range(50)], "t")
        yield store, TableEnrolledDevices(storage), storage.wrapped["devices"]
    finally:
        await storage.close()


async def test_enrolled_device_is_found_by_entra_device_id_with_point_reads_only(world: Any) -> None:
    _, devices, table = world
    before = Counter(table.calls)
    found = await devices.get(TENANT, record(17).device_id.upper())  # either case
    assert found is not None and (found.device_id, found.user_id) == (record(17).device_id, "user-17")
    # d|<key> (miss), x|<deviceId>, d|<object id>: three point reads, no query over the tenant's device rows.
    assert table.calls - before == Counter({"get_entity": 3})
    assert (devices.point_reads, devices.fallback_queries) == (1, 0)
    by_object = await devices.get(TENANT, record(17).id)
    assert by_object == found
    assert table.calls - before == Counter({"get_entity": 4})


async def test_deactivated_device_resolves_through_its_index_and_is_not_enrolled(world: Any) -> None:
    store, devices, table = world
    await store.apply(TENANT, [PlanItem(DEACTIVATE, record(5), "owner left", "Root")], "t")
    before = Counter(table.calls)
    assert await devices.get(TENANT, record(5).device_id) is None  # as before the index: only enrolled devices
    assert table.calls - before == Counter({"get_entity": 3})
    assert devices.fallback_queries == 0


async def test_legacy_row_without_index_falls_back_to_the_range_query(world: Any) -> None:
    _, devices, table = world
    await table.delete_entity(TENANT, "x|" + record(9).device_id.lower())  # as written before the index existed
    before = Counter(table.calls)
    found = await devices.get(TENANT, record(9).device_id)
    assert found is not None and found.user_id == "user-9"
    assert table.calls - before == Counter({"get_entity": 2, "query_entities": 1})
    assert (devices.point_reads, devices.fallback_queries) == (1, 1)


async def test_device_id_change_moves_the_lookup_to_the_new_id(world: Any) -> None:
    store, devices, table = world
    old = record(3)
    moved = record(3, device_id="bbbbbbbb-0000-4000-8000-000000000003")
    await store.apply(TENANT, [PlanItem(UPDATE, moved, "deviceId changed", "Root")], "t",
                      previous={old.id: Stored(record=old, state=ENROLLED, via="Root")})
    before = Counter(table.calls)
    found = await devices.get(TENANT, moved.device_id)
    assert found is not None and found.device_id == moved.device_id
    assert table.calls - before == Counter({"get_entity": 3})
    assert await devices.get(TENANT, old.device_id) is None  # tombstone → fallback query finds no row with it
    assert devices.fallback_queries == 1
