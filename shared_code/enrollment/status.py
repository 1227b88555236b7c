"""The enrollment sections of a tenant's status document, typed, and their one writer.

The tenant document (``shared_code/tenants.py``) keeps status as named sections so features never overwrite each
other. Enrollment owns ``poll``, ``counts``, ``scope``, ``guard``, ``pending`` and ``quarantine``; this module types
them (TypedDicts: every key optional, because each write is a merge patch) and is the only place that writes them —
the poll engine and the enrollment service call :class:`EnrollmentStatus`, nothing calls ``update_status`` for these
sections directly. Readers take a typed view of a stored record with the ``*_of`` functions.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast

from shared_code.tenants import TenantRecord, TenantRepository

POLL, COUNTS, SCOPE, GUARD, PENDING, QUARANTINE = "poll", "counts", "scope", "guard", "pending", "quarantine"


class PollStatus(TypedDict, total=False):
    """What the last poll did (``result`` ok | failed) and cost; mode and counts are those of the last applied poll."""

    mode: str
    startedAt: str
    finishedAt: str
    durationMs: int
    requests: int
    resourceUnits: int
    throttled: int
    retries: int
    result: str
    counts: dict[str, int]
    configVersion: int
    lastError: str | None
    lastErrorAt: str
    lastNoopAt: str
    strategy: str
    lastFullAt: str
    shape: dict[str, Any]
    # A full reconcile run in progress ({run, phase, steps, updatedAt}; None when none): the next poll continues it.
    reconcile: dict[str, Any] | None


class CountsStatus(TypedDict, total=False):
    """The console's summary."""

    enrolled: int
    stagedDeactivations: int
    updatedAt: str


class ScopeStatus(TypedDict, total=False):
    """How the configured enrollment groups resolved, and what the scope leaves out."""

    unresolvedGroups: list[dict[str, Any]]
    ambiguousGroups: list[dict[str, Any]]
    resolvedGroups: dict[str, str]
    updatedAt: str
    disabledDigest: str
    ownerlessDevices: int
    ownerlessSample: list[str]


class GuardStatus(TypedDict, total=False):
    """Deactivations staged for approval: the plan (``planId``), why, a sample, its checks and its approval."""

    state: str  # clear | deactivations_staged
    staged: int
    threshold: int
    why: str  # count | cause
    planId: str | None
    stagedAt: str | None
    lastCheckedAt: str
    lastCheck: str
    configVersion: int
    sample: list[dict[str, Any]]
    approvedPlanId: str | None
    approvedAt: str
    approvedBy: str
    approvalId: str
    releasedAt: str
    released: str


class PendingStatus(TypedDict, total=False):
    """Objects Graph could not read yet (``domain.pending.status``)."""

    count: int
    oldestSince: str | None
    oldestAgeSeconds: int | None
    sample: list[dict[str, Any]]
    gaveUp: int
    gaveUpSample: list[dict[str, Any]]
    updatedAt: str


class QuarantineStatus(TypedDict, total=False):
    """The failure streak (``enrollment.quarantine``)."""

    state: str  # ok | backoff | quarantined
    failures: int
    reason: str | None
    lastFailureAt: float | str
    nextAttemptAt: float | None
    nextAttemptAtIso: str
    quarantinedAt: float | None
    recoveredAt: float


def poll_of(record: TenantRecord) -> PollStatus:
    """The record's ``poll`` section (empty when never written)."""
    return cast(PollStatus, record.status.get(POLL, {}))


def counts_of(record: TenantRecord) -> CountsStatus:
    """The record's ``counts`` section."""
    return cast(CountsStatus, record.status.get(COUNTS, {}))


def scope_of(record: TenantRecord) -> ScopeStatus:
    """The record's ``scope`` section."""
    return cast(ScopeStatus, record.status.get(SCOPE, {}))


def guard_of(record: TenantRecord) -> GuardStatus:
    """The record's ``guard`` section."""
    return cast(GuardStatus, record.status.get(GUARD, {}))


def pending_of(record: TenantRecord) -> PendingStatus:
    """The record's ``pending`` section."""
    return cast(PendingStatus, record.status.get(PENDING, {}))


def quarantine_of(record: TenantRecord) -> QuarantineStatus:
    """The record's ``quarantine`` section."""
    return cast(QuarantineStatus, record.status.get(QUARANTINE, {}))


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
