"""Validation at the HTTP edge: tenant PUT bodies and threat reports (400 problem+json names the field)."""

from __future__ import annotations

from typing import Any

import pytest

from shared_code.errors import ValidationError
from shared_code.intune.tenant_api import validate_tenant_id
from shared_code.intune.threat import validate_threat_body
from shared_code.tenant_config import config_document, parse_tenant_body

TID = "11111111-1111-1111-1111-111111111111"
GOOD: dict[str, Any] = {
    "enrollmentGroups": ["MTD Users", "Execs"],
    "platforms": ["iOS", "Android"],
    "pollIntervalMinutes": 10,
    "heartbeatIntervalMinutes": 30,
    "guard": {"maxDeactivations": 50, "maxPercent": 10},
    "roleMappings": [{"groupId": "22222222-2222-2222-2222-222222222222", "role": "Console.Manage"}],
    "partnerEnrollmentUrl": "https://mtd.example/enroll",
}


def test_good_body_round_trips() -> None:
    config = parse_tenant_body(TID, GOOD)
    assert config.enrollment_groups == ("MTD Users", "Execs")
    assert config.guard_max_percent == 10.0
    doc = config_document(config)
    assert doc["roleMappings"] == GOOD["roleMappings"]
    assert parse_tenant_body(TID, {k: v for k, v in doc.items() if v is not None}) == config


def test_defaults() -> None:
    config = parse_tenant_body(TID, {"enrollmentGroups": ["A"]})
    assert config.platforms == ("iOS", "iPadOS", "Android")
    assert (config.poll_interval_minutes, config.heartbeat_interval_minutes) == (5, 15)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"enrollmentGroup": ["x"]}, "enrollmentGroup"),
        ({"enrollmentGroups": []}, "enrollmentGroups"),
        ({"enrollmentGroups": [f"g{i}" for i in range(51)]}, "enrollmentGroups"),
        ({"enrollmentGroups": ["ok", "x" * 257]}, "enrollmentGroups[1]"),
        ({"enrollmentGroups": ["ok", "  "]}, "enrollmentGroups[1]"),
        ({"enrollmentGroups": ["a", "a"]}, "enrollmentGroups[1]"),
        ({"enrollmentGroups": "MTD Users"}, "enrollmentGroups"),
        ({"platforms": ["iOS", "Symbian"]}, "platforms[1]"),
        ({"platforms": []}, "platforms"),
        ({"platforms": ["iOS", "iOS"]}, "platforms[1]"),
        ({"pollIntervalMinutes": 0}, "pollIntervalMinutes"),
        ({"pollIntervalMinutes": "5"}, "pollIntervalMinutes"),
        ({"heartbeatIntervalMinutes": True}, "heartbeatIntervalMinutes"),
        ({"guard": {"maxPercent": 101}}, "guard.maxPercent"),
        ({"guard": {"maxDeactivations": -1}}, "guard.maxDeactivations"),
        ({"guard": {"maxCount": 1}}, "guard.maxCount"),
        ({"guard": 5}, "guard"),
        ({"roleMappings": [{"groupId": "nope", "role": "Console.Read"}]}, "roleMappings[0].groupId"),
        ({"roleMappings": [{"groupId": TID, "role": ""}]}, "roleMappings[0].role"),
        ({"roleMappings": [{"groupId": TID, "role": "R", "x": 1}]}, "roleMappings[0].x"),
        ({"partnerEnrollmentUrl": "http://insecure.example"}, "partnerEnrollmentUrl"),
        ({"partnerRemediationUrl": 7}, "partnerRemediationUrl"),
        ({"keepDisabledUsers": "yes"}, "keepDisabledUsers"),
    ],
)
def test_bad_tenant_bodies_name_the_field(patch: dict[str, Any], field: str) -> None:
    body = {k: v for k, v in GOOD.items() if k not in patch} | patch
    with pytest.raises(ValidationError) as info:
        parse_tenant_body(TID, body)
    assert info.value.field == field


def test_tenant_id_must_be_a_guid() -> None:
    assert validate_tenant_id(TID.upper()) == TID
    with pytest.raises(ValidationError) as info:
        validate_tenant_id("contoso.onmicrosoft.com")
    assert info.value.field == "tenantId"


def test_threat_body() -> None:
    ok = validate_threat_body({"level": "high", "detectedAt": "2026-01-01T00:00:00Z", "threats": ["jailbreak"]})
    assert ok["level"] == "high" and ok["idempotencyKey"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"level": "critical", "detectedAt": "2026-01-01T00:00:00Z"}, "level"),
        ({"detectedAt": "2026-01-01T00:00:00Z"}, "level"),
        ({"level": "low", "detectedAt": "yesterday"}, "detectedAt"),
        ({"level": "low"}, "detectedAt"),
        ({"level": "low", "detectedAt": "2026-01-01T00:00:00Z", "threats": "x"}, "threats"),
        ({"level": "low", "detectedAt": "2026-01-01T00:00:00Z", "threats": [1]}, "threats[0]"),
        ({"level": "low", "detectedAt": "2026-01-01T00:00:00Z", "threats": ["x" * 3000]}, "threats[0]"),
        ({"level": "low", "detectedAt": "2026-01-01T00:00:00Z", "idempotencyKey": ""}, "idempotencyKey"),
        ({"level": "low", "detectedAt": "2026-01-01T00:00:00Z", "severity": 1}, "severity"),
    ],
)
def test_bad_threat_bodies_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_threat_body(body)
    assert info.value.field == field


def test_integral_floats_count_as_integers() -> None:
    # JSON Schema's "integer" includes 33.0; the OpenAPI document promises what JSON Schema means.
    config = parse_tenant_body(TID, {"enrollmentGroups": ["A"], "pollIntervalMinutes": 33.0,
                                     "guard": {"maxDeactivations": 7.0}})
    assert (config.poll_interval_minutes, config.guard_max_deactivations) == (33, 7)
    with pytest.raises(ValidationError):
        parse_tenant_body(TID, {"enrollmentGroups": ["A"], "pollIntervalMinutes": 33.5})
