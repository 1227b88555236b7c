"""The tenant status document's schema: every section typed, and its name (one leaf module, no I/O, no imports).

A tenant's status is a set of named sections (``shared_code/tenants.py``), one Table row each, so features never
overwrite each other. Every section is a TypedDict with every key optional (each write is a merge patch) and has
exactly one writer module, which is the only place that calls ``TenantRepository.update_status`` /
``increment`` for it (``tests/unit/core/test_status_writers.py`` checks this):

* ``poll`` ``counts`` ``scope`` ``guard`` ``pending`` ``quarantine`` ``config``: written by
  ``shared_code/enrollment/status.py`` (``EnrollmentStatus``), read with its ``*_of`` functions;
* ``delivery``: written by ``shared_code/enrollment/poison.py``;
* ``intune`` ``heartbeat`` ``permissions`` ``intune_activity``: written by ``shared_code/intune/status.py``
  (``IntuneStatusWriter``; ``ActivityCounters`` for the counters), read with its ``*_of`` functions.

The connector-level document (partition ``~connector``) is typed and written by ``shared_code/connector_status.py``.
The stored format is the JSON of these dicts; the API renders them (``shared_code/intune/tenant_api.py``).
"""

from __future__ import annotations

from typing import Any, Final, TypedDict

POLL: Final = "poll"
COUNTS: Final = "counts"
SCOPE: Final = "scope"
GUARD: Final = "guard"
PENDING: Final = "pending"
QUARANTINE: Final = "quarantine"
CONFIG: Final = "config"
DELIVERY: Final = "delivery"
INTUNE: Final = "intune"
HEARTBEAT: Final = "heartbeat"
PERMISSIONS: Final = "permissions"
ACTIVITY: Final = "intune_activity"


# ---- enrollment ------------------------------------------------------------------------------------------------
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



class ConfigStatus(TypedDict, total=False):
    """Whether the *stored* configuration is usable (``tenant_config.config_problem``, re-checked before each poll).

    ``config_invalid`` names the field and holds for ``configVersion`` only: a valid PUT bumps the version, which
    makes the record stale by itself.
    """

    state: str  # valid | config_invalid
    field: str | None
    detail: str | None
    configVersion: int
    since: str
    clearedAt: str


class DeliveryStatus(TypedDict, total=False):
    """The last failed (or recovered, or re-queued) delivery of a poll message (``enrollment.poison``)."""

    state: str  # retrying | poisoned | recovered | requeued
    messageId: str
    reason: str | None
    attempt: int
    maxAttempts: int
    lastError: str
    lastErrorAt: str
    poisonedAt: str
    queue: str
    action: str
    recoveredAt: str
    requeuedAt: str
    requeuedBy: str
    requeued: int


# ---- Intune ----------------------------------------------------------------------------------------------------
class IntuneServiceStatus(TypedDict, total=False):
    """One discovered Intune partner service (``IntuneEndpoint.status``); the URL never leaves the connector."""

    state: str  # available | unavailable
    provider: str
    url: str | None
    discoveredAt: str
    problem: str | None


class IntuneStatus(TypedDict, total=False):
    """Discovery and provisioning at Intune, and the connector state Intune last reported."""

    state: str  # provisioned | consent_required | permission_missing | discovery_failed | provisioning_failed | …
    problem: str | None
    lastAttemptAt: str
    provisioned: int
    provisionedAt: str
    errorDetail: Any  # Intune's ErrorDetail, as it answered
    connectorState: str | None
    connectorStateAt: str
    deprovisionedAt: str
    deprovisionProblem: str | None
    services: dict[str, IntuneServiceStatus]
    discoveredAt: str


class HeartbeatStatus(TypedDict, total=False):
    """The last heartbeat attempt and success, the failure streak and its backoff."""

    state: str  # ok | failing | consent_required
    lastAttemptAt: str
    lastSuccessAt: str
    consecutiveFailures: int
    nextAttemptAt: str | None
    lastError: str | None
    resyncTimestamp: Any  # Intune's ResyncTimestamp, as it answered


# One key per feature (``intune``, ``heartbeat``, ``threat``, ``inventory``, ``mam`` …) → ``"permission_missing:
# <permission>"``, or None once the feature works again.
PermissionsStatus = dict[str, str | None]

# Counters (heartbeatsSent, threatReportsAccepted, inventoriesFetched …), incremented by compare-and-swap.
ActivityStatus = dict[str, int]


class TenantStatus(TypedDict, total=False):
    """A tenant's whole status document: every section, absent until first written."""

    poll: PollStatus
    counts: CountsStatus
    scope: ScopeStatus
    guard: GuardStatus
    pending: PendingStatus
    quarantine: QuarantineStatus
    config: ConfigStatus
    delivery: DeliveryStatus
    intune: IntuneStatus
    heartbeat: HeartbeatStatus
    permissions: PermissionsStatus
    intune_activity: ActivityStatus
