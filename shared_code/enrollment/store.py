"""Enrollment state per tenant: device rows, the change feed, the membership graph and reconcile checkpoints.

The store is the one owner of the ``devices`` table (the Intune flows read it through :meth:`find_device`) and of
the ``memberships`` table.

**Shards.** A tenant's device rows are spread over ``S`` partitions of the ``devices`` table, so its write
throughput grows with the tenant (Azure documents ~2,000 entities/s per partition; Azurite's transaction cost grows
with the size of the partition). Every partition of a tenant has a PartitionKey that starts with the tenant id, so
one PartitionKey range ``[tid, tid + "~")`` holds the whole tenant (purge, scans):

* ``<tid>`` — the ``layout`` row (``shards`` = S, chosen once from the tenant's device count: one shard per
  ``SHARD_TARGET_DEVICES`` devices, at most ``MAX_SHARDS``). Tenants written before sharding keep their rows here
  (the *legacy* layout: one partition, no layout row, recognised by its ``meta`` row) and keep working unchanged.
* ``<tid>|<nn>`` (nn = crc32(object id) mod S, two digits) — the shard of a device: its row ``d|<object id>``, its
  events ``e|<sequence, 12 digits>``, the ``x|<Entra deviceId, lower-case>`` → ``{objectId}`` index rows of the
  devices stored there, and the shard's ``meta`` row with its next event sequence.

A change writes its device row, its event and (enroll/update) its index row in **one entity-group transaction** of
its shard (≤ 100 operations, reference/azure.md): all land or none. The shard's ``meta`` row is updated in every
transaction with its ETag, so two writers can never both append sequence N to a shard (one transaction fails as a
whole). Shards are written in parallel; each shard's transactions are sequential.

**Change feed.** Events are numbered per partition; an event id is a name-based UUID of (partition, sequence) and
never changes. The feed position is a vector of per-partition sequences (the service encodes it as one opaque
cursor). A page reads the next events of every partition and merges them by (time, partition, sequence): each
partition's events stay in commit order (a device always lives in one shard, so its own events are in order);
events of different devices committed concurrently in different shards have no order but a stable one. Every
event is served exactly once, because the cursor advances each partition only past the events it returned.

**Index.** A deviceId lookup reads the index row in every partition of the tenant (point reads, in parallel) and
then the device row it names: a device's index row must live in its shard to be written in the same transaction.
A deactivation leaves the index row in place (a deactivated device stays addressable); a moved deviceId is
tomb-stoned (``objectId`` ""). Legacy partitions written before the index existed may lack index rows until the
next full reconcile back-fills them (:meth:`backfill_index`); until then a lookup there falls back to the device
rows' RowKey range — the only query a lookup ever makes, and only for legacy tenants.

The membership graph and reconcile checkpoints (``memberships`` table) are stored compressed in binary properties
of one or more rows; a head row names the live generation, so a half-written new generation is never read.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import json
import math
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from shared_code.adapters.storage import StorageClients
from shared_code.domain.devices import DeviceRecord
from shared_code.domain.reconcile import DEACTIVATE, DEACTIVATED, ENROLLED, PlanItem, Stored
from shared_code.domain.scope import MembershipGraph
from shared_code.errors import ConflictError

# An entity-group transaction holds at most 100 operations (reference/azure.md). A change writes its device row, its
# event and (enroll/update) its index row, plus a tombstone when the deviceId moved; each transaction also updates the
# meta row. Chunks are cut by operation count (``_chunks``), so a new device costs 3 operations: 33 per transaction.
MAX_OPS_PER_TRANSACTION = 100
CHANGES_PER_TRANSACTION = (MAX_OPS_PER_TRANSACTION - 1) // 3
INDEX_PREFIX = "x|"
# One shard per this many devices of the tenant (a power of two at most MAX_SHARDS): Azurite's transaction cost is
# flat below a few thousand entities per partition and a partition's documented target is 2,000 entities/s.
SHARD_TARGET_DEVICES = 2000
MAX_SHARDS = 32
# Shards written at once within one apply (each shard's transactions stay sequential).
SHARD_WRITE_CONCURRENCY = 8
# Characters a RowKey may not contain (Table service data model); such a deviceId is simply not indexed.
_BAD_KEY_CHARS = frozenset("/\\#?") | {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)}
_EVENT_NS = uuid.UUID("6f1c1b7e-7c55-4c8e-9d2a-3b0f5b2f8e11")
# Binary property ≤ 64 KiB; 10 of them keep an entity under the 1 MiB limit even base64-encoded on the wire.
_CHUNK_BYTES = 60_000
_CHUNKS_PER_ROW = 10
# Table Storage allows at most 15 comparisons in one filter: partition + 2 row-key bounds + 10 owners.
OWNERS_PER_QUERY = 10
POINT_READ_CONCURRENCY = 16
LAYOUT_ROW = "layout"
META_ROW = "meta"
CHECKPOINT_HEAD = "ck"

BeforeCommit = Callable[[int], None]


class _TxnConflict(Exception):
    """A transaction failed as a whole (412 on the meta row or 409 on an event row)."""


# ---- rows: the minimal table operations the store needs, over Azure Tables or memory ------------------------------


class _Rows(Protocol):
    async def get(self, pk: str, rk: str) -> tuple[dict[str, Any], str] | None: ...

    async def query(
        self, pk: str, lo: str, hi: str, *, field: str | None = None, values: Sequence[str] = (),
        limit: int | None = None, inclusive: bool = True,
    ) -> list[dict[str, Any]]: ...

    async def transact(self, ops: list[tuple[str, dict[str, Any], str | None]]) -> list[str | None]: ...

    async def upsert(self, entity: dict[str, Any]) -> None: ...

    async def delete(self, pk: str, rk: str) -> None: ...

    async def keys(self, pk_lo: str, pk_hi: str) -> list[tuple[str, str]]: ...


class _MemoryRows:
    """One in-memory table with Table Storage's semantics the store relies on (ETags, atomic transactions)."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}
        self.version = 0

    async def get(self, pk: str, rk: str) -> tuple[dict[str, Any], str] | None:
        await asyncio.sleep(0)
        found = self.data.get(pk, {}).get(rk)
        return (copy.deepcopy(found[1]), str(found[0])) if found else None

    async def query(
        self, pk: str, lo: str, hi: str, *, field: str | None = None, values: Sequence[str] = (),
        limit: int | None = None, inclusive: bool = True,
    ) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        rows = self.data.get(pk, {})
        wanted = set(values)
        out = []
        for rk in sorted(rows):
            if (rk < lo if inclusive else rk <= lo) or rk >= hi:
                continue
            row = rows[rk][1]
            if field is not None and row.get(field) not in wanted:
                continue
            out.append(copy.deepcopy(row))
            if limit is not None and len(out) >= limit:
                break
        return out

    async def transact(self, ops: list[tuple[str, dict[str, Any], str | None]]) -> list[str | None]:
        await asyncio.sleep(0)
        for kind, entity, etag in ops:  # validate everything first: all or nothing
            found = self.data.get(entity["PartitionKey"], {}).get(entity["RowKey"])
            if kind == "create" and found is not None:
                raise _TxnConflict
            if kind == "update" and (found is None or str(found[0]) != etag):
                raise _TxnConflict
        out: list[str | None] = []
        for _kind, entity, _etag in ops:
            self.version += 1
            self.data.setdefault(entity["PartitionKey"], {})[entity["RowKey"]] = (self.version, copy.deepcopy(entity))
            out.append(str(self.version))
        return out

    async def upsert(self, entity: dict[str, Any]) -> None:
        await self.transact([("upsert", entity, None)])

    async def delete(self, pk: str, rk: str) -> None:
        await asyncio.sleep(0)
        self.data.get(pk, {}).pop(rk, None)

    async def keys(self, pk_lo: str, pk_hi: str) -> list[tuple[str, str]]:
        await asyncio.sleep(0)
        return [(pk, rk) for pk in sorted(self.data) if pk_lo <= pk < pk_hi for rk in sorted(self.data[pk])]


