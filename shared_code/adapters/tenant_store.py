"""Table Storage implementation of :class:`shared_code.tenants.TenantRepository`.

Layout (table ``tenants``, one partition per customer tenant so a tenant's rows live together):

* RowKey ``config``: the provisioned :class:`TenantConfig` (JSON), lifecycle ``state``, timestamps.
* RowKey ``status|<section>``: one row per status section (``poll``, ``intune``, ``heartbeat`` …). Separate rows mean
  the poller and the Intune flows never contend for the same ETag; each row is still a read-modify-write guarded by
  its ETag and retried on conflict (412) so concurrent writers to one section both land.

JSON payloads are stored with :func:`pack_json` so a document never hits the Table limits (a string property holds
at most 64 KiB = 32 K UTF-16 code units; an entity at most 1 MiB): the ASCII-only JSON text is split across
``json_0``, ``json_1`` … properties (reference/azure.md, Table service data model limits).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar, cast

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from shared_code.adapters.storage import StorageClients
from shared_code.connector_status import CONNECTOR_PARTITION, CREDENTIAL_SECTION, ConnectorStatus, CredentialStatus
from shared_code.domain.timestamps import utc_iso
from shared_code.errors import ConflictError, NotFoundError
from shared_code.tenant_status import TenantStatus
from shared_code.tenants import TenantConfig, TenantRecord

T = TypeVar("T")

CONFIG_ROW = "config"
STATUS_PREFIX = "status|"
# One string property may hold 64 KiB = 32,768 UTF-16 code units; ASCII-only JSON is one unit per character.
PROPERTY_CHARS = 30_000
# Keep an entity well under 1 MiB: 16 × 30,000 chars × 2 bytes ≈ 960 KB, minus headroom for keys and metadata.
MAX_PROPERTIES_PER_ENTITY = 15
MAX_CONFLICT_RETRIES = 12
# Counters are hot rows (every upload of a tenant bumps one): a bigger budget so bursts of increments all land.
MAX_INCREMENT_RETRIES = 40


def counter_value(value: Any) -> int:
    """A stored counter as an int (absent, null or garbage count as 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def utc_now_iso() -> str:
    """Current UTC time as ISO-8601 with a ``Z`` suffix (the format every status timestamp uses)."""
    return utc_iso()


def pack_json(value: Any) -> dict[str, str]:
    """Serialize ``value`` into ``json_N`` string properties that each respect the 64 KiB property limit.

    Raises:
        ValueError: the JSON does not fit one entity (callers split across rows; see uploads store).
    """
    text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str)
    parts = [text[i : i + PROPERTY_CHARS] for i in range(0, len(text), PROPERTY_CHARS)] or [""]
    if len(parts) > MAX_PROPERTIES_PER_ENTITY:
        msg = f"JSON document of {len(text)} characters does not fit one table entity"
        raise ValueError(msg)
    return {f"json_{i}": part for i, part in enumerate(parts)}


def unpack_json(entity: dict[str, Any]) -> Any:
    """Inverse of :func:`pack_json`."""
    parts: list[str] = []
    index = 0
    while f"json_{index}" in entity:
        parts.append(str(entity[f"json_{index}"]))
        index += 1
    return json.loads("".join(parts)) if parts else None


def config_to_dict(config: TenantConfig) -> dict[str, Any]:
    """Plain JSON-able dict of a config (tuples become lists)."""
    data = asdict(config)
    data["role_mappings"] = [list(pair) for pair in config.role_mappings]
    data["enrollment_groups"] = list(config.enrollment_groups)
    data["platforms"] = list(config.platforms)
    return data


def config_from_dict(data: dict[str, Any]) -> TenantConfig:
    """Rebuild a config stored by :func:`config_to_dict` (unknown keys from newer versions are ignored)."""
    known = set(TenantConfig.__dataclass_fields__)
    values = {k: v for k, v in data.items() if k in known}
    values["enrollment_groups"] = tuple(values.get("enrollment_groups", ()))
    values["platforms"] = tuple(values.get("platforms", ()))
    values["role_mappings"] = tuple((str(g), str(r)) for g, r in values.get("role_mappings", ()))
    return TenantConfig(**values)


def same_config(a: TenantConfig, b: TenantConfig) -> bool:
    """Equal ignoring ``config_version`` (a replace with the same body must not bump the version)."""
    left = config_to_dict(a)
    right = config_to_dict(b)
    left.pop("config_version")
    right.pop("config_version")
    return left == right


async def conflict_pause(attempt: int) -> None:
    """A short jittered pause between ETag retries so contending writers spread out."""
    await asyncio.sleep(random.uniform(0, 0.005 * attempt))


