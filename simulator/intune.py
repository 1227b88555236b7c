"""Simulated Intune partner data-sync services (best public evidence: Fleet's compliance-partner integration).

Served at the URIs the Intune service principal's `/endpoints` advertise (contract):
`{base}/intune/{tenant}/StatelessPartnerTenantDataSyncService` and `.../StatelessPartnerDeviceDataSyncService`.

Calls (intune.md §2, Fleet `website/api/controllers/microsoft-proxy/*`):
- `PUT .../PartnerTenants(guid'{tid}')?api-version=1.6` body exactly `{"Provisioned": 1|2, "PartnerEnrollmentUrl",
  "PartnerRemediationUrl"}` → `{"Key", "ContextId", "Provisioned", "HttpStatusCode", "ErrorDetail"}`.
- `PUT .../PartnerTenantHeartbeat(guid'{tid}')?api-version=1.6` body exactly `{"Timestamp": ISO-8601}` →
  `{"Key", "TenantId", "ClientType", "Timestamp", "ResyncTimestamp", "HttpStatusCode", "ErrorDetail", "MessageErrors"}`.
- `PUT .../DataUploadMessages(guid'{msg}')?api-version=1.2` body exactly `{"TenantId", "UploadTime", "Content"}` where
  `Content` is a JSON **string** of an entity array → `{"TenantId", "MessageId", "ErrorCode", "ErrorDetail"}`.
  Re-sending the same message id with the same body is idempotent; a different body is 409.
- `GET .../DataUploadMessages(guid'{msg}')?api-version=1.2` → `{"MessageId", "TenantId", "Status":
  "Pending|Succeeded|Failed", "ErrorDetail", "UploadTime", "Results"}`. A message stays Pending for `pending_polls`
  GETs unless `processing_seconds` of simulated time passed since upload; then it settles.
Every call needs an Intune-audience token with the `update_device_health` role whose tid is the path tenant
(401 / 403 otherwise).

**Entities (DEFINED BY THIS SIMULATOR — Intune's MTD formats are not public; intune.md §2 "not public" table).**
Every entity is a JSON object with exactly the fields listed (unknown or missing field → entity error); `TenantId` must
be the message tenant; `DeviceId` is the Entra `deviceId` (not the object id) of a device in that tenant; `UserId` is
the device's registered owner (Entra user object id) — an entity for a device without a registered owner is an entity
error, as no UserId is documented for one (Design note); timestamps are ISO-8601 UTC.
- `EntityType: 1` device inventory (Fleet): `TenantId, DeviceId, DeviceName, UserId, DeviceManagementState
  ("managed"|"notManaged"), LastCheckInTime, LastUpdateTime, Os, OsVersion, EasIds (array of strings), State (int)`.
- `EntityType: 2` threat level: `TenantId, DeviceId, UserId, ThreatLevel ("secured"|"low"|"medium"|"high"),
  LastUpdateTime`. Levels are those of the "Device threat level" compliance setting
  (mtd-device-compliance-policy-create.md).
  `LastUpdateTime` orders messages (Fleet: "global timestamp indicating the order of messages"): a threat level older
  than the one already accepted for that device is ignored (counted as `stale`), not an error.
- `EntityType: 3` app inventory request (App Sync, iOS/iPadOS only — mtd-connector-enable.md): `TenantId, DeviceId,
  UserId, RequestTime`. When the message Succeeded, `Results` holds per request `{"EntityType": 3, "DeviceId",
  "AppCount", "Apps": [{"AppId", "Version", "ShortVersion", "Name", "BundleSize", "DynamicSize", "IsValidated",
  "IsManaged", "IsAdHocSigned", "IsAppStore", "IsBeta", "IsDeviceBasedVpp"}]}` (App Sync fields,
  mobile-threat-defense.md).
  Inventories are deterministic per device; about 1 device in 16 has 1,000–1,600 apps.
- `EntityType: 4` compliance (Fleet): `TenantId, DeviceId, UserId, LastUpdateTime, complianceStatus
  ("compliant"|"notCompliant")`.
A message is atomic: one invalid entity fails the whole message (`Status: Failed`, `ErrorDetail` lists
`Entity[i]: reason`) and nothing of it is applied. At most 1,000 entities per message (Design note).

**Connector status** (mobile-threat-defense.md): Not set up → Available (provisioned) → Enabled (first heartbeat
after provisioning) → Unresponsive (no heartbeat for `unresponsive_days` simulated days, default 7) → Enabled again on
heartbeat; Unavailable after deprovision (`Provisioned: 2`). Threat messages and App Sync requests are blocked in
Not set up and Unavailable ("since 2308/2309"): uploads answer 403 with an ErrorDetail. Heartbeats before provisioning
answer 400 (Design note).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from simulator.auth import CLOCK, ENTRA, WORLD, Principal, intune_error

TENANT_SERVICE = "StatelessPartnerTenantDataSyncService"
DEVICE_SERVICE = "StatelessPartnerDeviceDataSyncService"
_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_ENTITY_RE = re.compile(r"^(\w+)\(guid'(" + _GUID + r")'\)$")  # OData key syntax: Entity(guid'…') (Fleet)
REQUIRED_ROLE = "update_device_health"  # "Send device threat information to Microsoft Intune" (intune.md §1)
THREAT_LEVELS = ("secured", "low", "medium", "high")
MAX_ENTITIES = 1000

ENTITY_FIELDS: dict[int, frozenset[str]] = {
    1: frozenset({"EntityType", "TenantId", "DeviceId", "DeviceName", "UserId", "DeviceManagementState",
                  "LastCheckInTime", "LastUpdateTime", "Os", "OsVersion", "EasIds", "State"}),
    2: frozenset({"EntityType", "TenantId", "DeviceId", "UserId", "ThreatLevel", "LastUpdateTime"}),
    3: frozenset({"EntityType", "TenantId", "DeviceId", "UserId", "RequestTime"}),
    4: frozenset({"EntityType", "TenantId", "DeviceId", "UserId", "LastUpdateTime", "complianceStatus"}),
}


@dataclass
class IntuneConfig:
    unresponsive_days: float = 7.0  # "Number of days until partner is unresponsive" default (mtd-connector-enable.md)
    processing_seconds: float = 60.0
    pending_polls: int = 1
    tenant_api_versions: tuple[str, ...] = ("1.6",)  # Fleet (intune.md §2)
    device_api_versions: tuple[str, ...] = ("1.2",)  # Fleet (intune.md §2)
    app_sync_enabled: bool = True


@dataclass
class Message:
    id: str
    digest: str
    upload_time: str
    received: float
    entities: list[dict[str, Any]]
    outcome: str  # Succeeded | Failed
    error_detail: str | None
    polls: int = 0
    settled: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)
    stale: int = 0


@dataclass
class TenantState:
    tenant_id: str
    base: str = "notSetUp"  # notSetUp | available | enabled | unavailable
    provisioned: int | None = None
    enrollment_url: str | None = None
    remediation_url: str | None = None
    provisioned_at: float | None = None
    last_heartbeat: float | None = None
    heartbeat_count: int = 0
    messages: dict[str, Message] = field(default_factory=dict)
    threat_levels: dict[str, dict[str, Any]] = field(default_factory=dict)
    inventory: dict[str, dict[str, Any]] = field(default_factory=dict)
    compliance: dict[str, dict[str, Any]] = field(default_factory=dict)
    app_sync_requests: int = 0


class IntuneService:
    def __init__(self) -> None:
        self.config = IntuneConfig()
        self.tenants: dict[str, TenantState] = {}
        self._lock = threading.Lock()

    def state(self, tenant_id: str) -> TenantState:
        with self._lock:
            st = self.tenants.get(tenant_id)
            if st is None:
                st = self.tenants[tenant_id] = TenantState(tenant_id)
            return st

    def status(self, st: TenantState, now: float) -> str:
        if (st.base == "enabled" and st.last_heartbeat is not None
                and now - st.last_heartbeat > self.config.unresponsive_days * 86400):
            return "unresponsive"
        return st.base

    def configure(self, body: dict[str, Any]) -> None:
        allowed = {"unresponsive_days", "processing_seconds", "pending_polls", "tenant_api_versions",
                   "device_api_versions", "app_sync_enabled"}
        unknown = set(body) - allowed
        if unknown:
            raise AdminInputError(f"unknown field(s): {sorted(unknown)}", sorted(unknown)[0])
        c = self.config
        for name in ("unresponsive_days", "processing_seconds"):
            if name in body:
                v = body[name]
                if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
                    raise AdminInputError(f"{name} must be a number >= 0", name)
                setattr(c, name, float(v))
        if "pending_polls" in body:
            v = body["pending_polls"]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 100:
                raise AdminInputError("pending_polls must be an integer 0..100", "pending_polls")
            c.pending_polls = v
        for name in ("tenant_api_versions", "device_api_versions"):
            if name in body:
                v = body[name]
                if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
                    raise AdminInputError(f"{name} must be a non-empty list of strings", name)
                setattr(c, name, tuple(v))
        if "app_sync_enabled" in body:
            if not isinstance(body["app_sync_enabled"], bool):
                raise AdminInputError("app_sync_enabled must be a boolean", "app_sync_enabled")
            c.app_sync_enabled = body["app_sync_enabled"]

    def config_dict(self) -> dict[str, Any]:
        c = self.config
        return {"unresponsive_days": c.unresponsive_days, "processing_seconds": c.processing_seconds,
                "pending_polls": c.pending_polls, "tenant_api_versions": list(c.tenant_api_versions),
                "device_api_versions": list(c.device_api_versions), "app_sync_enabled": c.app_sync_enabled}

    def snapshot(self, tenant_id: str, now: float) -> dict[str, Any]:
        st = self.state(tenant_id)
        for m in list(st.messages.values()):
            if not m.settled and now - m.received >= self.config.processing_seconds:
                self._settle(st, m)
        return {
            "tenant_id": tenant_id,
            "status": self.status(st, now),
            "provisioned": st.provisioned,
            "partner_enrollment_url": st.enrollment_url,
            "partner_remediation_url": st.remediation_url,
            "last_heartbeat": _iso(st.last_heartbeat),
            "heartbeat_count": st.heartbeat_count,
            "threat_levels": st.threat_levels,
            "inventory_devices": len(st.inventory),
            "compliance": st.compliance,
            "app_sync_requests": st.app_sync_requests,
            "messages": {
                m.id: {"status": m.outcome if m.settled else "Pending", "outcome": m.outcome,
                       "error_detail": m.error_detail, "entities": len(m.entities), "polls": m.polls,
                       "stale": m.stale, "upload_time": m.upload_time}
                for m in st.messages.values()
            },
            "config": self.config_dict(),
        }

    # ---- settle: apply a message's effects once ----------------------------------------------------------------
    def _settle(self, st: TenantState, m: Message) -> None:
        if m.settled:
            return
        m.settled = True
        if m.outcome != "Succeeded":
            return
        for e in m.entities:
            t = e["EntityType"]
            if t == 1:
                st.inventory[e["DeviceId"]] = e
            elif t == 2:
                prev = st.threat_levels.get(e["DeviceId"])
                if prev is not None and _parse_iso(prev["LastUpdateTime"]) > _parse_iso(e["LastUpdateTime"]):
                    m.stale += 1
                    continue
                st.threat_levels[e["DeviceId"]] = {"ThreatLevel": e["ThreatLevel"], "UserId": e["UserId"],
                                                   "LastUpdateTime": e["LastUpdateTime"], "MessageId": m.id}
            elif t == 3:
                st.app_sync_requests += 1
                apps = app_inventory(e["DeviceId"])
                m.results.append({"EntityType": 3, "DeviceId": e["DeviceId"], "AppCount": len(apps), "Apps": apps})
            elif t == 4:
                st.compliance[e["DeviceId"]] = {"complianceStatus": e["complianceStatus"],
                                                "LastUpdateTime": e["LastUpdateTime"]}


class AdminInputError(ValueError):
    def __init__(self, message: str, field_name: str) -> None:
        super().__init__(message)
        self.field = field_name


INTUNE: web.AppKey[IntuneService] = web.AppKey("sim_intune", IntuneService)


# ---- helpers -------------------------------------------------------------------------------------------------------
def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    from datetime import UTC
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _parse_iso(value: Any) -> datetime:
    if not isinstance(value, str) or not value:
        raise ValueError("not an ISO-8601 string")
    v = value.strip()
    if v.endswith(("Z", "z")):
        v = v[:-1] + "+00:00"
    d = datetime.fromisoformat(v)
    if d.tzinfo is None:
        from datetime import UTC
        d = d.replace(tzinfo=UTC)
    return d


def _is_guid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
        return isinstance(value, str)
    except ValueError:
        return False


def _lookup_device(request: web.Request, tenant_id: str, device_id: str) -> tuple[bool | None, str | None, str | None]:
    """(exists, os, owner) for an Entra deviceId; exists None when the world cannot tell."""
    world = request.app.get(WORLD)
    tenant = getattr(world, "tenants", {}).get(tenant_id) if world is not None else None
    if tenant is None:
        return None, None, None
    index = getattr(tenant, "device_id_index", None)
    devices = getattr(tenant, "devices", None)
    if index is None or devices is None:
        return None, None, None
    obj_id = index.get(device_id)
    dev = devices.get(obj_id) if obj_id else None
    if dev is None:
        return False, None, None
    return True, getattr(dev, "os", None), getattr(dev, "owner", None)


def app_inventory(device_id: str) -> list[dict[str, Any]]:
    """Deterministic App Sync inventory for a device (fields from mobile-threat-defense.md App Sync)."""
    h = hashlib.sha256(device_id.encode()).digest()
    large = h[0] % 16 == 0
    count = 1000 + int.from_bytes(h[1:3], "big") % 601 if large else 15 + int.from_bytes(h[1:3], "big") % 120
    apps = []
    for i in range(count):
        d = hashlib.sha256(h + i.to_bytes(4, "big")).digest()
        vendor = _WORDS[d[0] % len(_WORDS)]
        product = _WORDS[d[1] % len(_WORDS)]
        major, minor, patch = d[2] % 20, d[3] % 50, d[4] % 10
        app_store = d[5] % 10 < 8
        apps.append({
            "AppId": f"com.{vendor}.{product}{i}",
            "Version": f"{major}.{minor}.{patch}.{int.from_bytes(d[6:8], 'big')}",
            "ShortVersion": f"{major}.{minor}.{patch}",
            "Name": f"{vendor.title()} {product.title()} {i}",
            "BundleSize": 1_000_000 + int.from_bytes(d[8:12], "big") % 400_000_000,
            "DynamicSize": int.from_bytes(d[12:15], "big") % 50_000_000,
            "IsValidated": d[15] % 10 != 0,
            "IsManaged": d[16] % 4 == 0,
            "IsAdHocSigned": (not app_store) and d[17] % 3 == 0,
            "IsAppStore": app_store,
            "IsBeta": d[18] % 25 == 0,
            "IsDeviceBasedVpp": d[19] % 8 == 0,
        })
    return apps


_WORDS = ("acme", "contoso", "fabrikam", "northwind", "tailspin", "wingtip", "litware", "adatum", "proseware",
          "woodgrove", "fourth", "coffee", "notes", "mail", "maps", "chat", "photo", "bank", "vpn", "office",
          "travel", "music", "video", "health", "shop", "news", "weather", "games", "scanner", "wallet")


def _strict(body: Any, fields: frozenset[str]) -> str | None:
    """None if body is an object with exactly these fields, else a message (strict bodies, issue 2)."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    missing = sorted(fields - set(body))
    unknown = sorted(set(body) - fields)
    if missing:
        return f"Missing required field(s): {', '.join(missing)}."
    if unknown:
        return f"Unknown field(s): {', '.join(unknown)}."
    return None


