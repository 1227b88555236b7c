"""Status sections the Intune and MAM flows write into the tenant document (shared_code/tenants.py), and their one
writer. Types: ``shared_code/tenant_status.py`` (re-exported here).

* ``intune``: discovery + provisioning (``state``: provisioned | consent_required | permission_missing |
  discovery_failed | provisioning_failed | deprovisioned; ``problem``; discovered URLs; ``connectorState`` as Intune
  last reported it).
* ``heartbeat``: last attempt/success, consecutive failures, backoff, ``state`` (ok | failing | consent_required).
* ``permissions``: one key per feature → ``"permission_missing: <permission>"`` or None when the feature works.
* ``intune_activity``: counters (heartbeatsSent, threatReportsAccepted, inventoriesFetched, …).

Discovery, provisioning, uploads, heartbeats and MAM write these sections only through :class:`IntuneStatusWriter`
(and :class:`ActivityCounters` for the counters); readers take a typed view with the ``*_of`` functions.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from shared_code.domain.timestamps import utc_iso
from shared_code.tenant_status import ACTIVITY as ACTIVITY
from shared_code.tenant_status import HEARTBEAT as HEARTBEAT
from shared_code.tenant_status import INTUNE as INTUNE
from shared_code.tenant_status import PERMISSIONS as PERMISSIONS
from shared_code.tenant_status import ActivityStatus as ActivityStatus
from shared_code.tenant_status import HeartbeatStatus as HeartbeatStatus
from shared_code.tenant_status import IntuneServiceStatus as IntuneServiceStatus
from shared_code.tenant_status import IntuneStatus as IntuneStatus
from shared_code.tenant_status import PermissionsStatus as PermissionsStatus
from shared_code.tenants import TenantRecord, TenantRepository

log = logging.getLogger("connector.intune.status")


iso = utc_iso  # the status sections' timestamp format (shared_code/domain/timestamps.py)


def parse_iso(value: Any) -> float | None:
    """ISO-8601 → epoch seconds; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def permission_problem(permission: str) -> str:
    """The one spelling of a missing-permission status."""
    return f"permission_missing: {permission}"


def intune_of(record: TenantRecord) -> IntuneStatus:
    """The record's ``intune`` section (empty when never written)."""
    return record.status.get(INTUNE, {})


def heartbeat_of(record: TenantRecord) -> HeartbeatStatus:
    """The record's ``heartbeat`` section."""
    return record.status.get(HEARTBEAT, {})


def permissions_of(record: TenantRecord) -> PermissionsStatus:
    """The record's ``permissions`` section."""
    return record.status.get(PERMISSIONS, {})


def activity_of(record: TenantRecord) -> ActivityStatus:
    """The record's ``intune_activity`` counters."""
    return record.status.get(ACTIVITY, {})


class IntuneStatusWriter:
    """The one writer of the ``intune``, ``heartbeat`` and ``permissions`` sections (ETag-guarded merges)."""

    def __init__(self, tenants: TenantRepository) -> None:
        self._tenants = tenants

    async def intune(self, tenant_id: str, patch: IntuneStatus) -> None:
        """Merge into ``intune``."""
        await self._tenants.update_status(tenant_id, INTUNE, dict(patch))

    async def heartbeat(self, tenant_id: str, patch: HeartbeatStatus) -> None:
        """Merge into ``heartbeat``."""
        await self._tenants.update_status(tenant_id, HEARTBEAT, dict(patch))

    async def permission(self, tenant_id: str, feature: str, permission: str | None) -> None:
        """Record a feature's missing permission (its ``permission_missing: …`` problem), or clear it with None."""
        await self._tenants.update_status(
            tenant_id, PERMISSIONS, {feature: permission_problem(permission) if permission else None}
        )


class ActivityCounters:
    """Increments ``intune_activity`` counters (an atomic compare-and-swap increment in the repository).

    Counters are bookkeeping: a counter that cannot be written (storage trouble, endless contention) is logged and
    never fails the request or timer run that did the counted work.
    """

    def __init__(self, tenants: TenantRepository) -> None:
        self._tenants = tenants
        self.process_totals: dict[str, int] = {}
        self.failures = 0  # counter writes given up (tests and logs)

    async def bump(self, tenant_id: str, name: str, by: int = 1) -> None:
        """Add ``by`` to a counter of a tenant (and to this process's totals); never raises."""
        self.process_totals[name] = self.process_totals.get(name, 0) + by
        try:
            await self._tenants.increment(tenant_id, ACTIVITY, name, by)
        except Exception:
            self.failures += 1
            log.warning("counter %s of tenant %s not updated", name, tenant_id, exc_info=True)