class _TableRows:
    """One Azure table (aio TableClient) behind the same operations."""

    def __init__(self, storage: StorageClients, logical: str) -> None:
        self._storage = storage
        self._logical = logical

    async def _table(self) -> Any:
        return await self._storage.table(self._logical)

    async def get(self, pk: str, rk: str) -> tuple[dict[str, Any], str] | None:
        table = await self._table()
        try:
            entity = await table.get_entity(pk, rk)
        except ResourceNotFoundError:
            return None
        return dict(entity), str(entity.metadata.get("etag"))

    async def query(
        self, pk: str, lo: str, hi: str, *, field: str | None = None, values: Sequence[str] = (),
        limit: int | None = None, inclusive: bool = True,
    ) -> list[dict[str, Any]]:
        table = await self._table()
        params: dict[str, Any] = {"pk": pk, "lo": lo, "hi": hi}
        query = f"PartitionKey eq @pk and RowKey {'ge' if inclusive else 'gt'} @lo and RowKey lt @hi"
        if field is not None:
            params.update({f"v{i}": v for i, v in enumerate(values)})
            either = " or ".join(f"{field} eq @v{i}" for i in range(len(values)))
            # Spaces around the parentheses: the SDK substitutes @names in space-separated words.
            query += f" and ( {either} )"
        out: list[dict[str, Any]] = []
        pages = table.query_entities(query, parameters=params, results_per_page=min(limit or 1000, 1000))
        async for entity in pages:
            out.append(dict(entity))
            if limit is not None and len(out) >= limit:
                break
        return out

    async def transact(self, ops: list[tuple[str, dict[str, Any], str | None]]) -> list[str | None]:
        table = await self._table()
        batch: list[Any] = []
        for kind, entity, etag in ops:
            if kind == "create":
                batch.append(("create", entity))
            elif kind == "update":
                batch.append(("update", entity, {"mode": UpdateMode.REPLACE, "etag": etag,
                                                 "match_condition": MatchConditions.IfNotModified}))
            else:
                batch.append(("upsert", entity, {"mode": UpdateMode.REPLACE}))
        try:
            results = await table.submit_transaction(batch)
        except TableTransactionError:
            raise _TxnConflict from None
        return [str(r.get("etag")) if r and r.get("etag") else None for r in results]

    async def upsert(self, entity: dict[str, Any]) -> None:
        table = await self._table()
        await table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    async def delete(self, pk: str, rk: str) -> None:
        table = await self._table()
        await table.delete_entity(pk, rk)  # idempotent: a missing entity is not an error for delete_entity

    async def keys(self, pk_lo: str, pk_hi: str) -> list[tuple[str, str]]:
        table = await self._table()
        out: list[tuple[str, str]] = []
        pages = table.query_entities(
            "PartitionKey ge @lo and PartitionKey lt @hi", parameters={"lo": pk_lo, "hi": pk_hi},
            select=["PartitionKey", "RowKey"],
        )
        async for entity in pages:
            out.append((str(entity["PartitionKey"]), str(entity["RowKey"])))
        return out