async def _json_body(request: web.Request) -> tuple[Any, web.Response | None]:
    try:
        raw = await request.read()
        return json.loads(raw), None
    except (ValueError, UnicodeDecodeError):
        return None, intune_error(400, "BadRequest", "The request body is not valid JSON.")


def _validate_entity(request: web.Request, tenant_id: str, i: int, e: Any) -> str | None:
    if not isinstance(e, dict):
        return f"Entity[{i}]: must be a JSON object."
    et = e.get("EntityType")
    if not isinstance(et, int) or isinstance(et, bool) or et not in ENTITY_FIELDS:
        return f"Entity[{i}]: EntityType must be one of {sorted(ENTITY_FIELDS)}."
    problem = _strict(e, ENTITY_FIELDS[et])
    if problem:
        return f"Entity[{i}] (EntityType {et}): {problem}"
    if e["TenantId"] != tenant_id:
        return f"Entity[{i}]: TenantId does not match the message tenant."
    if not isinstance(e["DeviceId"], str) or not _is_guid(e["DeviceId"]):
        return f"Entity[{i}]: DeviceId must be a GUID string."
    if not _is_guid(e["UserId"]):
        return f"Entity[{i}]: UserId must be a GUID string."
    for ts in ("LastUpdateTime", "LastCheckInTime", "RequestTime"):
        if ts in e:
            try:
                _parse_iso(e[ts])
            except ValueError:
                return f"Entity[{i}]: {ts} must be an ISO-8601 timestamp."
    exists, os_name, owner = _lookup_device(request, tenant_id, e["DeviceId"])
    if exists is False:
        return f"Entity[{i}]: DeviceNotFound: no Entra device with deviceId '{e['DeviceId']}' in tenant {tenant_id}."
    if exists and owner is None:
        # No public source says what UserId a device without a user carries (intune.md §2 "not public"; Fleet always
        # sends a user's object id; Intune calls such a device a "shared device", find-primary-user.md). Refusing any
        # UserId for it keeps a connector from inventing one (Design note).
        return f"Entity[{i}]: device '{e['DeviceId']}' has no registered owner, so no UserId can be accepted for it."
    if exists and owner is not None and owner != e["UserId"]:
        return f"Entity[{i}]: UserId '{e['UserId']}' is not the registered owner of device '{e['DeviceId']}'."
    if et == 1:
        if e["DeviceManagementState"] not in ("managed", "notManaged"):
            return f"Entity[{i}]: DeviceManagementState must be 'managed' or 'notManaged'."
        if not isinstance(e["EasIds"], list) or not all(isinstance(x, str) for x in e["EasIds"]):
            return f"Entity[{i}]: EasIds must be an array of strings."
        if not isinstance(e["State"], int) or isinstance(e["State"], bool):
            return f"Entity[{i}]: State must be an integer."
        for f in ("DeviceName", "Os", "OsVersion"):
            if not isinstance(e[f], str):
                return f"Entity[{i}]: {f} must be a string."
    elif et == 2:
        if e["ThreatLevel"] not in THREAT_LEVELS:
            return f"Entity[{i}]: InvalidThreatLevel: ThreatLevel must be one of {list(THREAT_LEVELS)}."
    elif et == 3:
        if not request.app[INTUNE].config.app_sync_enabled:
            return f"Entity[{i}]: App Sync is not enabled for this tenant."
        if os_name is not None and os_name not in ("iOS", "iPadOS"):
            return f"Entity[{i}]: App Sync is only available for iOS/iPadOS devices (device OS is {os_name})."
    elif et == 4 and e["complianceStatus"] not in ("compliant", "notCompliant"):
        return f"Entity[{i}]: complianceStatus must be 'compliant' or 'notCompliant'."
    return None


