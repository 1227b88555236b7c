"""The tenant document at the HTTP edge: validate ``PUT /tenants/{tenantId}`` bodies, render the document.

Pure functions (no I/O). Unknown fields are rejected so a typo never silently falls back to a default; every error
names the offending field as a JSON-pointer-like path (``guard.maxPercent``, ``roleMappings[2].groupId``).
"""

from __future__ import annotations

import re
from typing import Any

from shared_code.domain.ids import is_guid
from shared_code.errors import ValidationError
from shared_code.tenants import DEFAULT_PLATFORMS, TenantConfig, TenantRecord

PLATFORMS = ("iOS", "iPadOS", "Android", "Windows", "macOS")
MAX_GROUPS = 50
MAX_GROUP_NAME = 256
MAX_URL = 2048
_ROLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_OWN_SECTIONS = frozenset({"intune", "heartbeat", "permissions", "intune_activity"})
_FIELDS = frozenset(
    {
        "enrollmentGroups",
        "platforms",
        "pollIntervalMinutes",
        "heartbeatIntervalMinutes",
        "guard",
        "keepDisabledUsers",
        "roleMappings",
        "partnerEnrollmentUrl",
        "partnerRemediationUrl",
    }
)


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


def _as_int(value: Any) -> int | None:
    """An integer, or None. JSON Schema counts 33.0 as an integer (zero fraction), so we accept it too."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _int(body: dict[str, Any], name: str, low: int, high: int, default: int, *, field: str | None = None) -> int:
    value = _as_int(body.get(name, default))
    if value is None or not low <= value <= high:
        raise ValidationError(f"{name} must be an integer between {low} and {high}", field=field or name)
    return value


def _url(body: dict[str, Any], name: str) -> str:
    value = body.get(name, "")
    if value in ("", None):
        return ""
    if not isinstance(value, str) or not value.startswith("https://") or len(value) > MAX_URL or " " in value:
        raise ValidationError(f"{name} must be an https URL of at most {MAX_URL} characters", field=name)
    # Intune shows these URLs to users and puts them in headers/pages: control characters (CR/LF, NUL, C1) never.
    if _CONTROL.search(value):
        raise ValidationError(f"{name} must not contain control characters", field=name)
    return value


def parse_tenant_body(tenant_id: str, body: dict[str, Any]) -> TenantConfig:
    """Validate a PUT body into a :class:`TenantConfig`.

    Raises:
        ValidationError: naming the offending field.
    """
    for name in body:
        if name not in _FIELDS:
            raise ValidationError(f"unknown field '{name}'", field=name)

    groups = body.get("enrollmentGroups")
    if not isinstance(groups, list) or not 1 <= len(groups) <= MAX_GROUPS:
        raise ValidationError(
            f"enrollmentGroups must be a list of 1..{MAX_GROUPS} group names", field="enrollmentGroups"
        )
    seen: set[str] = set()
    for index, name in enumerate(groups):
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_GROUP_NAME:
            raise ValidationError(
                f"a group name is a non-blank string of at most {MAX_GROUP_NAME} characters",
                field=f"enrollmentGroups[{index}]",
            )
        if _CONTROL.search(name):
            raise ValidationError(
                "a group name must not contain control characters", field=f"enrollmentGroups[{index}]"
            )
        # Names are case-sensitive in Entra enrollment semantics (lookout-mtd-connector-integration.md).
        if name in seen:
            raise ValidationError(f"duplicate group name '{name}'", field=f"enrollmentGroups[{index}]")
        seen.add(name)

    platforms = body.get("platforms", list(DEFAULT_PLATFORMS))
    if not isinstance(platforms, list) or not platforms:
        raise ValidationError(f"platforms must be a non-empty subset of {', '.join(PLATFORMS)}", field="platforms")
    for index, platform in enumerate(platforms):
        if platform not in PLATFORMS:
            raise ValidationError(f"platform must be one of {', '.join(PLATFORMS)}", field=f"platforms[{index}]")
    if len(set(platforms)) != len(platforms):
        raise ValidationError("platforms must not repeat", field="platforms")

    poll = _int(body, "pollIntervalMinutes", 1, 1440, 5)
    heartbeat = _int(body, "heartbeatIntervalMinutes", 5, 1440, 15)

    guard = body.get("guard", {})
    if not isinstance(guard, dict):
        raise ValidationError("guard must be an object {maxDeactivations, maxPercent}", field="guard")
    for name in guard:
        if name not in ("maxDeactivations", "maxPercent"):
            raise ValidationError(f"unknown field '{name}'", field=f"guard.{name}")
    max_count = _int(guard, "maxDeactivations", 0, 1_000_000, 500, field="guard.maxDeactivations")
    max_percent = guard.get("maxPercent", 20.0)
    if not isinstance(max_percent, int | float) or isinstance(max_percent, bool) or not 0 <= max_percent <= 100:
        raise ValidationError("maxPercent must be a number 0..100", field="guard.maxPercent")

    keep_disabled = body.get("keepDisabledUsers", True)
    if not isinstance(keep_disabled, bool):
        raise ValidationError("keepDisabledUsers must be a boolean", field="keepDisabledUsers")

    mappings_raw = body.get("roleMappings", [])
    if not isinstance(mappings_raw, list) or len(mappings_raw) > 100:
        raise ValidationError("roleMappings must be a list of at most 100 {groupId, role}", field="roleMappings")
    mappings: list[tuple[str, str]] = []
    for index, item in enumerate(mappings_raw):
        where = f"roleMappings[{index}]"
        if not isinstance(item, dict):
            raise ValidationError("a role mapping is an object {groupId, role}", field=where)
        for name in item:
            if name not in ("groupId", "role"):
                raise ValidationError(f"unknown field '{name}'", field=f"{where}.{name}")
        group_id = str(item.get("groupId", ""))
        if not is_guid(group_id):
            raise ValidationError("groupId must be an Entra group object id (GUID)", field=f"{where}.groupId")
        group_id = group_id.lower()
        role = item.get("role")
        if not isinstance(role, str) or not _ROLE_RE.match(role):
            raise ValidationError("role must be a console role name like Console.Read", field=f"{where}.role")
        mappings.append((group_id, role))

    return TenantConfig(
        tenant_id=tenant_id,
        enrollment_groups=tuple(groups),
        platforms=tuple(platforms),
        poll_interval_minutes=poll,
        heartbeat_interval_minutes=heartbeat,
        guard_max_deactivations=max_count,
        guard_max_percent=float(max_percent),
        keep_disabled_users=keep_disabled,
        role_mappings=tuple(mappings),
        partner_enrollment_url=_url(body, "partnerEnrollmentUrl"),
        partner_remediation_url=_url(body, "partnerRemediationUrl"),
    )


def config_document(config: TenantConfig) -> dict[str, Any]:
    """The config half of the tenant document (the PUT body's shape)."""
    return {
        "enrollmentGroups": list(config.enrollment_groups),
        "platforms": list(config.platforms),
        "pollIntervalMinutes": config.poll_interval_minutes,
        "heartbeatIntervalMinutes": config.heartbeat_interval_minutes,
        "guard": {"maxDeactivations": config.guard_max_deactivations, "maxPercent": config.guard_max_percent},
        "keepDisabledUsers": config.keep_disabled_users,
        "roleMappings": [{"groupId": g, "role": r} for g, r in config.role_mappings],
        "partnerEnrollmentUrl": config.partner_enrollment_url or None,
        "partnerRemediationUrl": config.partner_remediation_url or None,
    }


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
    return {
        "tenantId": record.config.tenant_id,
        "state": record.state,
        "configVersion": record.config.config_version,
        "createdAt": record.created_at,
        "updatedAt": record.updated_at,
        "config": config_document(record.config),
        "status": {
            "intune": {
                "state": intune.get("state", "unknown"),
                "connectorState": intune.get("connectorState"),
                "problem": intune.get("problem"),
                "provisionedAt": intune.get("provisionedAt"),
                "discoveredAt": intune.get("discoveredAt"),
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
            "activity": status.get("intune_activity", {}),
            "permissions": {k: v for k, v in permissions.items() if v},
            "problems": problems,
            # Other features' sections, unchanged (ours are summarized above; discovered Intune URLs stay internal).
            "sections": {k: v for k, v in status.items() if k not in _OWN_SECTIONS},
        },
    }
