"""The connector-level state: faults of the connector itself, kept apart from every tenant's status.

A missing, forbidden or empty Key Vault secret, a malformed certificate or a secret Entra rejects
(:class:`~shared_code.errors.ConnectorCredentialError`) fails every tenant alike. Counting it against each tenant
would quarantine the whole fleet for hours after the fix; instead the poll records it here, once for the connector:

* ``state``: ``ok`` or ``credential_failed``; ``reason`` (secret-free), ``since``, ``lastFailureAt``, ``recoveredAt``.
* The alert line ``connector.credential.failed reason=…`` is logged on entry (ERROR), ``connector.credential.recovered``
  on the first success after it; ``GET /api/connector`` (Console.Read) answers the document.

The document lives in the ``tenants`` table (its owner, ``shared_code/adapters/tenant_store.py``, stores it) under
the reserved partition :data:`CONNECTOR_PARTITION`, which no tenant id (a GUID) can take and which has no ``config``
row, so it is never listed as a tenant. Writes are throttled per instance: a fleet failing at once writes the row
once per ``recheck_seconds`` and instance, not once per tenant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, TypedDict, cast

from shared_code.domain.timestamps import utc_iso

CONNECTOR_PARTITION = "~connector"
CREDENTIAL_SECTION = "credential"
OK = "ok"
CREDENTIAL_FAILED = "credential_failed"
RECHECK_SECONDS = 60.0

log = logging.getLogger("connector.status")


class CredentialStatus(TypedDict, total=False):
    """The connector-level document (section ``credential`` of partition ``~connector``); :class:`ConnectorStatus` is
    its one writer."""

    state: str  # ok | credential_failed
    reason: str | None
    since: str
    lastFailureAt: str
    recoveredAt: str | None


class ConnectorStatusStore(Protocol):
    """Where the connector-level document is kept (one row)."""

    async def get(self) -> CredentialStatus:
        """The document (empty when never written)."""
        ...

    async def update(self, patch: CredentialStatus) -> None:
        """Merge ``patch`` into the document (ETag-guarded)."""
        ...


class ConnectorStatus:
    """Records connector credential faults once for the connector and clears them on the next success.

    Args:
        store: the document's storage.
        clock: seconds since the epoch.
        recheck_seconds: how long this instance trusts what it last read or wrote before touching the row again.
    """

    def __init__(
        self, store: ConnectorStatusStore, clock: Callable[[], float], *, recheck_seconds: float = RECHECK_SECONDS
    ) -> None:
        self._store = store
        self._clock = clock
        self._recheck = recheck_seconds
        self._known: str | None = None  # what this instance last saw: OK, CREDENTIAL_FAILED or unknown
        self._known_reason: str | None = None
        self._known_at = float("-inf")

    def _trusted(self, state: str, reason: str | None = None) -> bool:
        return (
            self._known == state
            and (reason is None or self._known_reason == reason)
            and self._clock() - self._known_at < self._recheck
        )

    async def get(self) -> CredentialStatus:
        """The connector-level document, with ``state`` ``ok`` when nothing was ever recorded."""
        document = await self._store.get()
        return cast(CredentialStatus, {"state": OK, **document})

    async def failed(self, reason: str) -> None:
        """Record a connector credential fault (``reason`` is secret-free); logs the alert line on entry."""
        if self._trusted(CREDENTIAL_FAILED, reason):
            return
        now = self._clock()
        current = await self._store.get()
        if current.get("state") == CREDENTIAL_FAILED and current.get("reason") == reason:
            await self._store.update({"lastFailureAt": utc_iso(now)})
        else:
            # The prefix is the alert contract, as connector.tenant.quarantined is (infra/modules/alerts.bicep).
            log.error("connector.credential.failed reason=%s", reason)
            await self._store.update({
                "state": CREDENTIAL_FAILED, "reason": reason, "since": utc_iso(now), "lastFailureAt": utc_iso(now),
                "recoveredAt": None,
            })
        self._known, self._known_reason, self._known_at = CREDENTIAL_FAILED, reason, now

    async def succeeded(self) -> None:
        """Clear a recorded fault after a successful use of the credential (one read per ``recheck_seconds``)."""
        if self._trusted(OK):
            return
        now = self._clock()
        current = await self._store.get()
        if current.get("state") == CREDENTIAL_FAILED:
            log.warning("connector.credential.recovered reason=%s", current.get("reason"))
            await self._store.update({"state": OK, "reason": None, "recoveredAt": utc_iso(now)})
        self._known, self._known_reason, self._known_at = OK, None, now