# ---- documents ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One change-feed entry (``seq`` counts within its ``shard``; ``shard`` 0 is also the legacy partition)."""

    id: str
    seq: int
    tenant_id: str
    device: str
    device_id: str
    user_id: str | None
    type: str
    reason: str
    time: str
    operating_system: str = ""
    shard: int = 0

    def to_dict(self) -> dict[str, Any]:
        """API shape."""
        return {
            "id": self.id,
            "sequence": self.seq,
            "shard": self.shard,
            "tenantId": self.tenant_id,
            "deviceObjectId": self.device,
            "deviceId": self.device_id,
            "userId": self.user_id,
            "type": self.type,
            "reason": self.reason,
            "time": self.time,
            "operatingSystem": self.operating_system,
        }


@dataclass(frozen=True)
class Layout:
    """Where a tenant's device rows live.

    Attributes:
        tenant_id: the tenant.
        shards: number of shard partitions ``<tid>|<nn>`` (1 for the legacy single partition ``<tid>``).
        legacy: rows live in the tenant's own partition, as before sharding.
        indexed: every device row has its deviceId index row (always true for sharded tenants).
    """

    tenant_id: str
    shards: int
    legacy: bool = False
    indexed: bool = True

    def partitions(self) -> list[str]:
        """PartitionKeys of the device shards, in feed order."""
        if self.legacy:
            return [self.tenant_id]
        return [shard_partition(self.tenant_id, i) for i in range(self.shards)]

    def shard_of(self, object_id: str) -> int:
        """Shard index of a device object id (the documented rule: crc32 of the lower-case id, mod S)."""
        if self.legacy or self.shards <= 1:
            return 0
        return zlib.crc32(object_id.lower().encode()) % self.shards

    def partition_of(self, object_id: str) -> str:
        """PartitionKey of a device object id's shard."""
        return self.partitions()[self.shard_of(object_id)]


def shard_partition(tenant_id: str, shard: int) -> str:
    """PartitionKey of shard ``shard`` (starts with the tenant id: the range ``[tid, tid+'~')`` covers it)."""
    return f"{tenant_id}|{shard:02d}"


def shards_for(devices: int, target: int = SHARD_TARGET_DEVICES) -> int:
    """Shard count for a tenant of ``devices`` devices (power of two, 1 … ``MAX_SHARDS``; ``target`` per shard)."""
    want = max(1, math.ceil(max(0, devices) / target))
    return min(MAX_SHARDS, 1 << (want - 1).bit_length())


# Deletes in flight at once while a tenant's rows are purged (offboarding).
PURGE_CONCURRENCY = 32


def tenant_range(tenant_id: str) -> tuple[str, str]:
    """The PartitionKey range holding every partition of a tenant in ``devices`` (and any other table)."""
    return tenant_id, tenant_id + "~"


def event_id(tenant_id: str, seq: int, partition: str | None = None) -> str:
    """Stable event id: a name-based UUID of (partition, sequence); the legacy partition is the tenant id."""
    return str(uuid.uuid5(_EVENT_NS, f"{partition or tenant_id}:{seq}"))


def event_type(action: str) -> str:
    """Event type for a plan action (``enroll`` → ``enrolled`` …)."""
    return {"enroll": "enrolled", "deactivate": "deactivated", "update": "updated"}[action]


def stored_from_row(row: Mapping[str, Any]) -> Stored:
    """Device row → :class:`Stored`."""
    return Stored(
        record=DeviceRecord.from_dict(json.loads(row["rec"])),
        state=str(row["state"]),
        via=str(row.get("via") or ""),
        path=str(row.get("path") or "owner"),
        reason=str(row.get("reason") or ""),
    )


def _device_row(item: PlanItem, now: str, seq: int) -> dict[str, Any]:
    return {
        # deviceId as its own column: the Intune flows look devices up by Entra deviceId.
        "deviceId": item.record.device_id,
        # ownerId as its own column: incremental polls read the rows of the owners whose scope changed.
        "ownerId": item.record.owner_id or "",
        "rec": json.dumps(item.record.to_dict(), separators=(",", ":")),
        "state": DEACTIVATED if item.action == DEACTIVATE else ENROLLED,
        "via": item.via,
        "path": item.path,
        "reason": item.reason,
        "updated": now,
        "seq": seq,
    }


def index_key(device_id: str) -> str | None:
    """RowKey of the deviceId index row (case-insensitive), or None when the id cannot be a RowKey (or is empty)."""
    if not device_id or any(ch in _BAD_KEY_CHARS for ch in device_id):
        return None
    return INDEX_PREFIX + device_id.lower()


