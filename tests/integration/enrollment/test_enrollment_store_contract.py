"""One contract suite for the enrollment ports, run on the in-memory fakes and on Table Storage (Azurite)."""

from __future__ import annotations

import asyncio
import math
import os
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
    shards_for,
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
    assert events[0].id == event_id(TENANT, 1, TENANT + "|00")  # shard 0 of a one-shard tenant
    more = await store.apply(TENANT, [item(3, DEACTIVATE), item(4, UPDATE, os="iPadOS")], "2026-01-02T00:00:00Z")
    assert [e.seq for e in more] == [121, 122] and more[0].type == "deactivated"
    rows = await store.load_devices(TENANT)
    assert len(rows) == 120
    assert rows[item(3).record.id].state == DEACTIVATED
    assert rows[item(4).record.id].record.operating_system == "iPadOS"
    assert rows[item(5).record.id].state == ENROLLED
    page1, pos1, more1 = await store.events(TENANT, None, 50)
    page2, pos2, more2 = await store.events(TENANT, pos1, 1000)
    assert [e.seq for e in page1 + page2] == list(range(1, 123)) and (more1, more2) == (True, False)
    assert pos2 == await store.feed_heads(TENANT) == [122]
    assert await store.feed_heads("99999999-2222-4333-8444-555555555555") == [0]


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
    assert [e.seq for e in (await store.events(TENANT, None, 1000))[0]] == list(range(1, 34))
    # Every committed device row came with its index row: each is found by deviceId through the index alone.
    before = (store.point_reads, store.fallback_queries)
    for i in range(CHANGES_PER_TRANSACTION):
        found = await store.find_device(TENANT, f"d-{i}")
        assert found is not None and found.record.id == item(i).record.id
    assert (store.point_reads - before[0], store.fallback_queries - before[1]) == (CHANGES_PER_TRANSACTION, 0)
    # The devices of the crashed transaction have neither row nor index: the lookup misses, without a scan.
    assert await store.find_device(TENANT, "D-40") is None
    assert store.fallback_queries == before[1]


async def test_concurrent_appends_conflict_instead_of_sharing_a_sequence(backend: dict[str, Any]) -> None:
    store = backend["store"]
    await store.apply(TENANT, [item(0)], "t")
    results = await asyncio.gather(
        store.apply(TENANT, [item(1)], "t"), store.apply(TENANT, [item(2)], "t"), return_exceptions=True
    )
    conflicts = sum(isinstance(r, ConflictError) for r in results)
    seqs = [e.seq for e in (await store.events(TENANT, None, 100))[0]]
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
        # Per lookup: layout, d|<key> (miss), x|<deviceId>, d|<object id>; never a query over the tenant's rows.
        assert table.calls - calls == Counter({"get_entity": 12})


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
        assert (await table.get_entity(TENANT + "|00", "x|d-1"))["objectId"] == ""  # tomb-stoned, same transaction
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
    assert len(txns[0]) == 1  # the layout row, created once
    assert [len(t) for t in txns[1:5]] == [100, 100, 100, 2 * 21 + 21 + 1]  # 33 + 33 + 33 + 21 new devices
    assert all(len(t) <= MAX_OPS_PER_TRANSACTION for t in txns)
    for ops in txns:
        keys = {op[1]["RowKey"] for op in ops}
        for op in ops:
            entity = op[1]
            if entity["RowKey"].startswith("d|"):
                assert f"x|{entity['deviceId'].lower()}" in keys  # each device row with its index row, atomically


def spread(i: int, owner: str = "u1") -> PlanItem:
    rec = DeviceRecord(id=str(uuid.UUID(int=i * 7919 + 1)), device_id=f"S-{i}", operating_system="iOS",
                       owner_id=owner)
    return PlanItem(ENROLL, rec, f"reason {i}", "Root")


async def test_a_big_tenant_spreads_over_shards_inside_its_partition_key_range(backend: dict[str, Any]) -> None:
    store = backend["store"]
    layout = await store.ensure_layout(TENANT, 30_000)
    assert layout.shards == shards_for(30_000) == 16
    assert await store.ensure_layout(TENANT, 10) == layout  # fixed once chosen
    items = [spread(i) for i in range(400)]
    writes = store.writes
    events = await store.apply(TENANT, items, "2026-01-01T00:00:00Z")
    assert len(events) == 400 and len({e.id for e in events}) == 400
    used = {layout.partition_of(i.record.id) for i in items}
    assert len(used) == 16 and all(pk.startswith(TENANT + "|") for pk in used)
    # ≤ 3 entity writes per newly enrolled device (+ one meta update per transaction).
    transactions = sum(math.ceil(sum(1 for i in items if layout.partition_of(i.record.id) == pk) / 33) for pk in used)
    assert store.writes - writes == 3 * 400 + transactions
    rows = await store.load_devices(TENANT)
    assert set(rows) == {i.record.id for i in items}
    assert len(await store.load_devices(TENANT, shard=3)) == sum(1 for i in items if layout.shard_of(i.record.id) == 3)
    found = await store.find_device(TENANT, "s-123")
    assert found is not None and found.record.id == items[123].record.id
    listed: list[str] = []
    after = ""
    while True:
        page = await store.list_devices(TENANT, after, 37)
        if not page:
            break
        listed += [d["id"] for d in page]
        after = page[-1]["id"]
    assert listed == sorted(i.record.id for i in items)
    both = await store.load_devices_for(TENANT, device_ids=[items[5].record.id], owner_ids=["nobody"])
    assert set(both) == {items[5].record.id}
    if "storage" in backend:
        table = await backend["storage"].table("devices")
        pks = {e["PartitionKey"] async for e in table.query_entities(
            "PartitionKey ge @lo and PartitionKey lt @hi", parameters={"lo": TENANT, "hi": TENANT + "~"})}
        assert pks == used | {TENANT}  # the layout row + the shards: one PartitionKey range holds the tenant