# ---- handler -------------------------------------------------------------------------------------------------------
async def handle(request: web.Request) -> web.Response:
    tenant_id = request.match_info["tenant"]
    service = request.match_info["service"]
    entity = request.match_info["entity"]
    principal: Principal = request["principal"]
    svc = request.app[INTUNE]
    if REQUIRED_ROLE not in principal.roles:
        # Partner calls need the Intune API application role update_device_health (intune.md §1/§3).
        return intune_error(403, "Forbidden",
                            f"The access token does not contain the required role '{REQUIRED_ROLE}'.")
    if principal.tenant_id != tenant_id:
        return intune_error(403, "Forbidden", "The access token was issued for a different tenant.")
    if not request.app[ENTRA].tenant_exists(tenant_id):
        return intune_error(404, "NotFound", f"Tenant {tenant_id} not found.")
    m = _ENTITY_RE.match(entity)
    if m is None or service not in (TENANT_SERVICE, DEVICE_SERVICE):
        return intune_error(404, "NotFound", f"Resource '{service}/{entity}' not found.")
    name, key = m.group(1), m.group(2).lower()
    routes = {
        (TENANT_SERVICE, "PartnerTenants", "PUT"): _provision,
        (TENANT_SERVICE, "PartnerTenantHeartbeat", "PUT"): _heartbeat,
        (DEVICE_SERVICE, "DataUploadMessages", "PUT"): _upload,
        (DEVICE_SERVICE, "DataUploadMessages", "GET"): _result,
    }
    fn = routes.get((service, name, request.method))
    if fn is None:
        if any(k[:2] == (service, name) for k in routes):
            return intune_error(405, "MethodNotAllowed", f"{request.method} is not supported on {name}.")
        return intune_error(404, "NotFound", f"Resource '{service}/{entity}' not found.")
    versions = svc.config.tenant_api_versions if service == TENANT_SERVICE else svc.config.device_api_versions
    if request.query.get("api-version") not in versions:
        return intune_error(400, "BadRequest",
                            f"Unsupported or missing api-version; supported: {', '.join(versions)}.")
    return await fn(request, svc, tenant_id, key)


