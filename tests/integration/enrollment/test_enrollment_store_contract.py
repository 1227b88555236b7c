"""One contract suite for the enrollment ports, run on the in-memory fakes and on Table Storage (Azurite)."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared_code.adapters.storage import StorageClients
from shared_code.domain.devices import DeviceRecord
from shared_code.domain.reconcile import DEACTIVATE, DEACTIVATED, ENROLL, ENROLLED, UPDATE, PlanItem, Stored
from shared_code.domain.scope import MembershipGraph
from shared_code.enrollment.cursors import Cursor, MemoryCursorStore, TableCursorStore
from shared_code.enrollment.leases import MemoryLeaseStore, TableLeaseStore
from shared_code.enrollment.store import (
    CHANGES_PER_TRANSACTION,
    MAX_OPS_PER_TRANSACTION,
    MemoryEnrollmentStore,
    TableEnrollmentStore,
    event_id,
)
from shared_code.errors import ConflictError

TENANT = "11111111-2222-4333-8444-555555555555"


class CountingTable:
    """Delegates to the real aio TableClient and records what the store asked of it (calls, transactions)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter()
        self.transactions: list[list[Any]] = []

    async def get_entity(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["get_entity"] += 1
        return await self._inner.get_entity(*args, **kwargs)

    def query_entities(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["query_entities"] += 1
        return self._inner.query_entities(*args, **kwargs)

    async def submit_transaction(self, operations: Any, **kwargs: Any) -> Any:
        ops = list(operations)
        self.transactions.append(ops)
        return await self._inner.submit_transaction(ops, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CountingStorage(StorageClients):
    """The store's own seam (``StorageClients.table``) handing out counting wrappers of the real clients."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wrapped: dict[str, CountingTable] = {}

    async def table(self, logical: str) -> Any:
        if logical not in self.wrapped:
            self.wrapped[logical] = CountingTable(await super().table(logical))
        return self.wrapped[logical]


@pytest.fixture(params=["memory", "table"])
async def backend(request: pytest.FixtureRequest, azurite: Any) -> AsyncIterator[dict[str, Any]]:
    """Store, cursors and leases of one implementation (table: a fresh prefix per test)."""
    if request.param == "memory":
        yield {"store": MemoryEnrollmentStore(), "cursors": MemoryCursorStore(), "leases": MemoryLeaseStore()}
        return
    storage = CountingStorage(azurite.connection_string, table_prefix="e" + uuid.uuid4().hex[:10])
    try:
        yield {
            "storage": storage,
            "store": TableEnrollmentStore(storage),
            "cursors": TableCursorStore(storage),
            "leases": TableLeaseStore(storage),
        }
    finally:
        await storage.close()


def item(i: int, action: str = ENROLL, os: str = "iOS") -> PlanItem:
    rec = DeviceRecord(id=f"00000000-0000-4000-8000-{i:012d}", device_id=f"D-{i}", operating_system=os,
                       owner_id="u1")
    return PlanItem(action, rec, f"reason {i}", "Root")


async def test_apply_writes_rows_and_numbered_events_in_order(backend: dict[str, Any]) -> None:
    store = backend["store"]
    items = [item(i) for i in range(120)]  # three transactions
    events = await store.apply(TENANT, items, "2026-01-01T00:00:00Z")
    assert [e.seq for e in events] == list(range(1, 121))
    assert events[0].id == event_id(TENANT, 1)
    more = await store.apply(TENANT, [item(3, DEACTIVATE), item(4, UPDATE, os="iPadOS")], "2026-01-02T00:00:00Z")
    assert [e.seq for e in more] == [121, 122] and more[0].type == "deactivated"
    rows = await store.load_devices(TENANT)
    assert len(rows) == 120
    assert rows[item(3).record.id].state == DEACTIVATED
    assert rows[item(4).record.id].record.operating_system == "iPadOS"
    assert rows[item(5).record.id].state == ENROLLED
    page1 = await store.events(TENANT, 0, 50)
    page2 = await store.events(TENANT, page1[-1].seq, 1000)
    assert [e.seq for e in page1 + page2] == list(range(1, 123))
    assert await store.head_seq(TENANT) == 122
    assert await store.head_seq("99999999-2222-4333-8444-555555555555") == 0


async def test_a_crash_between_transactions_keeps_whole_transactions_only(backend: dict[str, Any]) -> None:
    store = backend["store"]

    def crash(n: int) -> None:
        if n == 1:
            raise RuntimeError("worker died")

    store.before_commit = crash
    with pytest.raises(RuntimeError):
        await store.apply(TENANT, [item(i) for i in range(60)], "t")
    store.before_commit = None
    rows = await store.load_devices(TENANT)
    assert len(rows) == CHANGES_PER_TRANSACTION == 33  # device row + event + index row each, + the meta row
    assert [e.seq for e in await store.events(TENANT, 0, 1000)] == list(range(1, 34))
    # Every committed device row came with its index row: each is found by deviceId through the index alone.
    before = (store.point_reads, store.fallback_queries)
    for i in range(CHANGES_PER_TRANSACTION):
        found = await store.find_device(TENANT, f"d-{i}")
        assert found is not None and found.record.id == item(i).record.id
    assert (store.point_reads - before[0], store.fallback_queries - before[1]) == (CHANGES_PER_TRANSACTION, 0)
    # The devices of the crashed transaction have neither row nor index: the lookup misses and falls back.
    assert await store.find_device(TENANT, "D-40") is None
    assert store.fallback_queries - before[1] == 1


async def test_concurrent_appends_conflict_instead_of_sharing_a_sequence(backend: dict[str, Any]) -> None:
    store = backend["store"]
    await store.apply(TENANT, [item(0)], "t")
    results = await asyncio.gather(
        store.apply(TENANT, [item(1)], "t"), store.apply(TENANT, [item(2)], "t"), return_exceptions=True
    )
    conflicts = sum(isinstance(r, ConflictError) for r in results)
    seqs = [e.seq for e in await store.events(TENANT, 0, 100)]
    # Interleaved, one writer loses; on a busy machine Azurite may serialize the two (the second reads the meta row
    # after the first committed) and both land. Either way no sequence number is shared or skipped.
    assert (conflicts, tuple(seqs)) in {(1, (1, 2)), (0, (1, 2, 3))}


async def test_devices_are_found_by_object_id_or_device_id_and_listed_in_pages(backend: dict[str, Any]) -> None:
    store = backend["store"]
    await store.apply(TENANT, [item(i) for i in range(5)], "t")
    found = await store.find_device(TENANT, "D-3")
    assert found is not None and found.record.id == item(3).record.id
    assert (await store.find_device(TENANT, item(2).record.id)) is not None
    assert await store.find_device(TENANT, "nope") is None
    first = await store.list_devices(TENANT, "", 3)
    rest = await store.list_devices(TENANT, first[-1]["id"], 3)
    assert [d["id"] for d in first + rest] == sorted(item(i).record.id for i in range(5))
    assert first[0]["state"] == ENROLLED and first[0]["deviceId"] == "D-0"


async def test_membership_graph_round_trips_even_past_one_entity(backend: dict[str, Any]) -> None:
    store = backend["store"]
    assert await store.load_graph(TENANT) is None
    graph = MembershipGraph()
    # ~60k random member ids compress to well over one 60 KB chunk.
    graph.apply_page([
        {"id": f"g{k}", "displayName": f"Group {k}",
         "members@delta": [{"@odata.type": "#microsoft.graph.user", "id": str(uuid.uuid4())} for _ in range(6000)]}
        for k in range(10)
    ])
    await store.save_graph(TENANT, graph, {"configVersion": 3})
    loaded = await store.load_graph(TENANT)
    assert loaded is not None and loaded[0] == graph and loaded[1] == {"configVersion": 3}
    small = MembershipGraph()
    small.apply_page([{"id": "g1", "displayName": "Only"}])
    await store.save_graph(TENANT, small, {})
    again = await store.load_graph(TENANT)
    assert again is not None and again[0] == small


async def test_cursor_commits_are_compare_and_swap(backend: dict[str, Any]) -> None:
    cursors = backend["cursors"]
    empty = await cursors.get(TENANT, "groups")
    assert empty == Cursor()
    first = await cursors.put(TENANT, "groups", Cursor(inflight="next-1"))
    assert (await cursors.get(TENANT, "groups")).inflight == "next-1"
    committed = await cursors.put(TENANT, "groups", first.commit("delta-1", 100.0, full=True))
    loaded = await cursors.get(TENANT, "groups")
    assert (loaded.committed, loaded.inflight, loaded.generation, loaded.full_at) == ("delta-1", "", 1, 100.0)
    with pytest.raises(ConflictError):
        await cursors.put(TENANT, "groups", first.commit("stale", 200.0))  # first's etag is old
    with pytest.raises(ConflictError):
        await cursors.put(TENANT, "groups", Cursor(committed="x"))  # must not exist yet
    assert (await cursors.get(TENANT, "groups")).committed == committed.committed
    await cursors.delete_tenant(TENANT)
    assert await cursors.get(TENANT, "groups") == Cursor()


async def test_only_one_of_many_concurrent_workers_gets_the_lease(backend: dict[str, Any]) -> None:
    leases = backend["leases"]
    got = await asyncio.gather(*(leases.acquire(TENANT, f"w{i}", 60, 1000.0) for i in range(5)))
    held = [g for g in got if g is not None]
    assert len(held) == 1
    assert await leases.acquire(TENANT, "late", 60, 1010.0) is None
    await leases.release(held[0], 1020.0)
    info = (await leases.all())[TENANT]
    assert (info.holder, info.last_started, info.last_finished) == ("", 1000.0, 1020.0)
    again = await leases.acquire(TENANT, "next", 60, 1030.0)
    assert again is not None
    # An expired lease (crashed worker) is taken over.
    assert await leases.acquire(TENANT, "rescuer", 60, 1100.0) is not None
    await leases.release(again, 1110.0)  # the old holder's release is ignored
    assert (await leases.all())[TENANT].holder == "rescuer"


async def test_rows_are_read_by_device_id_and_by_owner_past_one_query(backend: dict[str, Any]) -> None:
    store = backend["store"]

    def owned(i: int, owner: str) -> PlanItem:
        rec = DeviceRecord(id=f"00000000-0000-4000-8000-{i:012d}", device_id=f"D-{i}", operating_system="iOS",
                           owner_id=owner)
        return PlanItem(ENROLL, rec, "r", "Root")

    # 30 devices of owners o0..o14 (two each); device 0 later deactivated: rows of any state are returned.
    await store.apply(TENANT, [owned(i, f"o{i % 15}") for i in range(30)], "t")
    await store.apply(TENANT, [PlanItem(DEACTIVATE, owned(0, "o0").record, "gone", "Root")], "t")
    before = store.rows_read
    owners = [f"o{i}" for i in range(12)]  # more owners than one filter may hold
    found = await store.load_devices_for(
        TENANT, device_ids=[owned(29, "x").record.id, "00000000-0000-4000-8000-999999999999"], owner_ids=owners
    )
    want = {owned(i, "").record.id for i in range(30) if i % 15 < 12} | {owned(29, "").record.id}
    assert set(found) == want
    assert found[owned(0, "").record.id].state == DEACTIVATED
    assert store.rows_read - before == len(want)
    assert await store.load_devices_for(TENANT, device_ids=[], owner_ids=[]) == {}


async def test_a_held_lease_is_renewed_and_a_lost_one_is_not(backend: dict[str, Any]) -> None:
    leases = backend["leases"]
    lease = await leases.acquire(TENANT, "w1", 100.0, 1000.0)
    assert lease is not None
    renewed = await leases.renew(lease, 100.0, 1090.0)
    assert renewed is not None and renewed.etag != lease.etag
    assert await leases.acquire(TENANT, "w2", 100.0, 1150.0) is None  # still held thanks to the renewal
    assert await leases.renew(lease, 100.0, 1095.0) is None  # the old ETag is stale
    taken = await leases.acquire(TENANT, "w2", 100.0, 1200.0)  # expired: another worker takes it
    assert taken is not None
    assert await leases.renew(renewed, 100.0, 1201.0) is None
    await leases.release(renewed, 1202.0)  # a lost lease is not given back
    assert (await leases.all())[TENANT].holder == "w2"
    assert (await leases.all())[TENANT].last_started == 1200.0


async def drop_index_row(backend: dict[str, Any], device_id: str) -> None:
    """Make a device look like a row written before the index existed."""
    store = backend["store"]
    if isinstance(store, MemoryEnrollmentStore):
        del store._index[TENANT][f"x|{device_id.lower()}"]
        return
    table = await backend["storage"].table("devices")
    await table.delete_entity(TENANT, f"x|{device_id.lower()}")


async def test_device_id_lookup_is_a_point_read_of_the_index(backend: dict[str, Any]) -> None:
    store = backend["store"]
    await store.apply(TENANT, [item(i) for i in range(40)], "t")
    await store.apply(TENANT, [item(7, DEACTIVATE)], "t")
    table = backend["storage"].wrapped["devices"] if "storage" in backend else None
    calls = Counter(table.calls) if table is not None else Counter()
    found = await store.find_device(TENANT, "D-12")
    upper = await store.find_device(TENANT, "d-13")  # case-insensitive: Entra ids arrive in either case
    gone = await store.find_device(TENANT, "D-7")  # a deactivated device keeps its index row: still addressable
    assert found is not None and found.record.id == item(12).record.id
    assert upper is not None and upper.record.id == item(13).record.id
    assert gone is not None and gone.state == DEACTIVATED and gone.record.id == item(7).record.id
    assert (store.point_reads, store.fallback_queries) == (3, 0)
    if table is not None:
        # Per lookup: d|<key> (miss), x|<deviceId>, d|<object id>; never a query over the tenant's rows.
        assert table.calls - calls == Counter({"get_entity": 9})


async def test_rows_without_an_index_row_are_found_by_the_range_query(backend: dict[str, Any]) -> None:
    store = backend["store"]
    await store.apply(TENANT, [item(i) for i in range(5)], "t")
    await drop_index_row(backend, "D-2")
    found = await store.find_device(TENANT, "D-2")
    assert found is not None and found.record.id == item(2).record.id
    assert (store.point_reads, store.fallback_queries) == (1, 1)
    assert await store.find_device(TENANT, "D-404") is None  # unknown: index miss, then the fallback finds nothing
    assert (store.point_reads, store.fallback_queries) == (2, 2)
    # The next change that stores the legacy device enrolled writes its index row.
    await store.apply(TENANT, [PlanItem(UPDATE, item(2, os="iPadOS").record, "os changed", "Root")], "t")
    again = await store.find_device(TENANT, "D-2")
    assert again is not None and again.record.operating_system == "iPadOS"
    assert (store.point_reads, store.fallback_queries) == (3, 2)


async def test_a_device_id_change_moves_the_index(backend: dict[str, Any]) -> None:
    store = backend["store"]
    await store.apply(TENANT, [item(i) for i in range(3)], "t")
    old = item(1).record
    moved = DeviceRecord(id=old.id, device_id="D-NEW", operating_system="iOS", owner_id="u1")
    previous = {old.id: Stored(record=old, state=ENROLLED, via="Root")}
    await store.apply(TENANT, [PlanItem(UPDATE, moved, "deviceId changed", "Root")], "t", previous=previous)
    found = await store.find_device(TENANT, "d-new")
    assert found is not None and found.record.id == old.id
    assert (store.point_reads, store.fallback_queries) == (1, 0)
    assert await store.find_device(TENANT, "D-1") is None  # the old id's index row no longer names the device
    if "storage" in backend:
        table = await backend["storage"].table("devices")
        assert (await table.get_entity(TENANT, "x|d-1"))["objectId"] == ""  # tomb-stoned in the same transaction
        ops = table.transactions[-1]
        assert {op[1]["RowKey"] for op in ops} == {"d|" + old.id, "e|000000000004", "x|d-new", "x|d-1", "meta"}
    # Without the caller's previous rows (a Table store cannot know the old id) the stale row is still harmless.
    back = DeviceRecord(id=old.id, device_id="D-BACK", operating_system="iOS", owner_id="u1")
    await store.apply(TENANT, [PlanItem(UPDATE, back, "deviceId changed", "Root")], "t")
    assert await store.find_device(TENANT, "D-NEW") is None
    assert (await store.find_device(TENANT, "D-BACK")) is not None


async def test_index_rows_ride_in_the_device_rows_transactions_within_the_limit(backend: dict[str, Any]) -> None:
    store = backend["store"]
    items = [item(i) for i in range(120)]
    await store.apply(TENANT, items, "t")
    # Every one of them changes its deviceId: 4 operations each (row, event, index, tombstone) must still fit.
    rows = await store.load_devices(TENANT)
    moved = [PlanItem(UPDATE, DeviceRecord(id=i.record.id, device_id=f"M-{n}", operating_system="iOS",
                                           owner_id="u1"), "deviceId changed", "Root") for n, i in enumerate(items)]
    writes = store.writes
    await store.apply(TENANT, moved, "t", previous=rows)
    assert store.writes - writes == 4 * 120 + math.ceil(120 / 24)
    for n in (0, 59, 119):
        found = await store.find_device(TENANT, f"M-{n}")
        assert found is not None and found.record.id == items[n].record.id
        assert await store.find_device(TENANT, f"D-{n}") is None
    if "storage" not in backend:
        return
    txns = backend["storage"].wrapped["devices"].transactions
    assert [len(t) for t in txns[:4]] == [100, 100, 100, 2 * 21 + 21 + 1]  # 33 + 33 + 33 + 21 new devices
    assert all(len(t) <= MAX_OPS_PER_TRANSACTION for t in txns)
    for ops in txns:
        keys = {op[1]["RowKey"] for op in ops}
        for op in ops:
            entity = op[1]
            if entity["RowKey"].startswith("d|"):
                assert f"x|{entity['deviceId'].lower()}" in keys  # each device row with its index row, atomically