async def test_the_feed_pages_every_event_of_every_shard_exactly_once(backend: dict[str, Any]) -> None:
    store = backend["store"]
    await store.ensure_layout(TENANT, 20_000)
    await store.apply(TENANT, [spread(i) for i in range(150)], "2026-01-01T00:00:00Z")
    seen: list[str] = []
    position = None
    pages = 0
    while True:
        events, position, more = await store.events(TENANT, position, 23)
        seen += [e.id for e in events]
        pages += 1
        # Writes between pages (a later poll) land behind the cursor and are served once too.
        if pages == 3:
            await store.apply(TENANT, [PlanItem(DEACTIVATE, spread(i).record, "gone", "Root") for i in range(10)],
                              "2026-01-02T00:00:00Z")
        if not more:
            break
    assert len(seen) == len(set(seen)) == 160
    assert position == await store.feed_heads(TENANT)
    again, same, more = await store.events(TENANT, position, 50)
    assert (again, same, more) == ([], position, False)
    with pytest.raises(ValueError):
        await store.events(TENANT, [0], 10)  # a position of another layout


async def test_shards_are_written_concurrently_and_conflicts_stay_per_shard(backend: dict[str, Any]) -> None:
    store = backend["store"]
    layout = await store.ensure_layout(TENANT, 8_000)
    items = [spread(i) for i in range(40)]
    first = [i for i in items if layout.shard_of(i.record.id) == 0][:1]
    other = [i for i in items if layout.shard_of(i.record.id) == 1][:1]
    a, b = await asyncio.gather(store.apply(TENANT, first, "t"), store.apply(TENANT, other, "t"))
    assert (a[0].shard, a[0].seq, b[0].shard, b[0].seq) == (0, 1, 1, 1)
    assert a[0].id != b[0].id


async def test_checkpoint_chunks_round_trip_and_are_cleared(backend: dict[str, Any]) -> None:
    store = backend["store"]
    assert await store.checkpoint(TENANT) is None
    head: dict[str, Any] = {"run": "r1", "phase": "read", "next": "link-1"}
    big = uuid.uuid4().bytes * 50_000  # incompressible-ish blocks past one row
    await store.put_checkpoint(TENANT, head, {0: b"graph", 1: big})
    await store.put_checkpoint(TENANT, {**head, "next": "link-2"}, {2: b"more"})
    loaded = await store.checkpoint(TENANT)
    assert loaded is not None and loaded["next"] == "link-2"
    chunks = await store.checkpoint_chunks(TENANT, loaded)
    assert chunks == {0: b"graph", 1: big, 2: b"more"}
    await store.clear_checkpoint(TENANT)
    assert await store.checkpoint(TENANT) is None


async def test_a_chunk_written_as_lines_is_read_back_line_by_line(backend: dict[str, Any]) -> None:
    store = backend["store"]
    head: dict[str, Any] = {"run": "r2", "phase": "apply"}
    # Pieces are compressed as they come; long random lines make the payload span several rows and the reader
    # split lines across its decompression steps.
    lines = [f"line {i} ".encode() + os.urandom(16 * (1 + i % 50)).hex().encode() for i in range(3_000)]
    await store.put_checkpoint(TENANT, head, {0: b"graph", 99: (line + b"\n" for line in lines)})
    loaded = await store.checkpoint(TENANT)
    assert loaded is not None and int(loaded["chunkRows"]["99"]) > 1
    assert list(await store.checkpoint_chunk_lines(TENANT, loaded, 99)) == lines
    assert (await store.checkpoint_chunks(TENANT, loaded))[99] == b"".join(line + b"\n" for line in lines)
    await store.clear_checkpoint(TENANT)
    assert await store.checkpoint(TENANT) is None


async def test_delete_tenant_removes_every_partition_of_the_tenant_only(backend: dict[str, Any]) -> None:
    store = backend["store"]
    other = "99999999-2222-4333-8444-555555555555"
    await store.ensure_layout(TENANT, 10_000)
    await store.apply(TENANT, [spread(i) for i in range(30)], "t")
    await store.apply(other, [spread(i) for i in range(3)], "t")
    await store.save_graph(TENANT, MembershipGraph(), {})
    await store.delete_tenant(TENANT)
    assert await store.load_devices(TENANT) == {} and await store.layout(TENANT) is None
    assert await store.load_graph(TENANT) is None
    assert len(await store.load_devices(other)) == 3