async def _provision(request: web.Request, svc: IntuneService, tenant_id: str, key: str) -> web.Response:
    if key != tenant_id.lower():
        return intune_error(400, "BadRequest", "The tenant key in the URL does not match the tenant.")
    body, bad = await _json_body(request)
    if bad:
        return bad
    problem = _strict(body, frozenset({"Provisioned", "PartnerEnrollmentUrl", "PartnerRemediationUrl"}))
    if problem:
        return intune_error(400, "BadRequest", problem)
    prov = body["Provisioned"]
    if not isinstance(prov, int) or isinstance(prov, bool) or prov not in (1, 2):
        return intune_error(400, "BadRequest", "Provisioned must be 1 (provision) or 2 (deprovision).")
    for f in ("PartnerEnrollmentUrl", "PartnerRemediationUrl"):
        if not isinstance(body[f], str) or (prov == 1 and not body[f].startswith("https://")):
            return intune_error(400, "BadRequest", f"{f} must be an https URL.")
    now = request.app[CLOCK].now()
    st = svc.state(tenant_id)
    st.provisioned = prov
    st.enrollment_url, st.remediation_url = body["PartnerEnrollmentUrl"], body["PartnerRemediationUrl"]
    if prov == 1:
        st.provisioned_at = now
        st.base = "available" if st.base in ("notSetUp", "unavailable") else st.base
    else:
        st.base = "unavailable"
    # Response example from Fleet (intune.md §2).
    return web.json_response({"Key": tenant_id, "ContextId": tenant_id, "Provisioned": prov, "HttpStatusCode": 200,
                              "ErrorDetail": None})


