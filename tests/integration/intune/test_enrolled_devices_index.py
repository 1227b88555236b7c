"""StoreEnrolledDevices over the real enrollment store (Azurite): a deviceId lookup is point reads, never a scan.

Table calls are counted through the storage seam (``StorageClients.table``), which hands out a wrapper that
delegates every call to the real aio TableClient.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared_code.adapters.storage import StorageClients
from shared_code.domain.devices import DeviceRecord
from shared_code.domain.reconcile import DEACTIVATE, ENROLL, ENROLLED, UPDATE, PlanItem, Stored
from shared_code.enrollment.store import TableEnrollmentStore
from shared_code.intune.devices import StoreEnrolledDevices

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


SHARDS = 8  # a tenant of ~16,000 devices


@pytest.fixture
async def world(azurite: Any) -> AsyncIterator[tuple[TableEnrollmentStore, StoreEnrolledDevices, CountingTable]]:
    storage = CountingStorage(azurite.connection_string, table_prefix="i" + uuid.uuid4().hex[:10])
    try:
        store = TableEnrollmentStore(storage)
        layout = await store.ensure_layout(TENANT, 16_000)
        assert layout.shards == SHARDS
        await store.apply(TENANT, [PlanItem(ENROLL, record(i), "r", "Root") for i in range(50)], "t")
        yield store, StoreEnrolledDevices(store), storage.wrapped["devices"]
    finally:
        await storage.close()


async def test_enrolled_device_is_found_by_entra_device_id_with_point_reads_only(world: Any) -> None:
    store, devices, table = world
    before = Counter(table.calls)
    found = await devices.get(TENANT, record(17).device_id.upper())  # either case
    assert found is not None and (found.device_id, found.user_id) == (record(17).device_id, "user-17")
    # layout, d|<key> (miss), x|<deviceId> in each shard, d|<object id>: point reads, no query over the tenant.
    assert table.calls - before == Counter({"get_entity": 3 + SHARDS})
    assert (store.point_reads, store.fallback_queries) == (1, 0)
    before = Counter(table.calls)
    by_object = await devices.get(TENANT, record(17).id)
    assert by_object == found
    assert table.calls - before == Counter({"get_entity": 2})  # layout + the object id's row in its shard


async def test_an_unknown_device_id_is_point_reads_never_a_scan(world: Any) -> None:
    store, devices, table = world
    before = Counter(table.calls)
    assert await devices.get(TENANT, "cccccccc-0000-4000-8000-000000000404") is None
    assert table.calls - before == Counter({"get_entity": 2 + SHARDS})
    assert store.fallback_queries == 0


async def test_deactivated_device_resolves_through_its_index_and_is_not_enrolled(world: Any) -> None:
    store, devices, table = world
    await store.apply(TENANT, [PlanItem(DEACTIVATE, record(5), "owner left", "Root")], "t")
    before = Counter(table.calls)
    assert await devices.get(TENANT, record(5).device_id) is None  # as before the index: only enrolled devices
    assert table.calls - before == Counter({"get_entity": 3 + SHARDS})
    assert store.fallback_queries == 0


async def test_legacy_single_partition_rows_are_found_and_back_filled(azurite: Any) -> None:
    """Rows written before sharding (one partition, no index rows) keep working; a back-fill ends the fallback."""
    storage = CountingStorage(azurite.connection_string, table_prefix="i" + uuid.uuid4().hex[:10])
    try:
        table = await storage.table("devices")
        for i in range(5):
            rec = record(i)
            await table.upsert_entity({"PartitionKey": TENANT, "RowKey": f"d|{rec.id}", "deviceId": rec.device_id,
                                       "ownerId": rec.owner_id, "rec": json.dumps(rec.to_dict()),
                                       "state": ENROLLED, "via": "Root", "seq": i + 1})
        await table.upsert_entity({"PartitionKey": TENANT, "RowKey": "meta", "seq": 5})
        store = TableEnrollmentStore(storage)
        devices = StoreEnrolledDevices(store)
        found = await devices.get(TENANT, record(3).device_id)
        assert found is not None and found.user_id == "user-3"
        assert (store.point_reads, store.fallback_queries) == (1, 1)
        assert await store.backfill_index(TENANT) == 5
        layout = await store.layout(TENANT)
        assert layout is not None and layout.legacy and layout.indexed
        before = Counter(table.calls)
        assert await devices.get(TENANT, record(4).device_id.upper()) is not None
        assert await devices.get(TENANT, "cccccccc-0000-4000-8000-000000000404") is None
        assert store.fallback_queries == 1  # no scan after the back-fill
        assert table.calls["query_entities"] - before["query_entities"] == 0
        # New changes of a legacy tenant keep landing in its partition, numbered after its existing events.
        events = await store.apply(TENANT, [PlanItem(UPDATE, record(1, "dddddddd-0000-4000-8000-000000000001"),
                                                     "deviceId changed", "Root")], "t")
        assert [e.seq for e in events] == [6]
        assert await devices.get(TENANT, "dddddddd-0000-4000-8000-000000000001") is not None
    finally:
        await storage.close()


async def test_device_id_change_moves_the_lookup_to_the_new_id(world: Any) -> None:
    store, devices, table = world
    old = record(3)
    moved = record(3, device_id="bbbbbbbb-0000-4000-8000-000000000003")
    await store.apply(TENANT, [PlanItem(UPDATE, moved, "deviceId changed", "Root")], "t",
                      previous={old.id: Stored(record=old, state=ENROLLED, via="Root")})
    before = Counter(table.calls)
    found = await devices.get(TENANT, moved.device_id)
    assert found is not None and found.device_id == moved.device_id
    assert table.calls - before == Counter({"get_entity": 3 + SHARDS})
    assert await devices.get(TENANT, old.device_id) is None  # tombstone: a miss, without any query
    assert store.fallback_queries == 0
