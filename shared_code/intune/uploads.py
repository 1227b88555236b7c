"""The ``uploads`` table: Intune DataUploadMessages we sent, idempotency keys, latest threat/inventory per device.

Rows (PartitionKey = tenant id, so one tenant's rows live together):

* ``msg|<messageId>``: one upload (kind threat | inventory, device, status NotSent → Pending → Succeeded/Failed,
  ErrorDetail, the exact entities and UploadTime sent so a resend is byte-identical and thus idempotent at Intune).
* ``idem|<sha256(device, key)>``: client idempotency key → message id (insert-if-absent decides the winner).
* ``threat|<deviceId>``: the device's latest threat report and its upload result.
* ``inv|<deviceId>``: the device's latest inventory request/result header (generation, chunk count, app count).
* ``invc|<deviceId>|<generation>|<NNNN>``: inventory chunk rows; the generation is the App Sync message's upload time
  and id, so two settles of one message (the results timer and a GET racing) write identical rows and never delete
  each other's, and older generations sort first.
* partition ``~pending``, rows ``<tenant>|<messageId>``: the messages still Pending (the results timer's index), with
  ``since`` (when the message was first stored) and ``lastPolledAt`` so the timer works oldest-polled first and
  expires messages Intune never settles.

Size: App Sync inventories run to 1,600 apps (~0.5 MB of JSON) and beyond. A Table string property holds 64 KiB and
an entity 1 MiB, so apps are packed into chunk rows of at most ``CHUNK_CHARS`` characters, each spread over
``json_N`` properties by :func:`pack_json`. A new inventory is written under a new generation first, then the header
is switched (under its ETag, and only while it still names this request), then the old generation's chunks are
deleted: readers never see a half-written inventory, and a reader that loses a race with the switch re-reads the
header (:class:`ChunkMissingError`).

Latest-per-device pointer rows are changed only through :meth:`UploadStore.update_latest`, an ETag compare-and-swap
loop, so a PUT racing the results timer can never put back an older pointer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from shared_code.adapters.storage import StorageClients
from shared_code.adapters.tenant_store import conflict_pause, pack_json, unpack_json, utc_now_iso
from shared_code.errors import ConflictError

# Characters of JSON per chunk row: 12 × 30,000 ≤ 15 properties × 30,000 (pack_json's limit), ~720 KB as UTF-16.
CHUNK_CHARS = 360_000
PENDING = "Pending"
NOT_SENT = "NotSent"
# Intune refused the message (connector Not Set Up / Unavailable): never processed there, so a replay resends it.
REJECTED = "Rejected"
FINAL_STATUSES = frozenset({"Succeeded", "Failed"})
# Index partition of pending messages ("~" sorts after every GUID partition and cannot collide with one).
PENDING_PARTITION = "~pending"
# ETag retries for a latest-pointer row (a handful of writers per device at most: PUT/POST, timer, GET).
LATEST_CONFLICT_RETRIES = 12


class ChunkMissingError(LookupError):
    """An inventory chunk row named by the header is gone (a newer settle replaced the generation meanwhile)."""


@dataclass(frozen=True)
class PendingEntry:
    """One row of the pending index: which message to poll, since when, and when it was last polled."""

    tenant_id: str
    message_id: str
    since: str
    last_polled_at: str


@dataclass
class UploadMessage:
    """One DataUploadMessage and what became of it."""

    tenant_id: str
    message_id: str
    kind: str  # threat | inventory
    device_id: str
    upload_time: str
    entities: list[dict[str, Any]]
    status: str = NOT_SENT
    error_detail: str | None = None
    created_at: str = ""
    updated_at: str = ""
    polls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """What the HTTP API shows for an upload."""
        return {
            "uploadId": self.message_id,
            "kind": self.kind,
            "deviceId": self.device_id,
            "status": self.status,
            "errorDetail": self.error_detail,
            "uploadTime": self.upload_time,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
        }


def _idem_row(device_id: str, key: str) -> str:
    # RowKeys may not contain / \ # ? or control characters; a hash keeps any client key safe and bounded.
    return "idem|" + hashlib.sha256(f"{device_id.lower()}\n{key}".encode()).hexdigest()[:48]


def digest(value: Any) -> str:
    """Stable digest of a JSON value (idempotent replays must carry the same body)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class UploadStore:
    """Typed access to the uploads table."""

    def __init__(self, storage: StorageClients, *, table: str = "uploads") -> None:
        self._storage = storage
        self._table_name = table

    async def _table(self) -> TableClient:
        return await self._storage.table(self._table_name)

    # ---- idempotency -------------------------------------------------------------------------------------------
    async def claim_key(self, tenant_id: str, device_id: str, key: str, message_id: str, body_digest: str) -> (
        tuple[str, str, bool]
    ):
        """Bind ``key`` to ``message_id`` unless already bound. Returns (message_id, digest, claimed_now)."""
        table = await self._table()
        row = _idem_row(device_id, key)
        try:
            await table.create_entity(
                {"PartitionKey": tenant_id, "RowKey": row, "messageId": message_id, "digest": body_digest}
            )
            return message_id, body_digest, True
        except ResourceExistsError:
            existing = await table.get_entity(tenant_id, row)
            return str(existing["messageId"]), str(existing["digest"]), False

    # ---- messages ----------------------------------------------------------------------------------------------
    async def save(self, message: UploadMessage) -> None:
        """Insert or replace a message row, and keep the pending index in step with its status."""
        now = utc_now_iso()
        message.created_at = message.created_at or now
        message.updated_at = now
        table = await self._table()
        await table.upsert_entity(self._entity(message), mode=UpdateMode.REPLACE)
        index_key = f"{message.tenant_id}|{message.message_id}"
        if message.status == PENDING:
            entry = {
                "PartitionKey": PENDING_PARTITION, "RowKey": index_key, "since": message.created_at,
                "lastPolledAt": now if message.polls else "",
            }
            await table.upsert_entity(entry, mode=UpdateMode.REPLACE)
        else:
            with contextlib.suppress(ResourceNotFoundError):
                await table.delete_entity(PENDING_PARTITION, index_key)

    async def delete_tenant(self, tenant_id: str, limit: int) -> bool:
        """Remove the tenant's rows (its partition and its ``~pending`` index rows), at most ``limit`` per call
        (offboarding purges in bounded steps); True when none is left. Idempotent (a replay resumes)."""
        table = await self._table()
        keys: list[tuple[str, str]] = []
        queries = (
            ("PartitionKey eq @pk", {"pk": tenant_id}),
            # Index rows are "<tenant>|<messageId>": '}' is the character after '|', so this is exactly the prefix.
            ("PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
             {"pk": PENDING_PARTITION, "lo": f"{tenant_id}|", "hi": f"{tenant_id}}}"}),
        )
        for query, params in queries:
            async for entity in table.query_entities(query, parameters=params, select=["PartitionKey", "RowKey"]):
                keys.append((str(entity["PartitionKey"]), str(entity["RowKey"])))
                if len(keys) > limit:
                    break
        for pk, rk in keys[:limit]:
            await table.delete_entity(pk, rk)
        return len(keys) <= limit

    async def get(self, tenant_id: str, message_id: str) -> UploadMessage | None:
        """One message, or None."""
        table = await self._table()
        try:
            entity = await table.get_entity(tenant_id, f"msg|{message_id}")
        except ResourceNotFoundError:
            return None
        return self._message(dict(entity))

    async def pending(self, limit: int = 500) -> list[PendingEntry]:
        """The next ``limit`` messages to poll, across tenants: never-polled first, then least recently polled.

        Read through the small ``~pending`` index partition (only its keys and two timestamps), so the cost follows
        the number of pending messages, not the table's history; sorting by ``lastPolledAt`` rotates through a
        backlog larger than ``limit`` instead of polling the same first rows in key order forever.
        """
        table = await self._table()
        entries: list[PendingEntry] = []
        async for entry in table.query_entities(
            "PartitionKey eq @pk", parameters={"pk": PENDING_PARTITION}, select=["RowKey", "since", "lastPolledAt"]
        ):
            tenant_id, _, message_id = str(entry["RowKey"]).partition("|")
            entries.append(
                PendingEntry(tenant_id, message_id, str(entry.get("since") or ""), str(entry.get("lastPolledAt") or ""))
            )
        entries.sort(key=lambda e: (e.last_polled_at, e.since, e.tenant_id, e.message_id))
        return entries[:limit]

    async def touch_pending(self, entry: PendingEntry, when: str) -> None:
        """Record a poll attempt that failed before the message could be saved (it moves to the back of the queue)."""
        table = await self._table()
        with contextlib.suppress(ResourceNotFoundError):
            await table.update_entity(
                {"PartitionKey": PENDING_PARTITION, "RowKey": f"{entry.tenant_id}|{entry.message_id}",
                 "lastPolledAt": when},
                mode=UpdateMode.MERGE,
            )

    async def drop_pending(self, entry: PendingEntry) -> None:
        """Remove an index entry whose message is gone or no longer pending."""
        table = await self._table()
        with contextlib.suppress(ResourceNotFoundError):
            await table.delete_entity(PENDING_PARTITION, f"{entry.tenant_id}|{entry.message_id}")

    # ---- latest per device -------------------------------------------------------------------------------------
    async def get_latest(self, tenant_id: str, kind: str, device_id: str) -> dict[str, Any] | None:
        """The device's latest threat/inventory pointer, or None."""
        table = await self._table()
        try:
            entity = await table.get_entity(tenant_id, f"{kind}|{device_id.lower()}")
        except ResourceNotFoundError:
            return None
        value = unpack_json(dict(entity))
        return dict(value) if isinstance(value, dict) else None

    async def update_latest(
        self,
        tenant_id: str,
        kind: str,
        device_id: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    ) -> tuple[dict[str, Any] | None, bool]:
        """Compare-and-swap the device's latest pointer row.

        ``change`` gets the current value (None when absent) and returns the new value, or None to leave the row as
        it is. It may run several times (once per ETag conflict), so it must be a pure function of its argument.

        Returns:
            (the value now stored, whether this call wrote it).

        Raises:
            ConflictError: the row kept changing under us for ``LATEST_CONFLICT_RETRIES`` attempts.
        """
        table = await self._table()
        row = f"{kind}|{device_id.lower()}"
        for attempt in range(1, LATEST_CONFLICT_RETRIES + 1):
            try:
                entity = await table.get_entity(tenant_id, row)
            except ResourceNotFoundError:
                entity = None
            current_raw = unpack_json(dict(entity)) if entity is not None else None
            current = dict(current_raw) if isinstance(current_raw, dict) else None
            wanted = change(dict(current) if current is not None else None)
            if wanted is None:
                return current, False
            new_entity = {"PartitionKey": tenant_id, "RowKey": row, **pack_json(wanted)}
            try:
                if entity is None:
                    await table.create_entity(new_entity)
                else:
                    await table.update_entity(
                        new_entity, mode=UpdateMode.REPLACE, etag=entity.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                return wanted, True
            except (ResourceExistsError, ResourceModifiedError):
                await conflict_pause(attempt)
        msg = f"tenant {tenant_id}: {kind} pointer of device {device_id} kept changing"
        raise ConflictError(msg)

    # ---- inventories -------------------------------------------------------------------------------------------
    async def store_inventory(
        self, tenant_id: str, device_id: str, apps: list[dict[str, Any]], *, generation: str
    ) -> dict[str, Any]:
        """Write ``apps`` as generation ``generation`` of chunk rows and return the chunk layout for the header.

        The caller passes the App Sync message id: the same result always lands in the same rows with the same
        content, so concurrent writers of one result are harmless.
        """
        table = await self._table()
        chunks: list[list[dict[str, Any]]] = [[]]
        size = 0
        for app in apps:
            app_size = len(json.dumps(app, ensure_ascii=True, separators=(",", ":"))) + 1
            if chunks[-1] and size + app_size > CHUNK_CHARS:
                chunks.append([])
                size = 0
            chunks[-1].append(app)
            size += app_size
        prefix = f"invc|{device_id.lower()}|{generation}|"
        for index, chunk in enumerate(chunks):
            entity = {"PartitionKey": tenant_id, "RowKey": f"{prefix}{index:04d}", **pack_json(chunk)}
            await table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        return {"generation": generation, "chunks": len(chunks), "appCount": len(apps)}

    async def load_inventory(self, tenant_id: str, device_id: str, generation: str, chunks: int) -> (
        list[dict[str, Any]]
    ):
        """Read a generation's apps back in order.

        Raises:
            ChunkMissingError: a chunk row is gone (the generation was replaced while we read; re-read the header).
        """
        table = await self._table()
        apps: list[dict[str, Any]] = []
        for index in range(chunks):
            try:
                entity = await table.get_entity(tenant_id, f"invc|{device_id.lower()}|{generation}|{index:04d}")
            except ResourceNotFoundError:
                msg = f"inventory chunk {index} of generation {generation} is gone"
                raise ChunkMissingError(msg) from None
            apps.extend(unpack_json(dict(entity)) or [])
        return apps

    async def delete_generations(
        self, tenant_id: str, device_id: str, keep: str | None = None, *, only: str | None = None
    ) -> int:
        """Delete the device's inventory chunk rows: every generation older than ``keep``, or just generation ``only``.

        Generations sort by request time (see ``inventory.generation_of``), so "older than ``keep``" never includes a
        newer request's rows, even when this runs late.

        Returns:
            rows deleted.
        """
        table = await self._table()
        low = f"invc|{device_id.lower()}|"
        high = low[:-1] + chr(ord("|") + 1)
        deleted = 0
        rows = [
            e
            async for e in table.query_entities(
                "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                parameters={"pk": tenant_id, "lo": low, "hi": high},
                select=["PartitionKey", "RowKey"],
            )
        ]
        for entity in rows:
            generation = str(entity["RowKey"]).split("|")[2]
            if (only is not None and generation == only) or (only is None and keep is not None and generation < keep):
                try:
                    await table.delete_entity(tenant_id, str(entity["RowKey"]))
                    deleted += 1
                except ResourceNotFoundError:
                    pass
        return deleted

    # ---- (de)serialization --------------------------------------------------------------------------------------
    @staticmethod
    def _entity(message: UploadMessage) -> dict[str, Any]:
        body = {"entities": message.entities, "extra": message.extra}
        return {
            "PartitionKey": message.tenant_id,
            "RowKey": f"msg|{message.message_id}",
            "kind": message.kind,
            "deviceId": message.device_id,
            "status": message.status,
            "errorDetail": (message.error_detail or "")[:8000],
            "uploadTime": message.upload_time,
            "createdAt": message.created_at,
            "updatedAt": message.updated_at,
            "polls": message.polls,
            **pack_json(body),
        }

    @staticmethod
    def _message(entity: dict[str, Any]) -> UploadMessage:
        body = unpack_json(entity) or {}
        return UploadMessage(
            tenant_id=str(entity["PartitionKey"]),
            message_id=str(entity["RowKey"]).split("|", 1)[1],
            kind=str(entity.get("kind", "")),
            device_id=str(entity.get("deviceId", "")),
            upload_time=str(entity.get("uploadTime", "")),
            entities=list(body.get("entities", [])),
            status=str(entity.get("status", NOT_SENT)),
            error_detail=str(entity["errorDetail"]) if entity.get("errorDetail") else None,
            created_at=str(entity.get("createdAt", "")),
            updated_at=str(entity.get("updatedAt", "")),
            polls=int(entity.get("polls", 0) or 0),
            extra=dict(body.get("extra", {})),
        )
