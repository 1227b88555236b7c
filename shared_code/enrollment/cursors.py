"""Delta cursors per (tenant, stream): the committed deltaLink kept apart from an in-flight nextLink.

A round of ``groups/delta`` or ``devices/delta`` pages through nextLinks and ends with a deltaLink. Only the
deltaLink of a round whose pages were *all applied* is committed; a crash mid-round leaves the committed link in
place so the next poll replays from it (application is idempotent). The in-flight nextLink is persisted only for
rounds the poller deliberately spreads over several polls (the first ``devices/delta`` round of a big tenant,
whose pages carry nothing the full reconcile did not already read) — there a resumed round loses nothing.

Race window (two workers, one tenant; the poll lease normally prevents it)::

    worker A: read cursor (etag 1) ............................ commit(etag 1) → ok (etag 2)
    worker B:        read cursor (etag 1) ... commit(etag 1) → ConflictError: A advanced the tenant; B stops.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, replace
from typing import Any, Protocol

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from shared_code.adapters.storage import StorageClients
from shared_code.errors import ConflictError

GROUPS, DEVICES = "groups", "devices"


@dataclass(frozen=True)
class Cursor:
    """One stream's position.

    Attributes:
        committed: deltaLink of the last fully applied round ("" before the first).
        inflight: nextLink of a round in progress across polls ("" when none).
        generation: bumps on every full resync (a new round from scratch).
        committed_at: epoch seconds of the last commit.
        full_at: epoch seconds of the last full reconcile (groups stream).
        pending: objects Graph could not read yet (``domain.pending``; groups stream), committed with the cursor so
            the poll that moves the cursor past the change that named them also records them.
        etag: storage version; commits are compare-and-swap on it.
    """

    committed: str = ""
    inflight: str = ""
    generation: int = 0
    committed_at: float = 0.0
    full_at: float = 0.0
    pending: str = ""
    etag: str | None = None

    def commit(self, delta_link: str, now: float, *, full: bool = False) -> Cursor:
        """Promote a finished round's deltaLink (clears the in-flight link)."""
        return replace(
            self,
            committed=delta_link,
            inflight="",
            committed_at=now,
            full_at=now if full else self.full_at,
            generation=self.generation + (1 if full else 0),
        )


class CursorStore(Protocol):
    """Cursors of one deployment, keyed by (tenant, stream)."""

    async def get(self, tenant_id: str, stream: str) -> Cursor:
        """The stream's cursor (an empty one when never written)."""
        ...

    async def put(self, tenant_id: str, stream: str, cursor: Cursor) -> Cursor:
        """Write ``cursor`` if the stored etag still equals ``cursor.etag`` (None = must not exist).

        Raises:
            ConflictError: another worker wrote the cursor meanwhile.
        """
        ...

    async def delete_tenant(self, tenant_id: str) -> None:
        """Forget every cursor of a tenant (forces a full resync)."""
        ...


def _to_row(cursor: Cursor) -> dict[str, Any]:
    return {
        "committed": cursor.committed,
        "inflight": cursor.inflight,
        "generation": cursor.generation,
        "committed_at": float(cursor.committed_at),
        "full_at": float(cursor.full_at),
        "pending": cursor.pending,
    }


def _from_row(row: dict[str, Any], etag: str | None) -> Cursor:
    return Cursor(
        committed=str(row.get("committed") or ""),
        inflight=str(row.get("inflight") or ""),
        generation=int(row.get("generation") or 0),
        committed_at=float(row.get("committed_at") or 0.0),
        full_at=float(row.get("full_at") or 0.0),
        pending=str(row.get("pending") or ""),
        etag=etag,
    )


class MemoryCursorStore:
    """In-memory cursors with the Table store's compare-and-swap semantics."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.writes = 0

    async def get(self, tenant_id: str, stream: str) -> Cursor:
        """See :class:`CursorStore`."""
        await asyncio.sleep(0)
        found = self._rows.get((tenant_id, stream))
        return _from_row(copy.deepcopy(found[1]), str(found[0])) if found else Cursor()

    async def put(self, tenant_id: str, stream: str, cursor: Cursor) -> Cursor:
        """See :class:`CursorStore`."""
        await asyncio.sleep(0)
        key = (tenant_id, stream)
        found = self._rows.get(key)
        if (str(found[0]) if found else None) != cursor.etag:
            raise ConflictError(f"cursor {stream} of tenant {tenant_id} was advanced by another worker")
        version = (found[0] if found else 0) + 1
        self._rows[key] = (version, _to_row(cursor))
        self.writes += 1
        return replace(cursor, etag=str(version))

    async def delete_tenant(self, tenant_id: str) -> None:
        """See :class:`CursorStore`."""
        for key in [k for k in self._rows if k[0] == tenant_id]:
            del self._rows[key]


class TableCursorStore:
    """Cursors in the ``cursors`` table: PartitionKey tenant, RowKey stream."""

    def __init__(self, storage: StorageClients) -> None:
        self._storage = storage

    async def get(self, tenant_id: str, stream: str) -> Cursor:
        """See :class:`CursorStore`."""
        table = await self._storage.table("cursors")
        try:
            entity = await table.get_entity(tenant_id, stream)
        except ResourceNotFoundError:
            return Cursor()
        return _from_row(dict(entity), entity.metadata.get("etag"))

    async def put(self, tenant_id: str, stream: str, cursor: Cursor) -> Cursor:
        """See :class:`CursorStore`."""
        table = await self._storage.table("cursors")
        entity = {"PartitionKey": tenant_id, "RowKey": stream, **_to_row(cursor)}
        try:
            if cursor.etag is None:
                meta = await table.create_entity(entity)
            else:
                meta = await table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=cursor.etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError):
            raise ConflictError(f"cursor {stream} of tenant {tenant_id} was advanced by another worker") from None
        return replace(cursor, etag=str(meta.get("etag")))

    async def delete_tenant(self, tenant_id: str) -> None:
        """See :class:`CursorStore`."""
        table = await self._storage.table("cursors")
        async for entity in table.query_entities("PartitionKey eq @pk", parameters={"pk": tenant_id}):
            await table.delete_entity(tenant_id, str(entity["RowKey"]))
