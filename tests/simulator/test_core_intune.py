"""Intune partner services: connector state machine with simulated time, strict bodies, uploads and results.

Uses a private simulator because it advances the simulated clock (shared state).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from simulator.intune import app_inventory
from tests.simulator.conftest import SimHandle

INTUNE = "https://api.manage.microsoft.com//.default"
NOW = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def env(private_sim: Any) -> dict[str, Any]:
    sim: SimHandle = private_sim(scenario="small", tenants=2, seed=11)
    tid = sim.tenant_ids[0]
    groups = sim.info["tenants"][0]["enrollment_groups"]
    truth = sim.admin("GET", f"/_sim/tenants/{tid}/truth",
                      params={"groups": groups, "platforms": "iOS,iPadOS,Android"}).json()
    devices = truth["devices"]
    ios = next(d for d in devices if d["operatingSystem"] in ("iOS", "iPadOS"))
    android = next(d for d in devices if d["operatingSystem"] == "Android")
    return {"sim": sim, "tid": tid, "token": sim.app_token(tid, INTUNE), "ios": ios, "android": android,
            "tenant_url": f"/intune/{tid}/StatelessPartnerTenantDataSyncService",
            "device_url": f"/intune/{tid}/StatelessPartnerDeviceDataSyncService"}


def provision(env: dict[str, Any], value: int = 1) -> Any:
    body = {"Provisioned": value, "PartnerEnrollmentUrl": "https://mtd.example/enroll",
            "PartnerRemediationUrl": "https://mtd.example/remediate"}
    return env["sim"].put(f"{env['tenant_url']}/PartnerTenants(guid'{env['tid']}')?api-version=1.6", env["token"], body)


def heartbeat(env: dict[str, Any], body: Any = None) -> Any:
    return env["sim"].put(f"{env['tenant_url']}/PartnerTenantHeartbeat(guid'{env['tid']}')?api-version=1.6",
                          env["token"], body if body is not None else {"Timestamp": NOW})


def upload(env: dict[str, Any], entities: list[dict[str, Any]], msg: str | None = None,
           body: Any = None) -> tuple[str, Any]:
    msg = msg or str(uuid.uuid4())
    payload = body if body is not None else {"TenantId": env["tid"], "UploadTime": NOW,
                                             "Content": json.dumps(entities)}
    return msg, env["sim"].put(f"{env['device_url']}/DataUploadMessages(guid'{msg}')?api-version=1.2",
                               env["token"], payload)


def result(env: dict[str, Any], msg: str) -> Any:
    return env["sim"].get(f"{env['device_url']}/DataUploadMessages(guid'{msg}')?api-version=1.2", env["token"])


def threat(env: dict[str, Any], device: dict[str, Any], level: str, when: str = NOW) -> dict[str, Any]:
    return {"EntityType": 2, "TenantId": env["tid"], "DeviceId": device["deviceId"], "UserId": device["ownerId"],
            "ThreatLevel": level, "LastUpdateTime": when}


def state(env: dict[str, Any]) -> dict[str, Any]:
    return env["sim"].admin("GET", f"/_sim/intune/{env['tid']}").json()  # type: ignore[no-any-return]


def advance(env: dict[str, Any], seconds: float) -> None:
    assert env["sim"].admin("POST", "/_sim/clock/advance", {"seconds": seconds}).status_code == 200


def test_01_not_set_up_blocks_uploads(env: dict[str, Any]) -> None:
    assert state(env)["status"] == "notSetUp"
    _, r = upload(env, [threat(env, env["ios"], "low")])
    assert r.status_code == 403 and "Not Set Up" in r.json()["ErrorDetail"]
    assert heartbeat(env).status_code == 400  # heartbeat before provisioning


def test_02_auth_rules(env: dict[str, Any]) -> None:
    sim = env["sim"]
    url = f"{env['tenant_url']}/PartnerTenants(guid'{env['tid']}')?api-version=1.6"
    assert sim.http.put(sim.base_url + url, json={}).status_code == 401
    graph_token = sim.app_token(env["tid"])  # wrong audience
    assert sim.put(url, graph_token, {}).status_code == 401
    other = sim.tenant_ids[1]
    other_token = sim.app_token(other, INTUNE)  # token of another tenant
    assert sim.put(url, other_token, {}).status_code == 403
    sim.admin("POST", "/_sim/consent", {"tenant_id": other, "app_id": sim.connector_id, "roles": ["User.Read.All"]})
    no_role = sim.app_token(other, INTUNE, cache=False)
    r = sim.put(f"/intune/{other}/StatelessPartnerTenantDataSyncService/PartnerTenants(guid'{other}')?api-version=1.6",
                no_role, {})
    assert r.status_code == 403 and "update_device_health" in r.json()["ErrorDetail"]


@pytest.mark.parametrize("body", [
    {"Provisioned": 1, "PartnerEnrollmentUrl": "https://a"},
    {"Provisioned": 1, "PartnerEnrollmentUrl": "https://a", "PartnerRemediationUrl": "https://b", "Extra": 1},
    {"Provisioned": 3, "PartnerEnrollmentUrl": "https://a", "PartnerRemediationUrl": "https://b"},
    {"Provisioned": True, "PartnerEnrollmentUrl": "https://a", "PartnerRemediationUrl": "https://b"},
    [1, 2],
])
def test_03_provision_strict_body(env: dict[str, Any], body: Any) -> None:
    r = env["sim"].put(f"{env['tenant_url']}/PartnerTenants(guid'{env['tid']}')?api-version=1.6", env["token"], body)
    assert r.status_code == 400 and r.json()["ErrorDetail"]


def test_04_wrong_api_version_and_key(env: dict[str, Any]) -> None:
    sim = env["sim"]
    body = {"Provisioned": 1, "PartnerEnrollmentUrl": "https://a", "PartnerRemediationUrl": "https://b"}
    r = sim.put(f"{env['tenant_url']}/PartnerTenants(guid'{env['tid']}')?api-version=1.0", env["token"], body)
    assert r.status_code == 400 and "api-version" in r.json()["ErrorDetail"]
    r = sim.put(f"{env['tenant_url']}/PartnerTenants(guid'{uuid.uuid4()}')?api-version=1.6", env["token"], body)
    assert r.status_code == 400
    r = sim.put(f"{env['tenant_url']}/Nope(guid'{env['tid']}')?api-version=1.6", env["token"], body)
    assert r.status_code == 404


def test_05_provision_then_heartbeat_enables(env: dict[str, Any]) -> None:
    r = provision(env)
    assert r.status_code == 200
    assert r.json() == {"Key": env["tid"], "ContextId": env["tid"], "Provisioned": 1, "HttpStatusCode": 200,
                        "ErrorDetail": None}
    assert state(env)["status"] == "available"
    for bad in ({}, {"Timestamp": "yesterday"}, {"Timestamp": NOW, "More": 1}):
        assert heartbeat(env, bad).status_code == 400
    r = heartbeat(env)
    assert r.status_code == 200 and r.json()["ResyncTimestamp"] is None
    s = state(env)
    assert s["status"] == "enabled" and s["heartbeat_count"] == 1 and s["last_heartbeat"]


def test_06_unresponsive_after_days_and_back(env: dict[str, Any]) -> None:
    advance(env, 7 * 86400 - 60)
    assert state(env)["status"] == "enabled"
    advance(env, 120)
    assert state(env)["status"] == "unresponsive"
    _, r = upload(env, [threat(env, env["ios"], "secured")])
    assert r.status_code == 200  # Unresponsive does not block messages
    assert heartbeat(env).status_code == 200
    assert state(env)["status"] == "enabled"
    r = env["sim"].admin("POST", "/_sim/intune/config", {"unresponsive_days": 1})
    assert r.status_code == 200
    advance(env, 86400 + 1)
    assert state(env)["status"] == "unresponsive"
    heartbeat(env)
    env["sim"].admin("POST", "/_sim/intune/config", {"unresponsive_days": 7})


def test_07_threat_level_pending_then_succeeded(env: dict[str, Any]) -> None:
    msg, r = upload(env, [threat(env, env["ios"], "high", "2026-01-02T00:00:00Z")])
    assert r.status_code == 200 and r.json()["MessageId"] == msg
    first = result(env, msg).json()
    assert first["Status"] == "Pending"
    second = result(env, msg).json()
    assert second["Status"] == "Succeeded" and second["ErrorDetail"] is None
    levels = state(env)["threat_levels"]
    assert levels[env["ios"]["deviceId"]]["ThreatLevel"] == "high"
    # An older LastUpdateTime does not overwrite the newer level (ordering by LastUpdateTime).
    msg2, _ = upload(env, [threat(env, env["ios"], "low", "2026-01-01T12:00:00Z")])
    advance(env, 61)  # processing time elapsed: settles without waiting for polls
    assert result(env, msg2).json()["Status"] == "Succeeded"
    assert state(env)["threat_levels"][env["ios"]["deviceId"]]["ThreatLevel"] == "high"
    assert state(env)["messages"][msg2]["stale"] == 1


def test_08_idempotent_and_conflict(env: dict[str, Any]) -> None:
    entities = [threat(env, env["android"], "medium")]
    msg, r1 = upload(env, entities)
    _, r2 = upload(env, entities, msg=msg)
    assert r1.status_code == r2.status_code == 200
    _, r3 = upload(env, [threat(env, env["android"], "low")], msg=msg)
    assert r3.status_code == 409


def test_09_invalid_entities_fail_the_message(env: dict[str, Any]) -> None:
    unknown = dict(threat(env, env["ios"], "low"), DeviceId=str(uuid.uuid4()))
    bad_level = threat(env, env["ios"], "critical")
    wrong_owner = dict(threat(env, env["ios"], "low"), UserId=str(uuid.uuid4()))
    extra = dict(threat(env, env["ios"], "low"), Foo=1)
    kiosk = {"deviceId": str(uuid.uuid4()), "ownerId": str(uuid.uuid4())}  # a shared device: no owner
    added = env["sim"].admin("POST", f"/_sim/tenants/{env['tid']}/mutations",
                             {"op": "add_device", "operatingSystem": "iOS", "deviceId": kiosk["deviceId"]})
    assert added.status_code == 200, added.text
    ownerless = threat(env, kiosk, "low")
    for entity, needle in ((unknown, "DeviceNotFound"), (bad_level, "InvalidThreatLevel"),
                           (wrong_owner, "registered owner"), (extra, "Unknown field"),
                           (ownerless, "has no registered owner")):
        msg, r = upload(env, [threat(env, env["android"], "secured"), entity])
        assert r.status_code == 200
        result(env, msg)
        out = result(env, msg).json()
        assert out["Status"] == "Failed" and needle in out["ErrorDetail"] and "Entity[1]" in out["ErrorDetail"]


@pytest.mark.parametrize("body", [
    {"TenantId": "x", "UploadTime": NOW},
    {"TenantId": "00000000-0000-0000-0000-000000000000", "UploadTime": NOW, "Content": "[]"},
    {"UploadTime": NOW, "Content": "[]", "TenantId": None, "X": 1},
])
def test_10_upload_strict_body(env: dict[str, Any], body: dict[str, Any]) -> None:
    _, r = upload(env, [], body=body)
    assert r.status_code == 400


def test_11_upload_content_must_be_json_string(env: dict[str, Any]) -> None:
    for content in ([{"EntityType": 2}], "not json", "[]", "{}"):
        _, r = upload(env, [], body={"TenantId": env["tid"], "UploadTime": NOW, "Content": content})
        assert r.status_code == 400, content


def test_12_app_inventory_request(env: dict[str, Any]) -> None:
    ios, android = env["ios"], env["android"]
    req = {"EntityType": 3, "TenantId": env["tid"], "DeviceId": ios["deviceId"], "UserId": ios["ownerId"],
           "RequestTime": NOW}
    msg, _ = upload(env, [req])
    result(env, msg)
    out = result(env, msg).json()
    assert out["Status"] == "Succeeded"
    apps = out["Results"][0]["Apps"]
    assert out["Results"][0]["AppCount"] == len(apps) == len(app_inventory(ios["deviceId"]))
    assert set(apps[0]) == {"AppId", "Version", "ShortVersion", "Name", "BundleSize", "DynamicSize", "IsValidated",
                            "IsManaged", "IsAdHocSigned", "IsAppStore", "IsBeta", "IsDeviceBasedVpp"}
    not_ios = dict(req, DeviceId=android["deviceId"], UserId=android["ownerId"])
    msg, _ = upload(env, [not_ios])
    result(env, msg)
    assert "iOS/iPadOS" in result(env, msg).json()["ErrorDetail"]


def test_13_inventories_are_deterministic_and_some_large() -> None:
    ids = [str(uuid.UUID(int=i * 7919)) for i in range(200)]
    sizes = [len(app_inventory(d)) for d in ids]
    assert sizes == [len(app_inventory(d)) for d in ids]
    assert any(s > 1000 for s in sizes) and any(s < 200 for s in sizes)


def test_14_deprovision_blocks_and_reprovision(env: dict[str, Any]) -> None:
    assert provision(env, 2).status_code == 200
    assert state(env)["status"] == "unavailable"
    _, r = upload(env, [threat(env, env["ios"], "low")])
    assert r.status_code == 403 and "Unavailable" in r.json()["ErrorDetail"]
    provision(env, 1)
    assert state(env)["status"] == "available"
    heartbeat(env)
    assert state(env)["status"] == "enabled"


def test_15_unknown_message_and_admin_view(env: dict[str, Any]) -> None:
    assert result(env, str(uuid.uuid4())).status_code == 404
    s = state(env)
    assert s["heartbeat_count"] >= 3 and s["messages"] and s["config"]["unresponsive_days"] == 7
    assert datetime.fromisoformat(s["last_heartbeat"].replace("Z", "+00:00")) > datetime.now(UTC) + timedelta(days=7)
