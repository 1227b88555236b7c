"""Per-tenant poll leases: duplicate or concurrent queue messages for one tenant run one poll.

A lease is a row (table ``leases``, PartitionKey ``poll``, RowKey tenant id) taken by compare-and-swap on its ETag:
create when absent, replace when expired. The dispatcher reads the whole partition once per tick to learn when each
tenant last finished a poll, so a quiet poll needs no write besides its lease.

The same partition holds one more row per tenant, ``<tenant>|sync``: the console's latest sync request (its id,
``full`` and when it was made). It is pending while no poll has *started* since (the lease row's ``last_started``),
so repeated requests collapse into it (``EnrollmentService.request_sync``). A row of its own, so recording a request
never changes the lease row's ETag under a running poll, and nothing is written when a poll serves it.

Race window::

    worker A: read (free, etag 1) ── replace(etag 1) → ok, holds lease
    worker B: read (free, etag 1) ─────────── replace(etag 1) → 412 → None (A polls; B acks its message)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace
from typing import Any, Protocol

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from shared_code.adapters.storage import StorageClients

PARTITION = "poll"
log = logging.getLogger("connector.enrollment")


@dataclass(frozen=True)
class Lease:
    """A held lease (release it with the same object)."""

    tenant_id: str
    owner: str
    etag: str
    started_at: float
    # When the poll before this one started (0 if never): lets a redelivered message see it is already served.
    previous_started: float = 0.0


@dataclass(frozen=True)
class LeaseInfo:
    """What the dispatcher needs to know about a tenant's polls."""

    holder: str
    expires_at: float
    last_started: float
    last_finished: float


@dataclass(frozen=True)
class SyncRequest:
    """A console sync request recorded for a tenant."""

    request_id: str
    full: bool
    requested_at: float


def _sync_row(tenant_id: str) -> str:
    return f"{tenant_id}|sync"


def _info(row: dict[str, Any]) -> LeaseInfo:
    return LeaseInfo(
        holder=str(row.get("holder") or ""),
        expires_at=float(row.get("expires_at") or 0.0),
        last_started=float(row.get("last_started") or 0.0),
        last_finished=float(row.get("last_finished") or 0.0),
    )


class LeaseStore(Protocol):
    """Poll leases."""

    async def acquire(self, tenant_id: str, owner: str, ttl: float, now: float) -> Lease | None:
        """Take the tenant's lease for ``ttl`` seconds; None when another holder has it."""
        ...

    async def renew(self, lease: Lease, ttl: float, now: float) -> Lease | None:
        """Extend a held lease to ``now + ttl`` (ETag compare-and-swap); None when it was lost meanwhile."""
        ...

    async def release(self, lease: Lease, now: float) -> None:
        """Give the lease back and record the finish time (a lost lease is ignored)."""
        ...

    async def all(self) -> dict[str, LeaseInfo]:
        """Every tenant's lease row."""
        ...

    async def forget(self, lease: Lease) -> None:
        """Delete the tenant's lease row while holding it, and its sync-request row (offboarding)."""
        ...

    async def pending_sync(self, tenant_id: str) -> SyncRequest | None:
        """The tenant's recorded sync request if no poll has started since it was made."""
        ...

    async def record_sync(self, tenant_id: str, request: SyncRequest) -> None:
        """Record the tenant's latest sync request (replaces the previous one)."""
        ...


class MemoryLeaseStore:
    """In-memory leases with compare-and-swap semantics."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[int, dict[str, Any]]] = {}
        self._requests: dict[str, SyncRequest] = {}
        self.renewals = 0

    def expires_at(self, tenant_id: str) -> float:
        """When the tenant's lease expires (0 when free or unknown); for tests."""
        found = self._rows.get(tenant_id)
        return float(found[1].get("expires_at") or 0.0) if found and found[1].get("holder") else 0.0

    async def acquire(self, tenant_id: str, owner: str, ttl: float, now: float) -> Lease | None:
        """See :class:`LeaseStore`."""
        found = self._rows.get(tenant_id)
        await asyncio.sleep(0)  # let concurrent acquirers interleave like real I/O
        if found is not None and found[1].get("holder") and float(found[1].get("expires_at", 0)) > now:
            return None
        current = self._rows.get(tenant_id)
        if (current[0] if current else None) != (found[0] if found else None):
            return None
        row = dict(found[1]) if found else {}
        previous = float(row.get("last_started") or 0.0)
        row.update({"holder": owner, "expires_at": now + ttl, "last_started": now})
        version = (found[0] if found else 0) + 1
        self._rows[tenant_id] = (version, row)
        return Lease(tenant_id, owner, str(version), now, previous)

    async def renew(self, lease: Lease, ttl: float, now: float) -> Lease | None:
        """See :class:`LeaseStore`."""
        found = self._rows.get(lease.tenant_id)
        await asyncio.sleep(0)
        if found is None or str(found[0]) != lease.etag or self._rows.get(lease.tenant_id) is not found:
            return None
        row = dict(found[1])
        row["expires_at"] = now + ttl
        self._rows[lease.tenant_id] = (found[0] + 1, row)
        self.renewals += 1
        return replace(lease, etag=str(found[0] + 1))

    async def release(self, lease: Lease, now: float) -> None:
        """See :class:`LeaseStore`."""
        found = self._rows.get(lease.tenant_id)
        if found is None or str(found[0]) != lease.etag:
            return
        row = dict(found[1])
        row.update({"holder": "", "expires_at": 0.0, "last_started": lease.started_at, "last_finished": now})
        self._rows[lease.tenant_id] = (found[0] + 1, row)

    async def forget(self, lease: Lease) -> None:
        """See :class:`LeaseStore`."""
        found = self._rows.get(lease.tenant_id)
        if found is not None and str(found[0]) == lease.etag:
            del self._rows[lease.tenant_id]
        self._requests.pop(lease.tenant_id, None)

    async def pending_sync(self, tenant_id: str) -> SyncRequest | None:
        """See :class:`LeaseStore`."""
        request = self._requests.get(tenant_id)
        found = self._rows.get(tenant_id)
        started = float(found[1].get("last_started") or 0.0) if found else 0.0
        return request if request is not None and request.requested_at > started else None

    async def record_sync(self, tenant_id: str, request: SyncRequest) -> None:
        """See :class:`LeaseStore`."""
        self._requests[tenant_id] = request

    async def all(self) -> dict[str, LeaseInfo]:
        """See :class:`LeaseStore`."""
        return {k: _info(v[1]) for k, v in self._rows.items()}


