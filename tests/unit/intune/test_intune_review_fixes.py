"""Pure rules fixed after review: detectedAt bounds, control characters, backoff overflow, App Sync result shapes,
counters that never fail their caller."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from shared_code.adapters.memory_tenant_store import MemoryTenantRepository
from shared_code.errors import ConflictError, ValidationError
from shared_code.intune.heartbeat import MAX_BACKOFF_SECONDS, HeartbeatService
from shared_code.intune.inventory import apps_from_result, generation_of
from shared_code.intune.status import ACTIVITY, HEARTBEAT, ActivityCounters, parse_iso
from shared_code.intune.threat import validate_threat_body
from shared_code.intune.uploads import UploadMessage
from shared_code.tenant_config import parse_tenant_body
from shared_code.tenants import TenantConfig

TID = "11111111-1111-1111-1111-111111111111"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()


def _threat(detected: Any) -> dict[str, Any]:
    return validate_threat_body({"level": "low", "detectedAt": detected}, now=NOW)


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-30",  # date only
        "2026-11-30T10:00:00",  # naive: no offset
        "2026-11-30T10:00Z",  # no seconds (RFC 3339 requires them)
        "2026-11-30 10:00:00Z",  # space instead of T
        "20261130T100000Z",  # ISO basic format
        "9999-12-31T23:59:59Z",  # far future: would pin the device's level at Intune
        "2026-11-30T12:06:00Z",  # six minutes ahead
        "2026-11-30T12:00:00+14:00\n",
        "2026-02-30T10:00:00Z",  # no such day
        20261130,
    ],
)
def test_detected_at_must_be_rfc3339_with_offset_and_not_in_the_future(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        _threat(value)
    assert info.value.field == "detectedAt"


@pytest.mark.parametrize(
    "value",
    ["2026-11-30T10:00:00Z", "2026-11-30T10:00:00.123456789Z", "2026-11-30t13:04:00+01:00",
     "2026-11-30T12:04:59Z", "2020-01-01T00:00:00-08:00"],
)
def test_detected_at_accepts_offsets_fractions_and_small_clock_skew(value: str) -> None:
    assert _threat(value)["detectedAt"] == value


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"partnerEnrollmentUrl": "https://mtd.example/enroll\r\nX-Injected: 1"}, "partnerEnrollmentUrl"),
        ({"partnerRemediationUrl": "https://mtd.example/\x00fix"}, "partnerRemediationUrl"),
        ({"partnerRemediationUrl": "https://mtd.example/\tfix"}, "partnerRemediationUrl"),
        ({"enrollmentGroups": ["MTD Users", "Execs\x07"]}, "enrollmentGroups[1]"),
        ({"enrollmentGroups": ["MTD\u0085Users"]}, "enrollmentGroups[0]"),
    ],
)
def test_control_characters_are_refused_naming_the_field(patch: dict[str, Any], field: str) -> None:
    body = {"enrollmentGroups": ["MTD Users"]} | patch
    with pytest.raises(ValidationError) as info:
        parse_tenant_body(TID, body)
    assert info.value.field == field


async def test_heartbeat_backoff_stays_finite_after_thousands_of_failures() -> None:
    tenants = MemoryTenantRepository()
    await tenants.put_config(TenantConfig(tenant_id=TID, enrollment_groups=("A",)))
    await tenants.update_status(TID, HEARTBEAT, {"consecutiveFailures": 5000})
    record = await tenants.get(TID)
    assert record is not None
    none = cast(Any, None)
    service = HeartbeatService(tenants=tenants, discovery=none, intune=none, provisioning=none,
                               counters=ActivityCounters(tenants), concurrency=1, now=lambda: NOW)
    # 2 ** 5000 as a float overflowed before the exponent was capped.
    assert await service._failed(record, NOW, 5000, "boom", "failing") == "failed"
    section = (await tenants.get(TID)).status[HEARTBEAT]  # type: ignore[union-attr]
    assert section["consecutiveFailures"] == 5001
    assert parse_iso(section["nextAttemptAt"]) == NOW + MAX_BACKOFF_SECONDS


def test_app_sync_result_shapes() -> None:
    dev = "AAAAAAAA-0000-0000-0000-000000000001"
    good = {"DeviceId": dev.lower(), "Apps": [{"AppId": "com.a", "IsManaged": True}, "junk", 7]}
    other = {"DeviceId": "someone-else", "Apps": [{"AppId": "com.b"}]}
    result = {"Results": [good, other, "junk", None, {"DeviceId": dev, "Apps": "not-a-list"}]}
    assert apps_from_result(result, dev) == [{"appId": "com.a", "managed": True}]
    assert apps_from_result({"Results": None}, dev) == []
    assert apps_from_result({}, dev) == []
    with pytest.raises(ValueError, match="not a list"):
        apps_from_result({"Results": "not-a-list"}, dev)


def test_inventory_generations_sort_by_request_time() -> None:
    def message(upload_time: str, mid: str) -> UploadMessage:
        return UploadMessage(TID, mid, "inventory", "dev", upload_time, [])

    early = generation_of(message("2026-11-30T09:59:59.999Z", "ffffffff-0000-0000-0000-000000000000"))
    late = generation_of(message("2026-11-30T10:00:00.000Z", "00000000-0000-0000-0000-000000000000"))
    assert early < late
    assert generation_of(message("2026-11-30T10:00:00.000Z", "x")) == generation_of(
        message("2026-11-30T10:00:00.000Z", "x")
    )
    assert "|" not in late and "/" not in late and "#" not in late and "?" not in late


async def test_concurrent_counter_bumps_all_land() -> None:
    tenants = MemoryTenantRepository()
    await tenants.put_config(TenantConfig(tenant_id=TID, enrollment_groups=("A",)))
    counters = ActivityCounters(tenants)
    await asyncio.gather(*(counters.bump(TID, "threatReportsAccepted") for _ in range(20)))
    record = await tenants.get(TID)
    assert record is not None and record.status[ACTIVITY]["threatReportsAccepted"] == 20
    assert counters.failures == 0


class _Unwritable(MemoryTenantRepository):
    async def update_status(self, tenant_id: str, section: str, patch: dict[str, Any]) -> None:
        if section == ACTIVITY:
            raise ConflictError("kept conflicting")
        await super().update_status(tenant_id, section, patch)

    async def increment(self, tenant_id: str, section: str, field: str, by: int = 1) -> int:
        raise ConflictError("kept conflicting")


async def test_a_counter_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    counters = ActivityCounters(_Unwritable())
    with caplog.at_level(logging.WARNING, logger="connector.intune.status"):
        await counters.bump(TID, "heartbeatsSent")
    assert counters.failures == 1 and counters.process_totals == {"heartbeatsSent": 1}
    assert "heartbeatsSent" in caplog.text


def test_now_bounds_use_the_given_clock() -> None:
    later = (datetime.fromtimestamp(NOW, UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    with pytest.raises(ValidationError):
        _threat(later)
    assert validate_threat_body({"level": "low", "detectedAt": later}, now=NOW + 86400)["detectedAt"] == later
