"""The tenant document at the HTTP edge: tenant ids and the rendered document (the PUT body's specs live in
``shared_code/tenant_config.py``).

Pure functions (no I/O).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from shared_code.domain.ids import is_guid
from shared_code.errors import ValidationError
from shared_code.intune.status import activity_of, heartbeat_of, intune_of, permissions_of
from shared_code.tenant_config import CONFIG_INVALID, config_document, config_invalid
from shared_code.tenant_status import (
    ACTIVITY,
    CONFIG,
    HEARTBEAT,
    INTUNE,
    PERMISSIONS,
    ActivityStatus,
    CountsStatus,
    GuardStatus,
    PendingStatus,
    PollStatus,
    QuarantineStatus,
    ScopeStatus,
)
from shared_code.tenants import TenantRecord

_OWN_SECTIONS = frozenset({INTUNE, HEARTBEAT, PERMISSIONS, ACTIVITY, CONFIG})


class ConfigView(TypedDict, total=False):
    """``status.config``: ``valid``, or ``config_invalid`` naming the field."""

    state: str
    field: str | None
    detail: str | None
    since: str | None


class IntuneView(TypedDict):
    """``status.intune``: provisioning and each partner service's state (discovered URLs stay internal)."""

    state: str
    connectorState: str | None
    problem: str | None
    provisionedAt: str | None
    discoveredAt: str | None
    services: dict[str, dict[str, Any]]


class HeartbeatView(TypedDict):
    """``status.heartbeat``."""

    state: str | None
    lastSuccessAt: str | None
    lastAttemptAt: str | None
    consecutiveFailures: int
    nextAttemptAt: str | None
    lastError: str | None


class StatusView(TypedDict):
    """``status``: the sections the console reads, summarized or passed through (openapi.yaml ``TenantStatus``)."""

    config: ConfigView
    intune: IntuneView
    heartbeat: HeartbeatView
    lastPoll: PollStatus | None
    counts: CountsStatus | None
    quarantine: QuarantineStatus | None
    stagedDeactivations: GuardStatus | None
    enrollmentGroups: ScopeStatus | None
    pending: PendingStatus | None
    activity: ActivityStatus
    permissions: dict[str, str]
    problems: list[str]
    sections: dict[str, Mapping[str, Any]]


class TenantDocument(TypedDict):
    """``GET /api/tenants/{tenantId}``: config, lifecycle and status (openapi.yaml ``Tenant``)."""

    tenantId: str
    state: str
    configVersion: int
    createdAt: str
    updatedAt: str
    config: dict[str, Any]
    status: StatusView


def validate_tenant_id(value: str) -> str:
    """A tenant id must be a canonical GUID (it becomes a Table PartitionKey and a URL key at Intune).

    Only the 8-4-4-4-12 form is accepted: ``uuid.UUID`` would also take braces, a ``urn:uuid:`` prefix or no dashes
    and rewrite the id, so a caller could address one tenant under several spellings. The HTTP routes use
    ``RequestContext.guid`` (same rule, 400 ``invalid-parameter``); this is for callers outside a request.

    Raises:
        ValidationError: field ``tenantId``.
    """
    if not is_guid(value):
        raise ValidationError("tenantId must be a GUID (8-4-4-4-12 hexadecimal digits)", field="tenantId")
    return value.lower()


def tenant_document(record: TenantRecord) -> TenantDocument:
    """The whole tenant document: config, lifecycle and status (every section, plus a summary the console reads).

    Sections written by other features (``poll``, ``scope``, ``guard``, ``quarantine``, ``counts`` …) are passed
    through unchanged under ``status.sections``; ``problems`` collects every ``permission_missing: …`` and the
    Intune provisioning problem in one list.
    """
    status = record.status
    intune = intune_of(record)
    heartbeat = heartbeat_of(record)
    permissions = permissions_of(record)
    found = {str(v) for v in permissions.values() if v}
    # Other features report a missing permission as a plain string value in their own section (poll.lastError …).
    for section in status.values():
        for value in section.values() if isinstance(section, Mapping) else ():
            if isinstance(value, str) and value.startswith("permission_missing: "):
                found.add(value)
    problems = sorted(found)
    if intune.get("problem") and intune.get("problem") not in problems:
        problems.append(str(intune.get("problem")))
    raw_services = intune.get("services")
    services: dict[str, Any] = raw_services if isinstance(raw_services, dict) else {}
    for name, service in sorted(services.items()):
        if isinstance(service, dict) and service.get("state") == "unavailable":
            problems.append(f"{name}_service_unavailable: {service.get('provider')}")
    bad_config = config_invalid(record)
    if bad_config is not None:
        problems.append(f"{CONFIG_INVALID}: {bad_config.get('field')}")
    return {
        "tenantId": record.config.tenant_id,
        "state": record.state,
        "configVersion": record.config.config_version,
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
        "config": config_document(record.config),
        "status": {
            "config": {
                "state": CONFIG_INVALID, "field": bad_config.get("field"), "detail": bad_config.get("detail"),
                "since": bad_config.get("since"),
            } if bad_config is not None else {"state": "valid"},
            "intune": {
                "state": intune.get("state", "unknown"),
                "connectorState": intune.get("connectorState"),
                "problem": intune.get("problem"),
                "provisionedAt": intune.get("provisionedAt"),
                "discoveredAt": intune.get("discoveredAt"),
                # Each partner service's state (available | unavailable); discovered URLs stay internal.
                "services": {
                    name: {k: v for k, v in service.items() if k != "url"}
                    for name, service in services.items() if isinstance(service, dict)
                },
            },
            "heartbeat": {
                "state": heartbeat.get("state"),
                "lastSuccessAt": heartbeat.get("lastSuccessAt"),
                "lastAttemptAt": heartbeat.get("lastAttemptAt"),
                "consecutiveFailures": heartbeat.get("consecutiveFailures", 0),
                "nextAttemptAt": heartbeat.get("nextAttemptAt"),
                "lastError": heartbeat.get("lastError"),
            },
            "lastPoll": status.get("poll"),
            "counts": status.get("counts"),
            "quarantine": status.get("quarantine"),
            "stagedDeactivations": status.get("guard"),
            "enrollmentGroups": status.get("scope"),
            # Objects Graph could not read yet (replication lag): count, oldest, sample, given up.
            "pending": status.get("pending"),
            "activity": activity_of(record),
            "permissions": {k: v for k, v in permissions.items() if v},
            "problems": problems,
            # Other features' sections, unchanged (ours are summarized above; discovered Intune URLs stay internal).
            "sections": {k: v for k, v in status.items() if k not in _OWN_SECTIONS and isinstance(v, Mapping)},
        },
    }
