"""In-memory :class:`shared_code.tenants.TenantRepository` for unit tests.

It keeps the Table implementation's semantics, including ETags: every write is a compare-and-swap on a per-row
version, and each read-modify-write yields to the event loop between the read and the write, so concurrent
writers really do conflict and exercise the retry path (the contract suite runs against both implementations).
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any, cast

from shared_code.adapters.tenant_store import (
    MAX_CONFLICT_RETRIES,
    MAX_INCREMENT_RETRIES,
    config_from_dict,
    config_to_dict,
    conflict_pause,
    counter_value,
    same_config,
    utc_now_iso,
)
from shared_code.errors import ConflictError, NotFoundError
from shared_code.tenant_status import TenantStatus
from shared_code.tenants import TenantConfig, TenantRecord


class MemoryTenantRepository:
    """Tenant documents in a dict: {tenant: {row: (version, data)}}."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {}
        self.conflicts = 0  # how many ETag conflicts writers hit (tests assert the retry path ran)

    def _read(self, tenant_id: str, row: str) -> tuple[int, dict[str, Any]] | None:
        found = self._rows.get(tenant_id, {}).get(row)
        return (found[0], copy.deepcopy(found[1])) if found else None

    def _swap(self, tenant_id: str, row: str, expected: int | None, data: dict[str, Any]) -> bool:
        rows = self._rows.setdefault(tenant_id, {})
        current = rows.get(row)
        if (current[0] if current else None) != expected:
            self.conflicts += 1
            return False
        rows[row] = ((current[0] if current else 0) + 1, copy.deepcopy(data))
        return True

    async def get(self, tenant_id: str) -> TenantRecord | None:
        """Return the tenant, or None when never provisioned."""
        await asyncio.sleep(0)
        config = self._read(tenant_id, "config")
        if config is None:
            return None
        data = config[1]
        status = {
            row[len("status|") :]: copy.deepcopy(value[1])
            for row, value in self._rows.get(tenant_id, {}).items()
            if row.startswith("status|")
        }
        return TenantRecord(
            config=config_from_dict(data["config"]),
            state=data["state"],
            status=cast(TenantStatus, status),
            created_at=data["created_at"],
            updated_at=data["updated_at"],
        )

    async def put_config(self, config: TenantConfig) -> tuple[TenantRecord, bool]:
        """Create or replace the config (state → active). Returns (record, created)."""
        for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
            current = self._read(config.tenant_id, "config")
            await asyncio.sleep(0)
            now = utc_now_iso()
            if current is None:
                stored = config_to_dict(config) | {"config_version": 1}
                row = {"config": stored, "state": "active", "created_at": now, "updated_at": now}
                if not self._swap(config.tenant_id, "config", None, row):
                    await conflict_pause(attempt)
                    continue
                record = await self.get(config.tenant_id)
                assert record is not None
                return record, True
            version, data = current
            old = config_from_dict(data["config"])
            new_version = old.config_version if same_config(old, config) else old.config_version + 1
            if new_version != old.config_version or data["state"] != "active":
                row = {
                    "config": config_to_dict(config) | {"config_version": new_version},
                    "state": "active",
                    "created_at": data["created_at"],
                    "updated_at": now,
                }
                if not self._swap(config.tenant_id, "config", version, row):
                    await conflict_pause(attempt)
                    continue
            record = await self.get(config.tenant_id)
            assert record is not None
            return record, False
        raise ConflictError(f"tenant {config.tenant_id}: config update kept conflicting")

    async def set_state(self, tenant_id: str, state: str) -> None:
        """Change lifecycle state.

        Raises:
            NotFoundError: the tenant was never provisioned.
        """
        for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
            current = self._read(tenant_id, "config")
            if current is None:
                raise NotFoundError(f"tenant {tenant_id} is not provisioned", status=404)
            await asyncio.sleep(0)
            version, data = current
            data["state"] = state
            data["updated_at"] = utc_now_iso()
            if self._swap(tenant_id, "config", version, data):
                return
            await conflict_pause(attempt)
        raise ConflictError(f"tenant {tenant_id}: state update kept conflicting")

    async def update_status(self, tenant_id: str, section: str, patch: dict[str, Any]) -> None:
        """Shallow-merge ``patch`` into status[section], compare-and-swap, retried on conflict."""
        row = "status|" + section
        for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
            current = self._read(tenant_id, row)
            await asyncio.sleep(0)
            merged = dict(current[1]) if current else {}
            merged.update(copy.deepcopy(patch))
            if self._swap(tenant_id, row, current[0] if current else None, merged):
                return
            await conflict_pause(attempt)
        raise ConflictError(f"tenant {tenant_id}: status[{section}] update kept conflicting")

    async def increment(self, tenant_id: str, section: str, field: str, by: int = 1) -> int:
        """Add ``by`` to status[section][field], compare-and-swap, retried on conflict; returns the new value."""
        row = "status|" + section
        for attempt in range(1, MAX_INCREMENT_RETRIES + 1):
            current = self._read(tenant_id, row)
            await asyncio.sleep(0)
            merged = dict(current[1]) if current else {}
            value = counter_value(merged.get(field)) + by
            merged[field] = value
            if self._swap(tenant_id, row, current[0] if current else None, merged):
                return value
            await conflict_pause(attempt)
        raise ConflictError(f"tenant {tenant_id}: status[{section}].{field} increment kept conflicting")

    async def delete_tenant(self, tenant_id: str) -> None:
        """See :class:`shared_code.tenants.TenantRepository`."""
        self._rows.pop(tenant_id, None)

    async def list_active(self) -> list[TenantRecord]:
        """Every tenant whose state is ``active``, by tenant id."""
        records = [await self.get(t) for t in sorted(self._rows)]
        return [r for r in records if r is not None and r.state == "active"]