def _index_ops(item: PlanItem, previous: Stored | None) -> list[tuple[str, str]]:
    """(RowKey, objectId) index writes for one change; objectId ``""`` is a tombstone for a moved deviceId.

    Only changes that store the device as enrolled point the index at it: a deactivation keeps the row's deviceId and
    its index row, and must not take the index away from another (enrolled) object that reuses the deviceId.
    """
    if item.action == DEACTIVATE:
        return []
    out: list[tuple[str, str]] = []
    new = index_key(item.record.device_id)
    old = index_key(previous.record.device_id) if previous is not None else None
    if old is not None and old != new:
        # A tombstone, not a delete: a failed delete would fail the whole transaction. A lookup treats a tombstone
        # as a miss.
        out.append((old, ""))
    if new is not None:
        out.append((new, item.record.id))
    return out


def _chunks(
    items: Sequence[PlanItem], previous: Callable[[str], Stored | None]
) -> list[list[tuple[PlanItem, list[tuple[str, str]]]]]:
    """Split changes into transactions of ≤ ``MAX_OPS_PER_TRANSACTION`` operations (meta row included).

    Index writes are de-duplicated per transaction (an entity may appear once in a batch): the last write of a
    RowKey wins, and a real index entry always beats a tombstone of the same key.
    """
    out: list[list[tuple[PlanItem, list[tuple[str, str]]]]] = []
    chunk: list[tuple[PlanItem, list[tuple[str, str]]]] = []
    keys: dict[str, str] = {}
    ops = 1  # the meta row
    for item in items:
        idx = _index_ops(item, previous(item.record.id))
        extra = sum(1 for key, _ in idx if key not in keys)
        if chunk and ops + 2 + extra > MAX_OPS_PER_TRANSACTION:
            out.append(chunk)
            chunk, keys, ops = [], {}, 1
            extra = len(idx)
        chunk.append((item, idx))
        for key, target in idx:
            if target or not keys.get(key):
                keys[key] = target
        ops += 2 + extra
    if chunk:
        out.append(chunk)
    return out


def _chunk_index(chunk: Sequence[tuple[PlanItem, list[tuple[str, str]]]]) -> dict[str, str]:
    """The index rows one transaction writes (RowKey → objectId; ``""`` tombstone), de-duplicated as in ``_chunks``."""
    keys: dict[str, str] = {}
    for _, idx in chunk:
        for key, target in idx:
            if target or not keys.get(key):
                keys[key] = target
    return keys


def device_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """API shape of a device row."""
    rec = json.loads(row["rec"])
    return {
        **rec,
        "state": row["state"],
        "reason": row.get("reason") or "",
        "enrollmentGroup": row.get("via") or "",
        "updatedAt": row.get("updated") or "",
        "lastEventSequence": int(row.get("seq") or 0),
    }


def _event(tenant_id: str, partition: str, shard: int, seq: int, item: PlanItem, now: str) -> Event:
    return Event(
        id=event_id(tenant_id, seq, partition),
        seq=seq,
        tenant_id=tenant_id,
        device=item.record.id,
        device_id=item.record.device_id,
        user_id=item.record.owner_id,
        type=event_type(item.action),
        reason=item.reason,
        time=now,
        operating_system=item.record.operating_system,
        shard=shard,
    )


def _event_row(ev: Event) -> dict[str, Any]:
    return {k: v for k, v in ev.to_dict().items() if v is not None}


def _event_from_row(row: Mapping[str, Any], shard: int) -> Event:
    return Event(
        id=str(row["id"]),
        seq=int(row["sequence"]),
        tenant_id=str(row["tenantId"]),
        device=str(row["deviceObjectId"]),
        device_id=str(row.get("deviceId") or ""),
        user_id=row.get("userId"),
        type=str(row["type"]),
        reason=str(row.get("reason") or ""),
        time=str(row.get("time") or ""),
        operating_system=str(row.get("operatingSystem") or ""),
        shard=shard,
    )