async def _heartbeat(request: web.Request, svc: IntuneService, tenant_id: str, key: str) -> web.Response:
    if key != tenant_id.lower():
        return intune_error(400, "BadRequest", "The tenant key in the URL does not match the tenant.")
    body, bad = await _json_body(request)
    if bad:
        return bad
    problem = _strict(body, frozenset({"Timestamp"}))
    if problem:
        return intune_error(400, "BadRequest", problem)
    try:
        _parse_iso(body["Timestamp"])
    except ValueError:
        return intune_error(400, "BadRequest", "Timestamp must be an ISO-8601 timestamp.")
    st = svc.state(tenant_id)
    if st.base in ("notSetUp", "unavailable"):
        return intune_error(400, "PartnerTenantNotProvisioned",
                            "The partner tenant is not provisioned; provision it (PartnerTenants) first.")
    now = request.app[CLOCK].now()
    st.last_heartbeat = now
    st.heartbeat_count += 1
    st.base = "enabled"
    # Heartbeat response fields from the older Jamf write-up (intune.md §2); Fleet reads ResyncTimestamp only.
    return web.json_response({"Key": tenant_id, "TenantId": tenant_id, "ClientType": "MobileThreatDefense",
                              "Timestamp": body["Timestamp"], "ResyncTimestamp": None, "HttpStatusCode": 200,
                              "ErrorDetail": None, "MessageErrors": None})


