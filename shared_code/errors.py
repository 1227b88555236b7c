"""The connector's one small error taxonomy. Retries are decided by type, in one layer (the HTTP send).

``<Area><What>Error`` names; status → exception happens in one place per adapter.
"""

from __future__ import annotations

from typing import Any


class ConnectorError(Exception):
    """Base of every error the connector raises on purpose."""


class RetriableError(ConnectorError):
    """A transient fault (429, 5xx, timeout, reset). The transport already retried; callers may retry later.

    Attributes:
        retry_after: seconds the service asked us to wait, when it said so.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class FatalError(ConnectorError):
    """A fault that retrying will not fix (4xx other than 408/429)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class PermissionMissingError(FatalError):
    """The tenant did not grant a permission a call needs (Graph 403 Authorization_RequestDenied, Intune 403).

    Attributes:
        permission: the permission the failing call is declared with (see shared_code/permissions.py).
    """

    def __init__(self, message: str, *, permission: str, status: int | None = 403) -> None:
        super().__init__(message, status=status, code="permission_missing")
        self.permission = permission


class ConsentRequiredError(FatalError):
    """No token could be obtained for the tenant: admin consent missing or revoked (AADSTS65001, 7000229, …)."""

    def __init__(self, message: str, *, aadsts: str | None = None) -> None:
        super().__init__(message, status=401, code="consent_required")
        self.aadsts = aadsts


class ConnectorCredentialError(RetriableError):
    """The connector's *own* configuration or credential is unusable: the Key Vault secret is missing, disabled,
    empty or unreadable by the app's identity, the certificate in it is malformed, or Entra rejects it.

    Every tenant fails the same way until an operator fixes Key Vault, so it is never a customer's fault: it does
    not count toward any tenant's quarantine, the connector records one connector-level state instead
    (``shared_code/connector_status.py``), and it is retriable because the first attempt after the fix succeeds.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message, status=status)


class CredentialRejectedError(ConnectorCredentialError):
    """Entra rejected the connector's own credential (AADSTS7000215 bad secret, 7000222 expired secret)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=401)


class CursorExpiredError(FatalError):
    """A delta token is expired or invalid (410 Gone, syncStateNotFound, resyncRequired): run a full resync."""


class NotFoundError(FatalError):
    """The addressed object does not exist."""


class ConflictError(FatalError):
    """The request conflicts with current state (ETag mismatch, connector not enabled, …).

    Attributes:
        details: extra members for the 409 problem (e.g. the current plan when an approval named another one).
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message, status=status, code=code)
        self.details = dict(details or {})


class InconsistentReadError(RetriableError):
    """What Graph answered contradicts itself (a glitched or not yet replicated read): nothing is written, retry."""


class ConfigInvalidError(ConflictError):
    """The tenant's *stored* configuration cannot be used (written before a validation rule existed): nothing runs
    for the tenant until the console PUTs a valid one. ``field`` names the offending field."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message, status=409, code="config_invalid")
        self.field = field


class ValidationError(ConnectorError):
    """Input is malformed. ``field`` names the offending field (JSON pointer–like path); ``kind`` is the problem type
    the HTTP layer answers (``validation-error``, ``unknown-field``, ``invalid-body``, ``invalid-parameter``)."""

    def __init__(self, message: str, *, field: str, kind: str = "validation-error") -> None:
        super().__init__(message)
        self.field = field
        self.kind = kind


class AuthenticationError(ConnectorError):
    """The caller's bearer token is missing or invalid (HTTP 401). The message never echoes the token."""


class ForbiddenError(ConnectorError):
    """The caller is authenticated but lacks the app role the route needs (HTTP 403)."""