async def _run_all(jobs: Iterable[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Run jobs concurrently (at most ``limit`` at once); the first failure cancels the rest and is re-raised."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await job()

    try:
        async with asyncio.TaskGroup() as group:
            for job in jobs:
                group.create_task(one(job))
    except BaseExceptionGroup as group_error:
        first = group_error.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


def _pack(payload: bytes) -> list[list[bytes]]:
    """Binary payload → rows of ≤ ``_CHUNKS_PER_ROW`` properties of ≤ ``_CHUNK_BYTES`` each."""
    parts = [payload[i : i + _CHUNK_BYTES] for i in range(0, len(payload), _CHUNK_BYTES)] or [b""]
    return [parts[i : i + _CHUNKS_PER_ROW] for i in range(0, len(parts), _CHUNKS_PER_ROW)]


def _compress(payload: bytes | Iterable[bytes]) -> bytes:
    """zlib (level 6) of a payload or of the concatenation of its pieces, compressed as the pieces come."""
    if isinstance(payload, bytes):
        return zlib.compress(payload, 6)
    z = zlib.compressobj(6)
    out = [z.compress(piece) for piece in payload]
    out.append(z.flush())
    return b"".join(out)


def _lines(blob: bytes, step: int = 1 << 16) -> Iterator[bytes]:
    """The non-empty lines of a zlib payload, decompressed ``step`` compressed bytes at a time."""
    z = zlib.decompressobj()
    tail = b""
    for start in range(0, len(blob), step):
        lines = (tail + z.decompress(blob[start : start + step])).split(b"\n")
        tail = lines.pop()
        yield from (line for line in lines if line)
    lines = (tail + z.flush()).split(b"\n")
    yield from (line for line in lines if line)


class EnrollmentStore:
    """Per-tenant enrollment state over two tables (``devices``, ``memberships``) of Azure Tables or memory.

    ``writes`` counts entity writes (tests assert quiet polls write nothing); ``rows_read`` counts device rows loaded
    by :meth:`load_devices` / :meth:`load_devices_for`; ``point_reads`` / ``fallback_queries`` count deviceId
    lookups by path (tests assert a lookup never scans).
    """

    def __init__(self, devices: _Rows, memberships: _Rows, *, shard_target: int = SHARD_TARGET_DEVICES) -> None:
        self._devices = devices
        self._shard_target = shard_target
        self._memberships = memberships
        self.writes = 0
        self.rows_read = 0
        self.point_reads = 0
        self.fallback_queries = 0
        self.before_commit: BeforeCommit | None = None

    # ---- layout ---------------------------------------------------------------------------------------------------

    async def layout(self, tenant_id: str) -> Layout | None:
        """The tenant's layout, or None before its first device row."""
        found = await self._devices.get(tenant_id, LAYOUT_ROW)
        if found is not None:
            row = found[0]
            return Layout(tenant_id, int(row["shards"]), bool(row.get("legacy")), bool(row.get("indexed", True)))
        if await self._devices.get(tenant_id, META_ROW) is not None:
            return Layout(tenant_id, 1, legacy=True, indexed=False)
        return None

    async def ensure_layout(self, tenant_id: str, expected_devices: int) -> Layout:
        """The tenant's layout, created for ``expected_devices`` when it has none (the shard count never changes)."""
        current = await self.layout(tenant_id)
        if current is not None:
            return current
        shards = shards_for(expected_devices, self._shard_target)
        try:
            await self._devices.transact([("create", {"PartitionKey": tenant_id, "RowKey": LAYOUT_ROW,
                                                      "shards": shards, "legacy": False}, None)])
            self.writes += 1
        except _TxnConflict:
            pass  # another writer created it first: use theirs
        found = await self.layout(tenant_id)
        assert found is not None
        return found

    async def _read_layout(self, tenant_id: str) -> Layout:
        """The layout for reads (an empty tenant reads as one empty shard)."""
        return await self.layout(tenant_id) or Layout(tenant_id, 1)

    # ---- device rows ----------------------------------------------------------------------------------------------

    async def load_devices(self, tenant_id: str, shard: int | None = None) -> dict[str, Stored]:
        """Every device row of the tenant (or of one shard)."""
        layout = await self._read_layout(tenant_id)
        parts = layout.partitions()
        if shard is not None:
            parts = [parts[shard]]
        out: dict[str, Stored] = {}

        async def one(pk: str) -> None:
            for row in await self._devices.query(pk, "d|", "d}"):
                out[str(row["RowKey"])[2:]] = stored_from_row(row)

        await _run_all([lambda pk=pk: one(pk) for pk in parts], SHARD_WRITE_CONCURRENCY)  # type: ignore[misc]
        self.rows_read += len(out)
        return out

    async def load_devices_for(
        self, tenant_id: str, *, device_ids: Sequence[str], owner_ids: Sequence[str]
    ) -> dict[str, Stored]:
        """The rows of the given devices and of every device stored with one of the given owners (any state).

        Devices by point read in their shard (bounded concurrency); owners by ``ownerId`` filter,
        ``OWNERS_PER_QUERY`` per query and shard (the service matches the filter inside the partition).
        """
        layout = await self._read_layout(tenant_id)
        out: dict[str, Stored] = {}
        gate = asyncio.Semaphore(POINT_READ_CONCURRENCY)

        async def point(did: str) -> None:
            async with gate:
                found = await self._devices.get(layout.partition_of(did), "d|" + did)
                if found is not None:
                    out[did] = stored_from_row(found[0])

        async def owners(pk: str, chunk: list[str]) -> None:
            async with gate:
                for row in await self._devices.query(pk, "d|", "d}", field="ownerId", values=chunk):
                    out[str(row["RowKey"])[2:]] = stored_from_row(row)

        wanted = sorted(set(owner_ids))
        jobs = [point(d) for d in dict.fromkeys(device_ids)]
        for start in range(0, len(wanted), OWNERS_PER_QUERY):
            jobs += [owners(pk, wanted[start : start + OWNERS_PER_QUERY]) for pk in layout.partitions()]
        await asyncio.gather(*jobs)
        self.rows_read += len(out)
        return out

    async def list_devices(self, tenant_id: str, after: str, limit: int) -> list[dict[str, Any]]:
        """Device rows in object-id order after ``after``, API shape (``id`` is the object id); merged over shards."""
        layout = await self._read_layout(tenant_id)
        pages = await asyncio.gather(*(
            self._devices.query(pk, "d|" + after, "d}", limit=limit, inclusive=False) for pk in layout.partitions()
        ))
        merged = heapq.merge(*pages, key=lambda row: str(row["RowKey"]))
        out: list[dict[str, Any]] = []
        for row in merged:
            out.append(device_view(row))
            if len(out) >= limit:
                break
        return out

    async def apply(
        self, tenant_id: str, items: Sequence[PlanItem], now: str, previous: Mapping[str, Stored] | None = None
    ) -> list[Event]:
        """Write each item's device row, event and deviceId index row, ≤ 100 operations per atomic transaction.

        Items are grouped by shard; shards are written in parallel (at most ``SHARD_WRITE_CONCURRENCY``), each
        shard's transactions in order. ``previous``: the rows as stored before (what the caller read to plan); a
        deviceId that differs there gets its old index row tomb-stoned in the same transaction.

        Raises:
            ConflictError: another writer appended events to a shard meanwhile (this poll must stop).
        """
        if not items:
            return []
        layout = await self.layout(tenant_id) or await self.ensure_layout(tenant_id, len(items))
        parts = layout.partitions()
        by_shard: dict[int, list[PlanItem]] = {}
        for item in items:
            by_shard.setdefault(layout.shard_of(item.record.id), []).append(item)
        known = previous or {}
        written: dict[int, list[Event]] = {}
        counter = [0]

        async def shard_job(shard: int) -> None:
            written[shard] = await self._apply_partition(
                tenant_id, parts[shard], shard, by_shard[shard], now, known, counter
            )

        await _run_all([lambda s=s: shard_job(s) for s in sorted(by_shard)],  # type: ignore[misc]
                       SHARD_WRITE_CONCURRENCY)
        return [ev for shard in sorted(written) for ev in written[shard]]

    async def _apply_partition(
        self, tenant_id: str, pk: str, shard: int, items: Sequence[PlanItem], now: str,
        known: Mapping[str, Stored], counter: list[int],
    ) -> list[Event]:
        meta = await self._devices.get(pk, META_ROW)
        head = int(meta[0].get("seq") or 0) if meta else 0
        etag = meta[1] if meta else None
        out: list[Event] = []
        for chunk in _chunks(items, known.get):
            ops: list[tuple[str, dict[str, Any], str | None]] = []
            events: list[Event] = []
            for item, _ in chunk:
                head += 1
                ev = _event(tenant_id, pk, shard, head, item, now)
                events.append(ev)
                ops.append(("upsert", {"PartitionKey": pk, "RowKey": "d|" + item.record.id,
                                       **_device_row(item, now, head)}, None))
                ops.append(("create", {"PartitionKey": pk, "RowKey": f"e|{head:012d}", **_event_row(ev)}, None))
            for key, target in _chunk_index(chunk).items():
                ops.append(("upsert", {"PartitionKey": pk, "RowKey": key, "objectId": target}, None))
            meta_row = {"PartitionKey": pk, "RowKey": META_ROW, "seq": head}
            ops.append(("create", meta_row, None) if etag is None else ("update", meta_row, etag))
            if self.before_commit is not None:
                n = counter[0]
                counter[0] += 1
                self.before_commit(n)
            try:
                etags = await self._devices.transact(ops)
            except _TxnConflict:
                raise ConflictError(f"tenant {tenant_id}: events appended concurrently") from None
            self.writes += len(ops)
            etag = etags[-1]
            if etag is None:
                found = await self._devices.get(pk, META_ROW)
                etag = found[1] if found else None
            out.extend(events)
        return out

    # ---- change feed ----------------------------------------------------------------------------------------------

    async def feed_heads(self, tenant_id: str) -> list[int]:
        """Highest event sequence of each partition, in feed order (the position after the last event)."""
        layout = await self._read_layout(tenant_id)
        metas = await asyncio.gather(*(self._devices.get(pk, META_ROW) for pk in layout.partitions()))
        return [int(m[0].get("seq") or 0) if m else 0 for m in metas]

    async def events(
        self, tenant_id: str, position: Sequence[int] | None, limit: int
    ) -> tuple[list[Event], list[int], bool]:
        """The next ``limit`` events after ``position`` (per-partition sequences; None = the start).

        Returns the events (merged by time, partition, sequence), the position after them, and whether more
        events follow.

        Raises:
            ValueError: ``position`` does not fit the tenant's layout.
        """
        layout = await self._read_layout(tenant_id)
        parts = layout.partitions()
        pos = list(position) if position is not None else [0] * len(parts)
        if len(pos) != len(parts):
            raise ValueError("feed position does not match the tenant's partitions")
        pages = await asyncio.gather(*(
            self._devices.query(pk, f"e|{pos[i]:012d}", "e}", limit=limit + 1, inclusive=False)
            for i, pk in enumerate(parts)
        ))
        streams = [[_event_from_row(row, i) for row in page] for i, page in enumerate(pages)]
        merged = heapq.merge(*streams, key=lambda e: (e.time, e.shard, e.seq))
        out: list[Event] = []
        for ev in merged:
            if len(out) >= limit:
                break
            out.append(ev)
            pos[ev.shard] = ev.seq
        more = sum(len(s) for s in streams) > len(out)
        return out, pos, more

    # ---- lookups --------------------------------------------------------------------------------------------------

    async def find_device(self, tenant_id: str, key: str) -> Stored | None:
        """A device row by Entra object id or by ``deviceId`` (case-insensitive), or None.

        Point reads only: the object id's shard, then the index row of ``key`` in every partition and the row it
        names. A legacy partition not yet back-filled falls back to its device rows' RowKey range.
        """
        layout = await self.layout(tenant_id)
        if layout is None:
            return None
        found = await self._devices.get(layout.partition_of(key), "d|" + key)
        if found is not None:
            return stored_from_row(found[0])
        row = await self._by_index(layout, key)
        if row is not None:
            return stored_from_row(row)
        if not layout.indexed:
            self.fallback_queries += 1
            pk = layout.partitions()[0]
            for candidate in dict.fromkeys((key, key.lower(), key.upper())):
                rows = await self._devices.query(pk, "d|", "d}", field="deviceId", values=[candidate], limit=1)
                if rows:
                    return stored_from_row(rows[0])
        return None

    async def _by_index(self, layout: Layout, device_id: str) -> dict[str, Any] | None:
        """The device row the deviceId index points at, if it still carries that deviceId (else None)."""
        ikey = index_key(device_id)
        if ikey is None:
            return None
        self.point_reads += 1
        parts = layout.partitions()
        hits = await asyncio.gather(*(self._devices.get(pk, ikey) for pk in parts))
        rows: list[dict[str, Any]] = []
        for pk, hit in zip(parts, hits, strict=True):
            target = str(hit[0].get("objectId") or "") if hit else ""
            if not target:
                continue  # no index row, or a tombstone: the deviceId moved away from the object that had it
            found = await self._devices.get(pk, "d|" + target)
            if found is not None and str(found[0].get("deviceId") or "").lower() == device_id.lower():
                rows.append(found[0])
        # A deviceId reused by a re-registered object: prefer the enrolled row.
        rows.sort(key=lambda r: r.get("state") != ENROLLED)
        return rows[0] if rows else None

    async def backfill_index(self, tenant_id: str) -> int:
        """Give every device row of a legacy partition its index row, then mark the layout indexed.

        Run by the full reconcile (bounded by the tenant's rows, idempotent). Returns the index rows written.
        """
        layout = await self.layout(tenant_id)
        if layout is None or layout.indexed:
            return 0
        pk = layout.partitions()[0]
        present = {str(r["RowKey"]) for r in await self._devices.query(pk, INDEX_PREFIX, "x}")}
        wanted: dict[str, str] = {}
        for row in await self._devices.query(pk, "d|", "d}"):
            ikey = index_key(str(row.get("deviceId") or ""))
            if ikey is not None and ikey not in present and (ikey not in wanted or row.get("state") == ENROLLED):
                wanted[ikey] = str(row["RowKey"])[2:]
        keys = sorted(wanted)
        for start in range(0, len(keys), MAX_OPS_PER_TRANSACTION):
            ops: list[tuple[str, dict[str, Any], str | None]] = [
                ("upsert", {"PartitionKey": pk, "RowKey": k, "objectId": wanted[k]}, None)
                for k in keys[start : start + MAX_OPS_PER_TRANSACTION]
            ]
            await self._devices.transact(ops)
            self.writes += len(ops)
        await self._devices.upsert({"PartitionKey": tenant_id, "RowKey": LAYOUT_ROW, "shards": 1, "legacy": True,
                                    "indexed": True})
        self.writes += 1
        return len(keys)

    # ---- blobs: the membership graph and reconcile checkpoints ----------------------------------------------------

    async def _write_blob_rows(self, tenant_id: str, prefix: str, payload: bytes) -> int:
        rows = _pack(payload)
        for i, parts in enumerate(rows):
            entity: dict[str, Any] = {"PartitionKey": tenant_id, "RowKey": f"{prefix}|{i:03d}", "parts": len(parts)}
            entity.update({f"b{j}": part for j, part in enumerate(parts)})
            await self._memberships.upsert(entity)
            self.writes += 1
        return len(rows)

    async def _read_blob_rows(self, tenant_id: str, prefix: str, rows: int) -> bytes:
        parts: list[bytes] = []
        for i in range(rows):
            found = await self._memberships.get(tenant_id, f"{prefix}|{i:03d}")
            if found is None:
                raise ConflictError(f"tenant {tenant_id}: stored rows {prefix} are incomplete")
            parts += (bytes(found[0][f"b{j}"]) for j in range(int(found[0]["parts"])))
        return b"".join(parts)

    async def load_graph(self, tenant_id: str) -> tuple[MembershipGraph, dict[str, Any]] | None:
        """The stored membership graph and its metadata, or None."""
        head = await self._memberships.get(tenant_id, "graph")
        if head is None:
            return None
        gen, rows = int(head[0]["gen"]), int(head[0]["rows"])
        blob = await self._read_blob_rows(tenant_id, f"graph|{gen:08d}", rows)
        graph = MembershipGraph.from_json(json.loads(zlib.decompress(blob)))
        return graph, json.loads(str(head[0].get("meta") or "{}"))

    async def graph_meta(self, tenant_id: str) -> dict[str, Any] | None:
        """The stored graph's metadata only (one point read), or None."""
        head = await self._memberships.get(tenant_id, "graph")
        return json.loads(str(head[0].get("meta") or "{}")) if head else None

    async def save_graph(self, tenant_id: str, graph: MembershipGraph, meta: dict[str, Any]) -> None:
        """Replace the stored graph (atomically switches generation)."""
        head = await self._memberships.get(tenant_id, "graph")
        old_gen, old_rows = (int(head[0]["gen"]), int(head[0]["rows"])) if head else (0, 0)
        gen = old_gen + 1
        blob = zlib.compress(json.dumps(graph.to_json(), separators=(",", ":")).encode(), 6)
        rows = await self._write_blob_rows(tenant_id, f"graph|{gen:08d}", blob)
        await self._memberships.upsert({"PartitionKey": tenant_id, "RowKey": "graph", "gen": gen, "rows": rows,
                                        "meta": json.dumps(meta, separators=(",", ":"))})
        self.writes += 1
        for i in range(old_rows):  # the previous generation is unreachable now; drop it
            await self._memberships.delete(tenant_id, f"graph|{old_gen:08d}|{i:03d}")

    async def checkpoint(self, tenant_id: str) -> dict[str, Any] | None:
        """The head of the tenant's reconcile checkpoint (a JSON document), or None."""
        head = await self._memberships.get(tenant_id, CHECKPOINT_HEAD)
        return json.loads(str(head[0]["doc"])) if head else None

    async def put_checkpoint(
        self, tenant_id: str, head: dict[str, Any], chunks: Mapping[int, bytes | Iterable[bytes]] | None = None
    ) -> None:
        """Write chunk payloads (``ck|<run>|<n>``), then the head that makes them part of the checkpoint.

        ``head["run"]`` names the run; chunk rows of a run are rewritten identically by a replayed step, so a crash
        between the chunk rows and the head loses nothing and duplicates nothing. ``head["chunks"]`` maps chunk
        number → row count (the caller keeps it). A payload given as pieces (e.g. lines) is compressed piece by
        piece: a big chunk never exists uncompressed in one piece.
        """
        run = str(head["run"])
        rows = dict(head.get("chunkRows") or {})
        for n, payload in sorted((chunks or {}).items()):
            rows[str(n)] = await self._write_blob_rows(tenant_id, f"ck|{run}|{n:05d}", _compress(payload))
        doc = {**head, "chunkRows": rows}
        await self._memberships.upsert({"PartitionKey": tenant_id, "RowKey": CHECKPOINT_HEAD,
                                        "doc": json.dumps(doc, separators=(",", ":"))})
        self.writes += 1
        head["chunkRows"] = rows

    async def checkpoint_chunks(self, tenant_id: str, head: Mapping[str, Any]) -> dict[int, bytes]:
        """Every chunk payload the head names (chunk number → bytes)."""
        run = str(head["run"])
        out: dict[int, bytes] = {}
        for n, rows in sorted((head.get("chunkRows") or {}).items(), key=lambda kv: int(kv[0])):
            out[int(n)] = zlib.decompress(await self._read_blob_rows(tenant_id, f"ck|{run}|{int(n):05d}", int(rows)))
        return out

    async def checkpoint_chunk_lines(self, tenant_id: str, head: Mapping[str, Any], n: int) -> Iterator[bytes]:
        """One chunk's payload as its non-empty lines, decompressed as they are consumed (see :func:`_lines`)."""
        rows = int((head.get("chunkRows") or {})[str(n)])
        return _lines(await self._read_blob_rows(tenant_id, f"ck|{head['run']}|{n:05d}", rows))

    async def clear_checkpoint(self, tenant_id: str) -> None:
        """Forget the checkpoint: the head first (then no half-deleted run is ever read), then its chunk rows."""
        head = await self.checkpoint(tenant_id)
        if head is None:
            return
        await self._memberships.delete(tenant_id, CHECKPOINT_HEAD)
        self.writes += 1
        run = str(head["run"])
        for rk in [rk for pk, rk in await self._memberships.keys(*tenant_range(tenant_id))
                   if pk == tenant_id and rk.startswith(f"ck|{run}|")]:
            await self._memberships.delete(tenant_id, rk)

    # ---- tenant ---------------------------------------------------------------------------------------------------

    async def delete_tenant(self, tenant_id: str, limit: int | None = None) -> bool:
        """Remove the tenant's rows (the PartitionKey range ``[tid, tid+'~')`` of both tables), at most ``limit``
        per call so offboarding purges in bounded steps; True when none is left. Idempotent (a replay resumes)."""
        budget = limit
        for rows in (self._devices, self._memberships):
            keys = await rows.keys(*tenant_range(tenant_id))
            more = budget is not None and len(keys) > budget
            if budget is not None:
                keys = keys[:budget]
                budget -= len(keys)
            for start in range(0, len(keys), PURGE_CONCURRENCY):
                await asyncio.gather(*(rows.delete(pk, rk) for pk, rk in keys[start : start + PURGE_CONCURRENCY]))
            if more:
                return False
        return True


class MemoryEnrollmentStore(EnrollmentStore):
    """In-memory store with the same rows, transactions and conflicts (unit tests and the bench's memory runs)."""

    def __init__(self, *, shard_target: int = SHARD_TARGET_DEVICES) -> None:
        self.device_rows = _MemoryRows()
        self.membership_rows = _MemoryRows()
        super().__init__(self.device_rows, self.membership_rows, shard_target=shard_target)


class TableEnrollmentStore(EnrollmentStore):
    """Table Storage implementation (tables ``devices`` and ``memberships``)."""

    def __init__(self, storage: StorageClients, *, shard_target: int = SHARD_TARGET_DEVICES) -> None:
        super().__init__(_TableRows(storage, "devices"), _TableRows(storage, "memberships"),
                         shard_target=shard_target)
