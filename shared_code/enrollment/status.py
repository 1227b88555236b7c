"""The enrollment sections of a tenant's status document and their one writer.

The tenant document (``shared_code/tenants.py``) keeps status as named sections so features never overwrite each
other. Enrollment owns ``poll``, ``counts``, ``scope``, ``guard``, ``pending``, ``quarantine`` and ``config``; their
types are in the document's schema (``shared_code/tenant_status.py``, re-exported here), and this module is the only
place that writes them — the poll engine and the enrollment service call :class:`EnrollmentStatus`, nothing calls
``update_status`` for these sections directly. Readers take a typed view of a stored record with the ``*_of``
functions.
"""

from __future__ import annotations

from shared_code.tenant_status import CONFIG as CONFIG
from shared_code.tenant_status import COUNTS as COUNTS
from shared_code.tenant_status import GUARD as GUARD
from shared_code.tenant_status import PENDING as PENDING
from shared_code.tenant_status import POLL as POLL
from shared_code.tenant_status import QUARANTINE as QUARANTINE
from shared_code.tenant_status import SCOPE as SCOPE
from shared_code.tenant_status import ConfigStatus as ConfigStatus
from shared_code.tenant_status import CountsStatus as CountsStatus
from shared_code.tenant_status import GuardStatus as GuardStatus
from shared_code.tenant_status import PendingStatus as PendingStatus
from shared_code.tenant_status import PollStatus as PollStatus
from shared_code.tenant_status import QuarantineStatus as QuarantineStatus
from shared_code.tenant_status import ScopeStatus as ScopeStatus
from shared_code.tenants import TenantRecord, TenantRepository


def poll_of(record: TenantRecord) -> PollStatus:
    """The record's ``poll`` section (empty when never written)."""
    return record.status.get(POLL, {})


def counts_of(record: TenantRecord) -> CountsStatus:
    """The record's ``counts`` section."""
    return record.status.get(COUNTS, {})


def scope_of(record: TenantRecord) -> ScopeStatus:
    """The record's ``scope`` section."""
    return record.status.get(SCOPE, {})


def guard_of(record: TenantRecord) -> GuardStatus:
    """The record's ``guard`` section."""
    return record.status.get(GUARD, {})


def pending_of(record: TenantRecord) -> PendingStatus:
    """The record's ``pending`` section."""
    return record.status.get(PENDING, {})


def quarantine_of(record: TenantRecord) -> QuarantineStatus:
    """The record's ``quarantine`` section."""
    return record.status.get(QUARANTINE, {})


def config_of(record: TenantRecord) -> ConfigStatus:
    """The record's ``config`` section."""
    return record.status.get(CONFIG, {})



class EnrollmentStatus:
    """The one writer of the enrollment sections (each write an ETag-guarded merge of a typed patch)."""

    def __init__(self, tenants: TenantRepository) -> None:
        self._tenants = tenants

    async def poll(self, tenant_id: str, patch: PollStatus) -> None:
        """Merge into ``poll``."""
        await self._tenants.update_status(tenant_id, POLL, dict(patch))

    async def counts(self, tenant_id: str, patch: CountsStatus) -> None:
        """Merge into ``counts``."""
        await self._tenants.update_status(tenant_id, COUNTS, dict(patch))

    async def scope(self, tenant_id: str, patch: ScopeStatus) -> None:
        """Merge into ``scope``."""
        await self._tenants.update_status(tenant_id, SCOPE, dict(patch))

    async def guard(self, tenant_id: str, patch: GuardStatus) -> None:
        """Merge into ``guard``."""
        await self._tenants.update_status(tenant_id, GUARD, dict(patch))

    async def pending(self, tenant_id: str, patch: PendingStatus) -> None:
        """Merge into ``pending``."""
        await self._tenants.update_status(tenant_id, PENDING, dict(patch))

    async def quarantine(self, tenant_id: str, patch: QuarantineStatus) -> None:
        """Merge into ``quarantine``."""
        await self._tenants.update_status(tenant_id, QUARANTINE, dict(patch))

    async def config(self, tenant_id: str, patch: ConfigStatus) -> None:
        """Merge into ``config`` (the stored configuration's usability, re-checked before each poll)."""
        await self._tenants.update_status(tenant_id, CONFIG, dict(patch))
