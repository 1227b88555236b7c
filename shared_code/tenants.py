"""The tenant document: configuration (what the console provisioned) and status (what the connector observed).

Port only; adapters live in shared_code/adapters/tenant_store.py (Table Storage) and an in-memory fake for unit
tests. Status is split into named sections (``poll``, ``intune``, ``heartbeat``, ``scope``, ``guard``,
``quarantine``, ``permissions`` …) so the poller and the Intune flows update their own section without overwriting
each other; every update is an ETag-guarded merge retried on conflict. Each section is typed, and written by one
module only (``shared_code/tenant_status.py`` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from shared_code.tenant_status import TenantStatus

DEFAULT_PLATFORMS = ("iOS", "iPadOS", "Android")


@dataclass(frozen=True)
class TenantConfig:
    """What the console provisioned for one customer tenant (validated at the HTTP edge)."""

    tenant_id: str
    enrollment_groups: tuple[str, ...]
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS
    poll_interval_minutes: int = 5
    heartbeat_interval_minutes: int = 15
    # Deactivation guard: stage when a plan deactivates more than min(max_count, max_percent% of enrolled).
    guard_max_deactivations: int = 500
    guard_max_percent: float = 20.0
    keep_disabled_users: bool = True
    role_mappings: tuple[tuple[str, str], ...] = ()  # (Entra group id, console role)
    partner_enrollment_url: str = ""
    partner_remediation_url: str = ""
    config_version: int = 1


@dataclass
class TenantRecord:
    """A stored tenant: config, lifecycle state and status sections."""

    config: TenantConfig
    state: str = "active"  # active | deprovisioned
    status: TenantStatus = field(default_factory=TenantStatus)
    created_at: str = ""
    updated_at: str = ""


class TenantRepository(Protocol):
    """Storage of tenant documents, partitioned by tenant id."""

    async def get(self, tenant_id: str) -> TenantRecord | None:
        """Return the tenant, or None when it was never provisioned."""
        ...

    async def put_config(self, config: TenantConfig) -> tuple[TenantRecord, bool]:
        """Create or replace the config (state → active). Returns (record, created)."""
        ...

    async def set_state(self, tenant_id: str, state: str) -> None:
        """Change lifecycle state (``deprovisioned`` keeps history but stops polling)."""
        ...

    async def update_status(self, tenant_id: str, section: str, patch: dict[str, Any]) -> None:
        """Merge ``patch`` into status[section] (ETag-guarded, retried on conflict)."""
        ...

    async def increment(self, tenant_id: str, section: str, field: str, by: int = 1) -> int:
        """Add ``by`` to the integer status[section][field] (absent or non-integer counts as 0) and return the new
        value; the read and the write are one compare-and-swap, retried on conflict, so concurrent increments all
        land.

        Raises:
            ConflictError: the row kept changing for the implementation's retry budget.
        """
        ...

    async def delete_tenant(self, tenant_id: str) -> None:
        """Remove the tenant's document (config and every status section): the last step of a purge."""
        ...

    async def list_active(self) -> list[TenantRecord]:
        """Every tenant whose state is ``active``."""
        ...
