"""Failure streaks, backoff and quarantine of a tenant's polls; when a tenant is due (pure functions).

Modelled on Entra provisioning's escrow and quarantine (reference/graph.md §7): a failing tenant is retried later and
later; after ``QUARANTINE_AFTER_FAILURES`` consecutive failures it is ``quarantined`` with the reason and retried
at a reduced rate until a poll succeeds. One tenant's failures never touch another's schedule.
"""

from __future__ import annotations

from typing import Any

from shared_code.errors import (
    ConnectorCredentialError,
    ConsentRequiredError,
    CredentialRejectedError,
    CursorExpiredError,
    FatalError,
    InconsistentReadError,
    PermissionMissingError,
    RetriableError,
)

# Backoff never grows past this before quarantine; quarantined tenants are retried this often.
MAX_BACKOFF_SECONDS = 2 * 3600
QUARANTINE_RETRY_SECONDS = 6 * 3600
# A scheduled tick may fire a little before the interval has fully elapsed since the last start.
DUE_SLACK_FRACTION = 0.1


def failure_reason(error: BaseException) -> str:
    """A short, secret-free reason for status documents."""
    if isinstance(error, ConsentRequiredError):
        return f"consent_required (AADSTS{error.aadsts or '?'})"
    if isinstance(error, PermissionMissingError):
        return f"permission_missing: {error.permission}"
    if isinstance(error, CredentialRejectedError):
        return "connector_credential_rejected"
    if isinstance(error, ConnectorCredentialError):
        return "connector_credential_unavailable"
    if isinstance(error, InconsistentReadError):
        return "inconsistent_read"
    if isinstance(error, RetriableError):
        return f"graph_unavailable ({error.status or 'transport'})"
    if isinstance(error, CursorExpiredError):
        # GraphUrlRejectedError: a link outside GRAPH_BASE_URL was refused (the token was not sent).
        return "graph_link_refused" if error.code == "foreign_url" else "delta_token_expired"
    if isinstance(error, FatalError):
        return f"graph_rejected ({error.status} {error.code or ''})".strip()
    return f"internal_error ({type(error).__name__})"


def backoff_seconds(failures: int, interval_minutes: int) -> float:
    """Delay before the next attempt after ``failures`` consecutive failures (exponential, capped)."""
    base = max(60.0, interval_minutes * 60.0)
    # The exponent is capped so a long streak cannot overflow a float (2**1024); the delay is capped anyway.
    return float(min(MAX_BACKOFF_SECONDS, base * 2 ** min(max(0, failures - 1), 16)))


def after_failure(
    previous: dict[str, Any], error: BaseException, now: float, *, interval_minutes: int, quarantine_after: int
) -> dict[str, Any]:
    """The ``quarantine`` status patch after a failed poll.

    A *connector* credential fault (secret missing, unreadable, malformed or rejected) fails every tenant alike
    until an operator fixes Key Vault: it is recorded and retried at the normal interval, but it does not lengthen
    the tenant's streak towards quarantine.
    """
    if isinstance(error, ConnectorCredentialError):
        failures = int(previous.get("failures") or 0)
        return {
            "state": previous.get("state") or "backoff",
            "failures": failures,
            "reason": failure_reason(error),
            "lastFailureAt": now,
            "nextAttemptAt": now + max(60.0, interval_minutes * 60.0),
            "quarantinedAt": previous.get("quarantinedAt"),
        }
    failures = int(previous.get("failures") or 0) + 1
    quarantined = failures >= quarantine_after
    delay = QUARANTINE_RETRY_SECONDS if quarantined else backoff_seconds(failures, interval_minutes)
    return {
        "state": "quarantined" if quarantined else "backoff",
        "failures": failures,
        "reason": failure_reason(error),
        "lastFailureAt": now,
        "nextAttemptAt": now + delay,
        "quarantinedAt": previous.get("quarantinedAt") or (now if quarantined else None),
    }


def after_success(previous: dict[str, Any], now: float) -> dict[str, Any] | None:
    """The patch that clears a streak, or None when there was none (no write on healthy polls)."""
    if not previous or not int(previous.get("failures") or 0):
        return None
    return {"state": "ok", "failures": 0, "reason": None, "nextAttemptAt": None, "quarantinedAt": None,
            "recoveredAt": now}


def is_due(
    now: float,
    *,
    interval_minutes: int,
    last_started: float,
    holder_expires_at: float,
    quarantine: dict[str, Any],
) -> bool:
    """Whether the dispatcher should enqueue a poll for the tenant now."""
    if holder_expires_at > now:
        return False  # a poll is running
    next_attempt = quarantine.get("nextAttemptAt")
    if int(quarantine.get("failures") or 0) and next_attempt is not None:
        return now >= float(next_attempt)
    interval = interval_minutes * 60.0
    return now >= last_started + interval * (1.0 - DUE_SLACK_FRACTION)
