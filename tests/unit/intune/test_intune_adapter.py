"""Intune status → error taxonomy, heartbeat scheduling, and the JSON packing that keeps rows under Table limits."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from shared_code.adapters.intune import (
    IntuneConnectorStateError,
    IntuneNotFoundError,
    IntuneNotProvisionedError,
    IntuneUnauthorizedError,
    raise_for_intune,
)
from shared_code.adapters.tenant_store import PROPERTY_CHARS, pack_json, unpack_json
from shared_code.errors import ConflictError, FatalError, PermissionMissingError, RetriableError
from shared_code.intune.heartbeat import HeartbeatService
from shared_code.intune.status import iso
from shared_code.permissions import call
from shared_code.tenants import TenantConfig, TenantRecord


def _response(status: int, code: str = "", detail: str = "") -> httpx.Response:
    body = {"odata.error": {"code": code, "message": {"lang": "en-US", "value": detail}}, "ErrorDetail": detail}
    return httpx.Response(status, content=json.dumps(body).encode())


@pytest.mark.parametrize(
    ("status", "code", "detail", "expected"),
    [
        (401, "Unauthorized", "", IntuneUnauthorizedError),
        (403, "PartnerConnectorNotEnabled", "connector for tenant x is Not Set Up; blocked", IntuneConnectorStateError),
        (403, "Forbidden", "missing role", PermissionMissingError),
        (404, "NotFound", "", IntuneNotFoundError),
        (400, "PartnerTenantNotProvisioned", "provision first", IntuneNotProvisionedError),
        (409, "Conflict", "other body", ConflictError),
        (503, "", "", RetriableError),
        (429, "", "", RetriableError),
        (400, "BadRequest", "Content must be a string", FatalError),
    ],
)
def test_status_mapping(status: int, code: str, detail: str, expected: type[Exception]) -> None:
    with pytest.raises(expected) as info:
        raise_for_intune(_response(status, code, detail), api_call=call("intune.upload_threat_level"))
    if isinstance(info.value, PermissionMissingError):
        assert info.value.permission == "update_device_health"
    if isinstance(info.value, IntuneConnectorStateError):
        assert info.value.state == "notSetUp"


def test_unavailable_state_is_recognised() -> None:
    with pytest.raises(IntuneConnectorStateError) as info:
        raise_for_intune(_response(403, "PartnerConnectorNotEnabled", "connector is Unavailable"),
                         api_call=call("intune.upload_threat_level"))
    assert info.value.state == "unavailable"


def test_2xx_passes() -> None:
    raise_for_intune(httpx.Response(200, content=b"{}"), api_call=call("intune.partner_tenants"))


def _record(**heartbeat: Any) -> TenantRecord:
    config = TenantConfig("t", ("g",), heartbeat_interval_minutes=15)
    return TenantRecord(config=config, status={"heartbeat": heartbeat})


def test_heartbeat_due_rules() -> None:
    service = HeartbeatService.__new__(HeartbeatService)
    now = 1_800_000_000.0
    assert service.due(_record(), now)
    assert not service.due(_record(lastSuccessAt=iso(now - 5 * 60)), now)
    assert service.due(_record(lastSuccessAt=iso(now - 14 * 60)), now), "within timer slack counts as due"
    assert service.due(_record(lastSuccessAt=iso(now - 16 * 60)), now)
    assert not service.due(_record(nextAttemptAt=iso(now + 60)), now), "backoff holds the tenant"
    assert service.due(_record(nextAttemptAt=iso(now - 1)), now)


def test_pack_json_splits_under_the_property_limit() -> None:
    value = {"items": ["é" * 100 + str(i) for i in range(200)]}  # non-ASCII is escaped, so chars = UTF-16 units
    packed = pack_json(value)
    assert len(packed) > 1
    assert all(len(v) <= PROPERTY_CHARS and v.isascii() for v in packed.values())
    assert unpack_json(packed) == value
    with pytest.raises(ValueError):
        pack_json({"x": "y" * (PROPERTY_CHARS * 16)})