class TableLeaseStore:
    """Leases in the ``leases`` table."""

    def __init__(self, storage: StorageClients) -> None:
        self._storage = storage

    async def acquire(self, tenant_id: str, owner: str, ttl: float, now: float) -> Lease | None:
        """See :class:`LeaseStore`."""
        table = await self._storage.table("leases")
        try:
            found: Any = await table.get_entity(PARTITION, tenant_id)
        except ResourceNotFoundError:
            found = None
        row = {"PartitionKey": PARTITION, "RowKey": tenant_id, "holder": owner, "expires_at": now + ttl,
               "last_started": now}
        try:
            if found is None:
                meta = await table.create_entity({**row, "last_finished": 0.0})
            else:
                if found.get("holder") and float(found.get("expires_at") or 0) > now:
                    return None
                row["last_finished"] = float(found.get("last_finished") or 0.0)
                meta = await table.update_entity(
                    row, mode=UpdateMode.REPLACE, etag=found.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError):
            return None
        previous = float(found.get("last_started") or 0.0) if found is not None else 0.0
        return Lease(tenant_id, owner, str(meta["etag"]), now, previous)

    async def renew(self, lease: Lease, ttl: float, now: float) -> Lease | None:
        """See :class:`LeaseStore`."""
        table = await self._storage.table("leases")
        row = {"PartitionKey": PARTITION, "RowKey": lease.tenant_id, "holder": lease.owner, "expires_at": now + ttl}
        try:
            # Merge keeps last_started/last_finished; the ETag makes sure we still hold what we took.
            meta = await table.update_entity(
                row, mode=UpdateMode.MERGE, etag=lease.etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return replace(lease, etag=str(meta["etag"]))

    async def release(self, lease: Lease, now: float) -> None:
        """See :class:`LeaseStore`."""
        table = await self._storage.table("leases")
        row = {"PartitionKey": PARTITION, "RowKey": lease.tenant_id, "holder": "", "expires_at": 0.0,
               "last_started": lease.started_at, "last_finished": now}
        # A lost lease (expired, taken by someone else) has nothing to give back.
        with contextlib.suppress(ResourceModifiedError, ResourceNotFoundError):
            await table.update_entity(
                row, mode=UpdateMode.REPLACE, etag=lease.etag, match_condition=MatchConditions.IfNotModified
            )

    async def all(self) -> dict[str, LeaseInfo]:
        """See :class:`LeaseStore`."""
        table = await self._storage.table("leases")
        out: dict[str, LeaseInfo] = {}
        async for entity in table.query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION}):
            if "|" not in str(entity["RowKey"]):  # sync-request rows are not leases
                out[str(entity["RowKey"])] = _info(dict(entity))
        return out

    async def forget(self, lease: Lease) -> None:
        """See :class:`LeaseStore`."""
        table = await self._storage.table("leases")
        with contextlib.suppress(ResourceModifiedError, ResourceNotFoundError):
            await table.delete_entity(PARTITION, lease.tenant_id, etag=lease.etag,
                                      match_condition=MatchConditions.IfNotModified)
        await table.delete_entity(PARTITION, _sync_row(lease.tenant_id))

    async def pending_sync(self, tenant_id: str) -> SyncRequest | None:
        """See :class:`LeaseStore` (two point reads)."""
        table = await self._storage.table("leases")
        try:
            row: Any = await table.get_entity(PARTITION, _sync_row(tenant_id))
        except ResourceNotFoundError:
            return None
        try:
            lease: Any = await table.get_entity(PARTITION, tenant_id)
            started = float(lease.get("last_started") or 0.0)
        except ResourceNotFoundError:
            started = 0.0
        request = SyncRequest(str(row.get("request_id") or ""), bool(row.get("full")),
                              float(row.get("requested_at") or 0.0))
        return request if request.request_id and request.requested_at > started else None

    async def record_sync(self, tenant_id: str, request: SyncRequest) -> None:
        """See :class:`LeaseStore`."""
        table = await self._storage.table("leases")
        try:
            await table.upsert_entity({"PartitionKey": PARTITION, "RowKey": _sync_row(tenant_id),
                                       "request_id": request.request_id, "full": request.full,
                                       "requested_at": request.requested_at}, mode=UpdateMode.REPLACE)
        except ResourceNotFoundError:
            # The record only lets repeats collapse: a sync request is never refused because it cannot be written
            # (the poll itself will then fail and say why).
            log.warning("tenant %s: could not record the sync request (leases table missing)", tenant_id)