async def _upload(request: web.Request, svc: IntuneService, tenant_id: str, key: str) -> web.Response:
    body, bad = await _json_body(request)
    if bad:
        return bad
    problem = _strict(body, frozenset({"TenantId", "UploadTime", "Content"}))
    if problem:
        return intune_error(400, "BadRequest", problem)
    if body["TenantId"] != tenant_id:
        return intune_error(400, "BadRequest", "TenantId does not match the tenant of the service URL.")
    try:
        _parse_iso(body["UploadTime"])
    except ValueError:
        return intune_error(400, "BadRequest", "UploadTime must be an ISO-8601 timestamp.")
    if not isinstance(body["Content"], str):
        # Fleet sends Content as a JSON *string* of the entity array (intune.md §2).
        return intune_error(400, "BadRequest", "Content must be a string containing a JSON array of entities.")
    try:
        entities = json.loads(body["Content"])
    except ValueError:
        return intune_error(400, "BadRequest", "Content is not valid JSON.")
    if not isinstance(entities, list) or not entities:
        return intune_error(400, "BadRequest", "Content must be a non-empty JSON array of entities.")
    if len(entities) > MAX_ENTITIES:
        return intune_error(400, "BadRequest", f"At most {MAX_ENTITIES} entities per message.")
    st = svc.state(tenant_id)
    now = request.app[CLOCK].now()
    status = svc.status(st, now)
    if status in ("notSetUp", "unavailable"):
        # Threat messages and App Sync requests are blocked for Not Set Up / Unavailable (mobile-threat-defense.md).
        label = "Not Set Up" if status == "notSetUp" else "Unavailable"
        return intune_error(403, "PartnerConnectorNotEnabled",
                            f"The Mobile Threat Defense connector for tenant {tenant_id} is {label}; "
                            "threat messages and App Sync requests are blocked.")
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    existing = st.messages.get(key)
    if existing is not None:
        if existing.digest != digest:
            return intune_error(409, "Conflict", f"Message {key} was already uploaded with a different body.")
        return web.json_response({"TenantId": tenant_id, "MessageId": key, "ErrorCode": 0, "ErrorDetail": None})
    errors = [p for i, e in enumerate(entities) if (p := _validate_entity(request, tenant_id, i, e))]
    msg = Message(id=key, digest=digest, upload_time=body["UploadTime"], received=now, entities=entities,
                  outcome="Failed" if errors else "Succeeded",
                  error_detail="; ".join(errors[:20]) + (f"; and {len(errors) - 20} more" if len(errors) > 20 else "")
                  if errors else None)
    st.messages[key] = msg
    return web.json_response({"TenantId": tenant_id, "MessageId": key, "ErrorCode": 0, "ErrorDetail": None})


async def _result(request: web.Request, svc: IntuneService, tenant_id: str, key: str) -> web.Response:
    st = svc.state(tenant_id)
    msg = st.messages.get(key)
    if msg is None:
        return intune_error(404, "NotFound", f"Message {key} not found.")
    now = request.app[CLOCK].now()
    if not msg.settled and msg.polls < svc.config.pending_polls and now - msg.received < svc.config.processing_seconds:
        msg.polls += 1
        status = "Pending"
    else:
        msg.polls += 1
        svc._settle(st, msg)
        status = msg.outcome
    out: dict[str, Any] = {"MessageId": key, "TenantId": tenant_id, "Status": status,
                           "ErrorDetail": msg.error_detail if status == "Failed" else None,
                           "UploadTime": msg.upload_time, "Results": msg.results if status == "Succeeded" else []}
    return web.json_response(out)


def register(app: web.Application) -> None:
    app[INTUNE] = IntuneService()
    for method in ("GET", "PUT", "POST", "PATCH", "DELETE"):
        app.router.add_route(method, "/intune/{tenant}/{service}/{entity}", handle)
