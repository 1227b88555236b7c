"""The tenant configuration's one definition: the PUT body's specs, the :class:`TenantConfig` they produce, and
the re-check of a stored configuration before a poll uses it.

Pure (no I/O). Unknown fields are rejected so a typo never silently falls back to a default; every error names the
offending field as a JSON-pointer-like path (``guard.maxPercent``, ``roleMappings[2].groupId``).
"""

from __future__ import annotations

from typing import Any

from shared_code.errors import ValidationError
from shared_code.tenant_status import CONFIG as CONFIG
from shared_code.tenant_status import ConfigStatus
from shared_code.tenants import DEFAULT_PLATFORMS, TenantConfig, TenantRecord
from shared_code.validation import Bool, Guid, Int, List, Num, Obj, Prop, Str

PLATFORMS = ("iOS", "iPadOS", "Android", "Windows", "macOS")
MAX_GROUPS = 50
MAX_GROUP_NAME = 256
MAX_URL = 2048
# The state the poll records in status section ``config`` for a stored configuration it cannot use.
CONFIG_INVALID = "config_invalid"
# What a poll reads from the configuration (the rest is Intune's and the console's).
POLL_FIELDS = frozenset({"enrollmentGroups", "platforms", "pollIntervalMinutes", "guard", "keepDisabledUsers"})
# Intune shows the partner URLs to users and puts them in headers and pages: https, no spaces, valid text only.
_URL = Str(max_length=MAX_URL, min_length=0, pattern=r"(https://\S+)?", strip=False)
# openapi.yaml's TenantInput. Group names are kept exactly as sent: Entra matches them case- and space-sensitively
# (lookout-mtd-connector-integration.md), so no normalisation, and two spellings are two groups.
TENANT_BODY = Obj({
    "enrollmentGroups": Prop(
        List(Str(max_length=MAX_GROUP_NAME, strip=False), min_items=1, max_items=MAX_GROUPS, unique=True),
        required=True,
    ),
    "platforms": Prop(List(Str(enum=PLATFORMS, strip=False), min_items=1, max_items=len(PLATFORMS), unique=True)),
    "pollIntervalMinutes": Prop(Int(1, 1440)),
    "heartbeatIntervalMinutes": Prop(Int(5, 1440)),
    "guard": Prop(Obj({"maxDeactivations": Prop(Int(0, 1_000_000)), "maxPercent": Prop(Num(0, 100))})),
    "keepDisabledUsers": Prop(Bool()),
    "roleMappings": Prop(List(Obj({
        "groupId": Prop(Guid(), required=True),
        "role": Prop(Str(max_length=64, pattern=r"[A-Za-z][A-Za-z0-9._-]{0,63}", strip=False), required=True),
    }), max_items=100)),
    "partnerEnrollmentUrl": Prop(_URL, nullable=True),
    "partnerRemediationUrl": Prop(_URL, nullable=True),
})


def parse_tenant_body(tenant_id: str, body: Any) -> TenantConfig:
    """Validate a PUT body (:data:`TENANT_BODY`) into a :class:`TenantConfig`.

    Raises:
        ValidationError: naming the offending field.
    """
    data = TENANT_BODY.check(body, "")
    guard = data.get("guard") or {}
    return TenantConfig(
        tenant_id=tenant_id,
        enrollment_groups=tuple(data["enrollmentGroups"]),
        platforms=tuple(data.get("platforms") or DEFAULT_PLATFORMS),
        poll_interval_minutes=data.get("pollIntervalMinutes", 5),
        heartbeat_interval_minutes=data.get("heartbeatIntervalMinutes", 15),
        guard_max_deactivations=guard.get("maxDeactivations", 500),
        guard_max_percent=guard.get("maxPercent", 20.0),
        keep_disabled_users=data.get("keepDisabledUsers", True),
        role_mappings=tuple((m["groupId"], m["role"]) for m in data.get("roleMappings") or ()),
        partner_enrollment_url=data.get("partnerEnrollmentUrl") or "",
        partner_remediation_url=data.get("partnerRemediationUrl") or "",
    )


def config_problem(config: TenantConfig, fields: frozenset[str] = POLL_FIELDS) -> ValidationError | None:
    """Why a *stored* configuration cannot be used, or ``None``: its ``fields`` are re-checked with the PUT body's
    own specs (the others are optional there, so only these are judged).

    Configuration written before a rule existed (e.g. a lone surrogate in a group name, accepted before the text
    rule) must put the tenant in a clear ``config_invalid`` state, not fail every poll deep inside a Graph call.
    """
    document = {k: v for k, v in config_document(config).items() if k in fields}
    try:
        parse_tenant_body(config.tenant_id, document)
    except ValidationError as exc:
        return exc
    return None


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




def config_invalid(record: TenantRecord) -> ConfigStatus | None:
    """The recorded ``config_invalid`` state when it is about the tenant's *current* configuration, else None.

    A PUT of a valid configuration bumps ``configVersion``, which makes an older record stale by itself: no write is
    needed to clear it, and dispatch and the tenant document see the tenant as usable at once.
    """
    section = record.status.get(CONFIG, {})
    if section.get("state") == CONFIG_INVALID and section.get("configVersion") == record.config.config_version:
        return section
    return None
