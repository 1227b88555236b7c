"""The tenant document at the HTTP edge: tenant ids and the rendered document (the PUT body's specs live in
``shared_code/tenant_config.py``).

Pure functions (no I/O).
"""

from __future__ import annotations

from typing import Any

from shared_code.domain.ids import is_guid
from shared_code.errors import ValidationError
from shared_code.tenant_config import CONFIG, CONFIG_INVALID, config_document, config_invalid
from shared_code.tenants import TenantRecord

_OWN_SECTIONS = frozenset({"intune", "heartbeat", "permissions", "intune_activity", CONFIG})


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


def tenant_document(record: TenantRecord) -> dict[str, Any]:
    """The whole tenant document: config, lifecycle and status (every section, plus a summary the console reads).

    Sections written by other features (``poll``, ``scope``, ``guard``, ``quarantine``, ``counts`` …) are passed
    through unchanged under ``status.sections``; ``problems`` collects every ``permission_missing: …`` and the
    Intune provisioning problem in one list.
    """
    status = record.status
    intune = status.get("intune", {})
    heartbeat = status.get("heartbeat", {})
    permissions = status.get("permissions", {})
    found = {str(v) for v in permissions.values() if v}
    # Other features report a missing permission as a plain string value in their own section (poll.lastError …).
    for section in status.values():
        for value in section.values():
            if isinstance(value, str) and value.startswith("permission_missing: "):
                found.add(value)
    problems = sorted(found)
    if intune.get("problem") and intune.get("problem") not in problems:
        problems.append(str(intune["problem"]))
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
            "activity": status.get("intune_activity", {}),
            "permissions": {k: v for k, v in permissions.items() if v},
            "problems": problems,
            # Other features' sections, unchanged (ours are summarized above; discovered Intune URLs stay internal).
            "sections": {k: v for k, v in status.items() if k not in _OWN_SECTIONS},
        },
    }