class TableTenantRepository:
    """Tenant documents in Azure Table Storage (Azurite locally)."""

    def __init__(self, storage: StorageClients, *, table: str = "tenants") -> None:
        self._storage = storage
        self._table_name = table

    async def _table(self) -> TableClient:
        return await self._storage.table(self._table_name)

    async def get(self, tenant_id: str) -> TenantRecord | None:
        """Return the tenant (config, state and every status section), or None when never provisioned."""
        table = await self._table()
        entities = [e async for e in table.query_entities("PartitionKey eq @pk", parameters={"pk": tenant_id})]
        return _assemble(entities)

    async def put_config(self, config: TenantConfig) -> tuple[TenantRecord, bool]:
        """Create or replace the config (state → active). Returns (record, created).

        ``config_version`` is 1 on create and bumps only when the replacing config differs, so an idempotent PUT
        leaves it unchanged.
        """
        table = await self._table()
        for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
            now = utc_now_iso()
            try:
                current = await table.get_entity(config.tenant_id, CONFIG_ROW)
            except ResourceNotFoundError:
                stored = _replace_version(config, 1)
                entity = _config_entity(stored, state="active", created_at=now, updated_at=now)
                try:
                    await table.create_entity(entity)
                except ResourceExistsError:
                    await conflict_pause(attempt)
                    continue
                record = await self.get(config.tenant_id)
                assert record is not None
                return record, True
            old = config_from_dict(unpack_json(current))
            version = old.config_version if same_config(old, config) else old.config_version + 1
            stored = _replace_version(config, version)
            unchanged = version == old.config_version and current.get("state") == "active"
            if not unchanged:
                entity = _config_entity(
                    stored, state="active", created_at=str(current.get("created_at", now)), updated_at=now
                )
                try:
                    await _replace_if_unmodified(table, entity, current)
                except ResourceModifiedError:
                    await conflict_pause(attempt)
                    continue
            record = await self.get(config.tenant_id)
            assert record is not None
            return record, False
        msg = f"tenant {config.tenant_id}: config update kept conflicting"
        raise ConflictError(msg)

    async def set_state(self, tenant_id: str, state: str) -> None:
        """Change lifecycle state.

        Raises:
            NotFoundError: the tenant was never provisioned.
        """
        table = await self._table()
        for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
            try:
                current = await table.get_entity(tenant_id, CONFIG_ROW)
            except ResourceNotFoundError:
                raise NotFoundError(f"tenant {tenant_id} is not provisioned", status=404) from None
            entity = dict(current)
            entity["state"] = state
            entity["updated_at"] = utc_now_iso()
            try:
                await _replace_if_unmodified(table, entity, current)
                return
            except ResourceModifiedError:
                await conflict_pause(attempt)
        msg = f"tenant {tenant_id}: state update kept conflicting"
        raise ConflictError(msg)

    async def update_status(self, tenant_id: str, section: str, patch: dict[str, Any]) -> None:
        """Shallow-merge ``patch`` into status[section]; ETag-guarded and retried on conflict."""

        def merge(document: dict[str, Any]) -> None:
            document.update(patch)

        await self._modify_status(tenant_id, section, merge, MAX_CONFLICT_RETRIES, "update")

    async def increment(self, tenant_id: str, section: str, field: str, by: int = 1) -> int:
        """Add ``by`` to status[section][field] in one ETag-guarded read-modify-write; returns the new value.

        Raises:
            ConflictError: still conflicting after ``MAX_INCREMENT_RETRIES`` attempts.
        """

        def add(document: dict[str, Any]) -> int:
            value = counter_value(document.get(field)) + by
            document[field] = value
            return value

        return await self._modify_status(tenant_id, section, add, MAX_INCREMENT_RETRIES, f"{field} increment")

    async def _modify_status(
        self, tenant_id: str, section: str, change: Callable[[dict[str, Any]], T], attempts: int, what: str
    ) -> T:
        """Read status[section], apply ``change`` to it, write it back under the row's ETag; retry on conflict.

        Raises:
            ConflictError: still conflicting after ``attempts``.
        """
        table = await self._table()
        row = STATUS_PREFIX + section
        for attempt in range(1, attempts + 1):
            try:
                current = await table.get_entity(tenant_id, row)
            except ResourceNotFoundError:
                document: dict[str, Any] = {}
                result = change(document)
                try:
                    await table.create_entity({"PartitionKey": tenant_id, "RowKey": row, **pack_json(document)})
                    return result
                except ResourceExistsError:
                    await conflict_pause(attempt)
                    continue
            document = dict(unpack_json(current) or {})
            result = change(document)
            entity = {"PartitionKey": tenant_id, "RowKey": row, **pack_json(document)}
            try:
                await _replace_if_unmodified(table, entity, current)
                return result
            except ResourceModifiedError:
                await conflict_pause(attempt)
        msg = f"tenant {tenant_id}: status[{section}] {what} kept conflicting"
        raise ConflictError(msg)

    async def delete_tenant(self, tenant_id: str) -> None:
        """Remove the tenant's partition: status rows first, the ``config`` row last (a replay still finds it)."""
        table = await self._table()
        rows = [str(e["RowKey"]) async for e in table.query_entities(
            "PartitionKey eq @pk", parameters={"pk": tenant_id}, select=["RowKey"])]
        for row in sorted(rows, key=lambda r: r == CONFIG_ROW):
            await table.delete_entity(tenant_id, row)

    async def list_active(self) -> list[TenantRecord]:
        """Every tenant whose state is ``active`` (one paged scan; the tenants table is small)."""
        table = await self._table()
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        async for entity in table.list_entities():
            by_tenant.setdefault(str(entity["PartitionKey"]), []).append(dict(entity))
        records = [_assemble(rows) for rows in by_tenant.values()]
        return sorted(
            (r for r in records if r is not None and r.state == "active"), key=lambda r: r.config.tenant_id
        )


