"""Enrollment state per tenant: device rows, the change feed, and the membership graph.

Device rows and events live in **one table partition** (table ``devices``, PartitionKey = tenant id) so each applied
change writes its device row and its event in the same entity-group transaction (≤ 100 operations, reference/azure.md):
either both land or neither. A ``meta`` row holds the next event sequence number and is updated in every
transaction with its ETag, so two writers can never both append sequence N (one transaction fails as a whole).
Events are numbered per tenant, monotonically; the event id is derived from (tenant, sequence) and never changes.

Row keys: ``d|<device object id>`` (state), ``e|<sequence, 12 digits>`` (event), ``meta``, and
``x|<Entra deviceId, lower-case>`` → ``{objectId}`` (index: the Intune flows and the console address a device by its
Entra deviceId; the index turns that lookup into two point reads instead of a scan of the tenant's device rows).
The index row is written in the same transaction as the device row whenever an applied change stores the device as
enrolled (enroll or update), so a committed device row always has its index row; a deactivation leaves it in place
(a deactivated device stays addressable). Rows written before the index existed have none: lookups fall back to
the RowKey-range query when the point read misses.
The membership graph (``memberships`` table) is stored compressed in binary properties of one or more rows of a
generation; the ``graph`` head row names the live generation, so a half-written new generation is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
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
# Characters a RowKey may not contain (Table service data model); such a deviceId is simply not indexed.
_BAD_KEY_CHARS = frozenset("/\\#?") | {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)}
_EVENT_NS = uuid.UUID("6f1c1b7e-7c55-4c8e-9d2a-3b0f5b2f8e11")
# Binary property ≤ 64 KiB; 10 of them keep an entity under the 1 MiB limit even base64-encoded on the wire.
_CHUNK_BYTES = 60_000
_CHUNKS_PER_ROW = 10
# Table Storage allows at most 15 comparisons in one filter: partition + 2 row-key bounds + 10 owners.
OWNERS_PER_QUERY = 10
POINT_READ_CONCURRENCY = 16

BeforeCommit = Callable[[int], None]


@dataclass(frozen=True)
class Event:
    """One change-feed entry."""

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

    def to_dict(self) -> dict[str, Any]:
        """API shape."""
        return {
            "id": self.id,
            "sequence": self.seq,
            "tenantId": self.tenant_id,
            "deviceObjectId": self.device,
            "deviceId": self.device_id,
            "userId": self.user_id,
            "type": self.type,
            "reason": self.reason,
            "time": self.time,
            "operatingSystem": self.operating_system,
        }


def event_id(tenant_id: str, seq: int) -> str:
    """Stable event id: a name-based UUID of (tenant, sequence)."""
    return str(uuid.uuid5(_EVENT_NS, f"{tenant_id}:{seq}"))


def event_type(action: str) -> str:
    """Event type for a plan action (``enroll`` → ``enrolled`` …)."""
    return {"enroll": "enrolled", "deactivate": "deactivated", "update": "updated"}[action]


def stored_from_row(row: dict[str, Any]) -> Stored:
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
        # A tombstone, not a delete: a legacy row has no index row to delete and a failed delete fails the whole
        # transaction. A lookup treats a tombstone as a miss and falls back to the range query.
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


def device_view(device_object_id: str, row: dict[str, Any]) -> dict[str, Any]:
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


def _event(tenant_id: str, seq: int, item: PlanItem, now: str) -> Event:
    return Event(
        id=event_id(tenant_id, seq),
        seq=seq,
        tenant_id=tenant_id,
        device=item.record.id,
        device_id=item.record.device_id,
        user_id=item.record.owner_id,
        type=event_type(item.action),
        reason=item.reason,
        time=now,
        operating_system=item.record.operating_system,
    )


def _event_row(ev: Event) -> dict[str, Any]:
    return {k: v for k, v in ev.to_dict().items() if v is not None}


def _event_from_row(row: dict[str, Any]) -> Event:
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
    )


class EnrollmentStore(Protocol):
    """Per-tenant enrollment state.

    ``writes`` counts write operations (tests assert quiet polls write nothing); ``rows_read`` counts device rows
    loaded by :meth:`load_devices` / :meth:`load_devices_for` (tests assert incremental polls read few).
    """

    writes: int
    rows_read: int
    before_commit: BeforeCommit | None

    async def load_devices(self, tenant_id: str) -> dict[str, Stored]:
        """Every device row of the tenant."""
        ...

    async def load_devices_for(
        self, tenant_id: str, *, device_ids: Sequence[str], owner_ids: Sequence[str]
    ) -> dict[str, Stored]:
        """The rows of the given devices and of every device stored with one of the given owners (any state)."""
        ...

    async def list_devices(self, tenant_id: str, after: str, limit: int) -> list[dict[str, Any]]:
        """Device rows in id order after the given object id, API shape (``id`` is the object id)."""
        ...

    async def apply(
        self, tenant_id: str, items: Sequence[PlanItem], now: str, previous: Mapping[str, Stored] | None = None
    ) -> list[Event]:
        """Write each item's device row, event and deviceId index row, ≤ 100 operations per atomic transaction.

        ``previous``: the rows as stored before (what the caller read to plan); a deviceId that differs there gets
        its old index row tomb-stoned in the same transaction. The in-memory store knows its rows and ignores it.

        Raises:
            ConflictError: another writer appended events meanwhile (this poll must stop).
        """
        ...

    async def events(self, tenant_id: str, after_seq: int, limit: int) -> list[Event]:
        """Events with sequence > ``after_seq``, ascending, at most ``limit``."""
        ...

    async def find_device(self, tenant_id: str, key: str) -> Stored | None:
        """A device row by Entra object id or by ``deviceId`` (case-insensitive), or None."""
        ...

    async def head_seq(self, tenant_id: str) -> int:
        """Highest event sequence written (0 when none)."""
        ...

    async def load_graph(self, tenant_id: str) -> tuple[MembershipGraph, dict[str, Any]] | None:
        """The stored membership graph and its metadata, or None."""
        ...

    async def save_graph(self, tenant_id: str, graph: MembershipGraph, meta: dict[str, Any]) -> None:
        """Replace the stored graph (atomically switches generation)."""
        ...

    async def delete_tenant(self, tenant_id: str) -> None:
        """Remove every row of the tenant."""
        ...


class MemoryEnrollmentStore:
    """In-memory store with the same transaction and conflict semantics (used by unit tests and dry runs)."""

    def __init__(self) -> None:
        self._devices: dict[str, dict[str, dict[str, Any]]] = {}
        self._events: dict[str, list[Event]] = {}
        # tenant → index RowKey (``x|<deviceId lower>``) → object id; mirrors the Table layout.
        self._index: dict[str, dict[str, str]] = {}
        self._graphs: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.writes = 0
        self.rows_read = 0
        # find_device by deviceId: index point reads and range-query fallbacks (tests assert the lookup cost).
        self.point_reads = 0
        self.fallback_queries = 0
        self.before_commit: BeforeCommit | None = None

    async def load_devices(self, tenant_id: str) -> dict[str, Stored]:
        """See :class:`EnrollmentStore`."""
        await asyncio.sleep(0)
        rows = self._devices.get(tenant_id, {})
        self.rows_read += len(rows)
        return {k: stored_from_row(v) for k, v in rows.items()}

    async def load_devices_for(
        self, tenant_id: str, *, device_ids: Sequence[str], owner_ids: Sequence[str]
    ) -> dict[str, Stored]:
        """See :class:`EnrollmentStore`."""
        await asyncio.sleep(0)
        rows = self._devices.get(tenant_id, {})
        owners = set(owner_ids)
        found = {k: rows[k] for k in device_ids if k in rows}
        found.update({k: v for k, v in rows.items() if owners and v.get("ownerId") in owners})
        self.rows_read += len(found)
        return {k: stored_from_row(v) for k, v in found.items()}

    async def list_devices(self, tenant_id: str, after: str, limit: int) -> list[dict[str, Any]]:
        """See :class:`EnrollmentStore`."""
        rows = self._devices.get(tenant_id, {})
        keys = sorted(k for k in rows if k > after)[:limit]
        return [device_view(k, rows[k]) for k in keys]

    async def apply(
        self, tenant_id: str, items: Sequence[PlanItem], now: str, previous: Mapping[str, Stored] | None = None
    ) -> list[Event]:
        """See :class:`EnrollmentStore`."""
        out: list[Event] = []
        rows = self._devices.get(tenant_id, {})

        def before(did: str) -> Stored | None:
            # Chunks are cut up front, as the Table store does; an object twice in one apply is not a case the
            # engine produces (one plan item per device).
            return stored_from_row(rows[did]) if did in rows else None

        for n, chunk in enumerate(_chunks(items, before)):
            expected = len(self._events.get(tenant_id, []))
            await asyncio.sleep(0)
            if self.before_commit is not None:
                self.before_commit(n)
            log = self._events.setdefault(tenant_id, [])
            if len(log) != expected:
                raise ConflictError(f"tenant {tenant_id}: events appended concurrently")
            devices = self._devices.setdefault(tenant_id, {})
            index = self._index.setdefault(tenant_id, {})
            for item, _ in chunk:
                seq = len(log) + 1
                ev = _event(tenant_id, seq, item, now)
                log.append(ev)
                devices[item.record.id] = _device_row(item, now, seq)
                out.append(ev)
            keys = _chunk_index(chunk)
            index.update(keys)
            self.writes += 2 * len(chunk) + len(keys) + 1
        return out

    async def events(self, tenant_id: str, after_seq: int, limit: int) -> list[Event]:
        """See :class:`EnrollmentStore`."""
        return [e for e in self._events.get(tenant_id, []) if e.seq > after_seq][:limit]

    async def head_seq(self, tenant_id: str) -> int:
        """See :class:`EnrollmentStore`."""
        return len(self._events.get(tenant_id, []))

    async def find_device(self, tenant_id: str, key: str) -> Stored | None:
        """See :class:`EnrollmentStore`."""
        rows = self._devices.get(tenant_id, {})
        if key in rows:
            return stored_from_row(rows[key])
        ikey = index_key(key)
        target = None
        if ikey is not None:
            self.point_reads += 1
            target = self._index.get(tenant_id, {}).get(ikey)
        if target and target in rows and str(rows[target].get("deviceId", "")).lower() == key.lower():
            return stored_from_row(rows[target])
        # Same fallback as the Table store (rows written before the index existed have no index row).
        self.fallback_queries += 1
        for row in rows.values():
            if str(row.get("deviceId", "")).lower() == key.lower():
                return stored_from_row(row)
        return None

    async def load_graph(self, tenant_id: str) -> tuple[MembershipGraph, dict[str, Any]] | None:
        """See :class:`EnrollmentStore`."""
        found = self._graphs.get(tenant_id)
        if found is None:
            return None
        return MembershipGraph.from_json(copy.deepcopy(found[0])), copy.deepcopy(found[1])

    async def save_graph(self, tenant_id: str, graph: MembershipGraph, meta: dict[str, Any]) -> None:
        """See :class:`EnrollmentStore`."""
        self._graphs[tenant_id] = (copy.deepcopy(graph.to_json()), copy.deepcopy(meta))
        self.writes += 1

    async def delete_tenant(self, tenant_id: str) -> None:
        """See :class:`EnrollmentStore`."""
        self._devices.pop(tenant_id, None)
        self._index.pop(tenant_id, None)
        self._events.pop(tenant_id, None)
        self._graphs.pop(tenant_id, None)


class TableEnrollmentStore:
    """Table Storage implementation (tables ``devices`` and ``memberships``)."""

    def __init__(self, storage: StorageClients) -> None:
        self._storage = storage
        self.writes = 0
        self.rows_read = 0
        # find_device by deviceId: index point reads and range-query fallbacks (tests assert the lookup cost).
        self.point_reads = 0
        self.fallback_queries = 0
        self.before_commit: BeforeCommit | None = None

    async def load_devices(self, tenant_id: str) -> dict[str, Stored]:
        """See :class:`EnrollmentStore`."""
        table = await self._storage.table("devices")
        out: dict[str, Stored] = {}
        query = "PartitionKey eq @pk and RowKey ge 'd|' and RowKey lt 'd}'"
        async for entity in table.query_entities(query, parameters={"pk": tenant_id}):
            out[str(entity["RowKey"])[2:]] = stored_from_row(dict(entity))
        self.rows_read += len(out)
        return out

    async def load_devices_for(
        self, tenant_id: str, *, device_ids: Sequence[str], owner_ids: Sequence[str]
    ) -> dict[str, Stored]:
        """See :class:`EnrollmentStore`.

        Devices by point read (bounded concurrency); owners by ``ownerId`` filter, ``OWNERS_PER_QUERY`` per query
        (the service matches the filter inside the partition and returns only the matching rows).
        """
        table = await self._storage.table("devices")
        out: dict[str, Stored] = {}
        gate = asyncio.Semaphore(POINT_READ_CONCURRENCY)

        async def point(did: str) -> None:
            async with gate:
                with contextlib.suppress(ResourceNotFoundError):
                    out[did] = stored_from_row(dict(await table.get_entity(tenant_id, "d|" + did)))

        await asyncio.gather(*(point(d) for d in dict.fromkeys(device_ids)))
        owners = sorted(set(owner_ids))
        for start in range(0, len(owners), OWNERS_PER_QUERY):
            chunk = owners[start : start + OWNERS_PER_QUERY]
            params: dict[str, Any] = {"pk": tenant_id}
            params.update({f"o{i}": owner for i, owner in enumerate(chunk)})
            either = " or ".join(f"ownerId eq @o{i}" for i in range(len(chunk)))
            # Spaces around the parentheses: the SDK substitutes @names in space-separated words.
            query = f"PartitionKey eq @pk and RowKey ge 'd|' and RowKey lt 'd}}' and ( {either} )"
            async for entity in table.query_entities(query, parameters=params):
                out[str(entity["RowKey"])[2:]] = stored_from_row(dict(entity))
        self.rows_read += len(out)
        return out

    async def list_devices(self, tenant_id: str, after: str, limit: int) -> list[dict[str, Any]]:
        """See :class:`EnrollmentStore`."""
        table = await self._storage.table("devices")
        query = "PartitionKey eq @pk and RowKey gt @after and RowKey lt 'd}'"
        out: list[dict[str, Any]] = []
        pages = table.query_entities(
            query, parameters={"pk": tenant_id, "after": "d|" + after}, results_per_page=limit
        )
        async for entity in pages:
            out.append(device_view(str(entity["RowKey"])[2:], dict(entity)))
            if len(out) >= limit:
                break
        return out

    async def _meta(self, tenant_id: str) -> tuple[int, str | None]:
        table = await self._storage.table("devices")
        try:
            entity = await table.get_entity(tenant_id, "meta")
        except ResourceNotFoundError:
            return 0, None
        return int(entity.get("seq") or 0), entity.metadata.get("etag")

    async def apply(
        self, tenant_id: str, items: Sequence[PlanItem], now: str, previous: Mapping[str, Stored] | None = None
    ) -> list[Event]:
        """See :class:`EnrollmentStore`."""
        if not items:
            return []
        table = await self._storage.table("devices")
        head, etag = await self._meta(tenant_id)
        out: list[Event] = []
        known = previous or {}
        for n, chunk in enumerate(_chunks(items, known.get)):
            ops: list[Any] = []
            events: list[Event] = []
            for item, _ in chunk:
                head += 1
                ev = _event(tenant_id, head, item, now)
                events.append(ev)
                ops.append(
                    (
                        "upsert",
                        {"PartitionKey": tenant_id, "RowKey": "d|" + item.record.id, **_device_row(item, now, head)},
                        {"mode": UpdateMode.REPLACE},
                    )
                )
                ops.append(("create", {"PartitionKey": tenant_id, "RowKey": f"e|{head:012d}", **_event_row(ev)}))
            for key, target in _chunk_index(chunk).items():
                ops.append(
                    ("upsert", {"PartitionKey": tenant_id, "RowKey": key, "objectId": target},
                     {"mode": UpdateMode.REPLACE})
                )
            meta = {"PartitionKey": tenant_id, "RowKey": "meta", "seq": head}
            if etag is None:
                ops.append(("create", meta))
            else:
                ops.append(
                    ("update", meta, {"mode": UpdateMode.REPLACE, "etag": etag,
                                      "match_condition": MatchConditions.IfNotModified})
                )
            if self.before_commit is not None:
                self.before_commit(n)
            try:
                results = await table.submit_transaction(ops)
            except TableTransactionError:
                # 412 on meta (another writer advanced the sequence) or 409 on an event row: stop this poll.
                raise ConflictError(f"tenant {tenant_id}: events appended concurrently") from None
            self.writes += len(ops)
            etag = str(results[-1].get("etag")) if results and results[-1].get("etag") else None
            if etag is None:
                _, etag = await self._meta(tenant_id)
            out.extend(events)
        return out

    async def events(self, tenant_id: str, after_seq: int, limit: int) -> list[Event]:
        """See :class:`EnrollmentStore`."""
        table = await self._storage.table("devices")
        query = "PartitionKey eq @pk and RowKey gt @after and RowKey lt 'e}'"
        out: list[Event] = []
        pages = table.query_entities(
            query, parameters={"pk": tenant_id, "after": f"e|{after_seq:012d}"}, results_per_page=limit
        )
        async for entity in pages:
            out.append(_event_from_row(dict(entity)))
            if len(out) >= limit:
                break
        return out

    async def head_seq(self, tenant_id: str) -> int:
        """See :class:`EnrollmentStore`."""
        return (await self._meta(tenant_id))[0]

    async def find_device(self, tenant_id: str, key: str) -> Stored | None:
        """See :class:`EnrollmentStore`."""
        table = await self._storage.table("devices")
        try:
            return stored_from_row(dict(await table.get_entity(tenant_id, "d|" + key)))
        except ResourceNotFoundError:
            pass
        row = await self._by_index(table, tenant_id, key)
        if row is not None:
            return stored_from_row(row)
        # Fallback: rows written before the index existed (or whose index write was a tombstone) have no usable
        # index row, so a point-read miss does not prove the device is unknown. Only the device rows' RowKey range.
        self.fallback_queries += 1
        for candidate in dict.fromkeys((key, key.lower(), key.upper())):
            query = "PartitionKey eq @pk and RowKey ge 'd|' and RowKey lt 'd}' and deviceId eq @d"
            async for entity in table.query_entities(query, parameters={"pk": tenant_id, "d": candidate}):
                return stored_from_row(dict(entity))
        return None

    async def _by_index(self, table: Any, tenant_id: str, device_id: str) -> dict[str, Any] | None:
        """The device row the deviceId index points at, if it still carries that deviceId (else None)."""
        ikey = index_key(device_id)
        if ikey is None:
            return None
        self.point_reads += 1
        try:
            target = str((await table.get_entity(tenant_id, ikey)).get("objectId") or "")
        except ResourceNotFoundError:
            return None
        if not target:
            return None  # tombstone: the deviceId moved away from the object that had it
        try:
            row = dict(await table.get_entity(tenant_id, "d|" + target))
        except ResourceNotFoundError:
            return None
        return row if str(row.get("deviceId") or "").lower() == device_id.lower() else None

    async def load_graph(self, tenant_id: str) -> tuple[MembershipGraph, dict[str, Any]] | None:
        """See :class:`EnrollmentStore`."""
        table = await self._storage.table("memberships")
        try:
            head = await table.get_entity(tenant_id, "graph")
        except ResourceNotFoundError:
            return None
        gen = int(head["gen"])
        rows = int(head["rows"])
        blob = b""
        for i in range(rows):
            entity = await table.get_entity(tenant_id, f"graph|{gen:08d}|{i:03d}")
            for j in range(int(entity["parts"])):
                blob += bytes(entity[f"b{j}"])
        graph = MembershipGraph.from_json(json.loads(zlib.decompress(blob)))
        return graph, json.loads(str(head.get("meta") or "{}"))

    async def save_graph(self, tenant_id: str, graph: MembershipGraph, meta: dict[str, Any]) -> None:
        """See :class:`EnrollmentStore`."""
        table = await self._storage.table("memberships")
        try:
            head = await table.get_entity(tenant_id, "graph")
            old_gen, old_rows = int(head["gen"]), int(head["rows"])
        except ResourceNotFoundError:
            old_gen, old_rows = 0, 0
        gen = old_gen + 1
        blob = zlib.compress(json.dumps(graph.to_json(), separators=(",", ":")).encode(), 6)
        chunks = [blob[i : i + _CHUNK_BYTES] for i in range(0, len(blob), _CHUNK_BYTES)] or [b""]
        row_chunks = [chunks[i : i + _CHUNKS_PER_ROW] for i in range(0, len(chunks), _CHUNKS_PER_ROW)]
        for i, parts in enumerate(row_chunks):
            entity: dict[str, Any] = {
                "PartitionKey": tenant_id, "RowKey": f"graph|{gen:08d}|{i:03d}", "parts": len(parts)
            }
            entity.update({f"b{j}": part for j, part in enumerate(parts)})
            await table.upsert_entity(entity, mode=UpdateMode.REPLACE)
            self.writes += 1
        await table.upsert_entity(
            {"PartitionKey": tenant_id, "RowKey": "graph", "gen": gen, "rows": len(row_chunks),
             "meta": json.dumps(meta, separators=(",", ":"))},
            mode=UpdateMode.REPLACE,
        )
        self.writes += 1
        for i in range(old_rows):  # the previous generation is unreachable now; drop it
            with contextlib.suppress(ResourceNotFoundError):
                await table.delete_entity(tenant_id, f"graph|{old_gen:08d}|{i:03d}")

    async def delete_tenant(self, tenant_id: str) -> None:
        """See :class:`EnrollmentStore`."""
        for name in ("devices", "memberships"):
            table = await self._storage.table(name)
            async for entity in table.query_entities("PartitionKey eq @pk", parameters={"pk": tenant_id}):
                await table.delete_entity(tenant_id, str(entity["RowKey"]))