async def _replace_if_unmodified(table: TableClient, entity: dict[str, Any], current: Any) -> None:
    """REPLACE ``entity`` only if its row still has the ETag ``current`` was read with.

    REPLACE (not MERGE) so a shorter JSON document drops stale ``json_N`` continuation properties.

    Raises:
        ResourceModifiedError: another writer changed the row since it was read.
    """
    await table.update_entity(
        entity, mode=UpdateMode.REPLACE, etag=current.metadata["etag"], match_condition=MatchConditions.IfNotModified
    )


def _replace_version(config: TenantConfig, version: int) -> TenantConfig:
    data = config_to_dict(config)
    data["config_version"] = version
    return config_from_dict(data)


def _config_entity(config: TenantConfig, *, state: str, created_at: str, updated_at: str) -> dict[str, Any]:
    return {
        "PartitionKey": config.tenant_id,
        "RowKey": CONFIG_ROW,
        "state": state,
        "created_at": created_at,
        "updated_at": updated_at,
        "config_version": config.config_version,
        **pack_json(config_to_dict(config)),
    }


def _assemble(entities: list[Any]) -> TenantRecord | None:
    config_row: dict[str, Any] | None = None
    status: dict[str, dict[str, Any]] = {}
    for entity in entities:
        key = str(entity["RowKey"])
        if key == CONFIG_ROW:
            config_row = dict(entity)
        elif key.startswith(STATUS_PREFIX):
            status[key[len(STATUS_PREFIX) :]] = dict(unpack_json(entity) or {})
    if config_row is None:
        return None
    return TenantRecord(
        config=config_from_dict(unpack_json(config_row)),
        state=str(config_row.get("state", "active")),
        status=cast(TenantStatus, status),  # the stored JSON of each section, as its one writer wrote it
        created_at=str(config_row.get("created_at", "")),
        updated_at=str(config_row.get("updated_at", "")),
    )


class TableConnectorStatusStore:
    """The connector-level document (``shared_code/connector_status.py``) in this table, under a reserved partition.

    The partition has no ``config`` row, so :meth:`TableTenantRepository.list_active` never lists it as a tenant.
    """

    def __init__(self, tenants: TableTenantRepository) -> None:
        self._tenants = tenants

    async def get(self) -> CredentialStatus:
        """The document (empty when never written)."""
        table = await self._tenants._table()
        try:
            entity = await table.get_entity(CONNECTOR_PARTITION, STATUS_PREFIX + CREDENTIAL_SECTION)
        except ResourceNotFoundError:
            return {}
        return cast(CredentialStatus, dict(unpack_json(entity) or {}))

    async def update(self, patch: CredentialStatus) -> None:
        """Merge ``patch`` into the document (ETag-guarded, retried on conflict)."""
        await self._tenants.update_status(CONNECTOR_PARTITION, CREDENTIAL_SECTION, dict(patch))


def build_tenant_repository(c: Any) -> TableTenantRepository:
    """The process's TenantRepository: ``container().service(build_tenant_repository)`` (bootstrap.Container)."""
    return TableTenantRepository(c.storage)


def build_connector_status(c: Any) -> ConnectorStatus:
    """The process's ConnectorStatus over the tenants table: ``container().service(build_connector_status)``."""
    return ConnectorStatus(TableConnectorStatusStore(c.service(build_tenant_repository)), c.clock.now)
