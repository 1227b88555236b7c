"""Intune, MAM and SSO flows end to end: devhost (function_app.py) + simulator + Azurite, driven only through the
HTTP API and the timers, as the console and Azure would.

Devices are enrolled by the real enrollment poll (timer ``dispatch_polls`` → queue ``poll_tenant``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from shared_code.permissions import permission_set

PROBLEM = "application/problem+json"


class Api:
    """The console's view: an HTTP client with a Console.Manage token, plus the simulator's admin API."""

    def __init__(self, client: httpx.AsyncClient, sim: Any, devhost: Any) -> None:
        self.client = client
        self.sim = sim
        self.devhost = devhost
        self.connector_app = sim.info["connector"]["client_id"]

    async def new_tenant(self, seed: int, body: dict[str, Any] | None = None, **extra: Any) -> tuple[str, dict]:
        summary = self.sim.create_tenant("small", seed=seed, **extra)
        tid = summary["tenant_id"]
        response = await self.client.put(
            f"/api/tenants/{tid}", json=body or {"enrollmentGroups": summary["enrollment_groups"]}
        )
        return tid, {"summary": summary, "put": response}

    async def poll(self) -> None:
        await self.devhost.run_timer("dispatch_polls")
        left = await self.devhost.drain_queues()
        assert not any(left.values()), left

    async def enrolled(self, tid: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"/api/tenants/{tid}/devices")
        assert response.status_code == 200, response.text
        body = response.json()
        items = body.get("value", body.get("devices", body)) if isinstance(body, dict) else body
        return [d for d in items if d.get("state") == "enrolled"]

    async def grant(self, tid: str, roles: list[str]) -> None:
        self.sim.call("POST", "/_sim/consent", json={"tenant_id": tid, "app_id": self.connector_app, "roles": roles})

    def user_token(self, tid: str, user_id: str, scopes: list[str]) -> str:
        """A console user's sign-in token for the connector's API (what the console SPA posts to /sso/roles)."""
        body = {"tenant_id": tid, "user_id": user_id, "scopes": scopes, "audience": "api://mtd-connector"}
        return str(self.sim.call("POST", "/_sim/tokens/user", json=body)["access_token"])

    async def document(self, tid: str) -> dict[str, Any]:
        response = await self.client.get(f"/api/tenants/{tid}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture(scope="module")
async def api(devhost: Any, sim: Any, console_token: Any) -> AsyncIterator[Api]:
    headers = {"Authorization": f"Bearer {console_token(['Console.Manage'])}"}
    async with httpx.AsyncClient(base_url=devhost.base_url, headers=headers, timeout=120.0) as client:
        yield Api(client, sim, devhost)


async def _ios_device(api: Api, tid: str) -> dict[str, Any]:
    devices = await api.enrolled(tid)
    assert devices, "the enrollment poll enrolled nothing"
    return next((d for d in devices if d.get("operatingSystem") in ("iOS", "iPadOS")), devices[0])


async def test_full_cycle_through_the_api(api: Api) -> None:
    tid, info = await api.new_tenant(seed=501)
    put = info["put"]
    assert put.status_code == 201, put.text
    doc = put.json()
    assert doc["tenantId"] == tid and doc["state"] == "active"
    assert doc["status"]["intune"]["state"] == "provisioned"
    assert api.sim.intune(tid)["status"] == "available"

    again = await api.client.put(f"/api/tenants/{tid}", json={"enrollmentGroups": info["summary"]["enrollment_groups"]})
    assert again.status_code == 200 and again.json()["configVersion"] == 1

    await api.poll()
    await api.devhost.run_timer("send_heartbeats")
    assert api.sim.intune(tid)["status"] == "enabled"

    device = await _ios_device(api, tid)
    device_id = device["deviceId"]
    threat = await api.client.put(
        f"/api/tenants/{tid}/devices/{device_id}/threat",
        json={"level": "high", "detectedAt": "2026-02-01T08:00:00Z", "threats": [{"type": "jailbreak"}]},
        headers={"Idempotency-Key": "e2e-1"},
    )
    assert threat.status_code == 202, threat.text
    upload_id = threat.json()["uploadId"]
    replay = await api.client.put(
        f"/api/tenants/{tid}/devices/{device_id}/threat",
        json={"level": "high", "detectedAt": "2026-02-01T08:00:00Z", "threats": [{"type": "jailbreak"}]},
        headers={"Idempotency-Key": "e2e-1"},
    )
    assert replay.status_code == 202 and replay.json()["uploadId"] == upload_id and replay.json()["replayed"]

    inventory = await api.client.post(f"/api/tenants/{tid}/devices/{device_id}/inventory")
    assert inventory.status_code == 202, inventory.text

    await api.devhost.run_timer("poll_upload_results")  # Pending at Intune on the first poll
    await api.devhost.run_timer("poll_upload_results")  # settled
    latest = await api.client.get(f"/api/tenants/{tid}/devices/{device_id}/threat")
    assert latest.status_code == 200
    assert (latest.json()["status"], latest.json()["level"], latest.json()["uploadId"]) == ("Succeeded", "high",
                                                                                          upload_id)
    assert api.sim.intune(tid)["threat_levels"][device_id]["ThreatLevel"] == "high"

    apps = await api.client.get(f"/api/tenants/{tid}/devices/{device_id}/inventory")
    assert apps.status_code == 200
    body = apps.json()
    if device.get("operatingSystem") in ("iOS", "iPadOS"):
        assert body["requestStatus"] == "Succeeded" and body["appCount"] == len(body["apps"]) > 0
        assert {"appId", "version", "name", "managed"} <= set(body["apps"][0])
    else:  # App Sync is iOS/iPadOS only: Intune fails the request with an ErrorDetail
        assert body["requestStatus"] == "Failed" and body["requestError"]

    mam = await api.client.get(f"/api/tenants/{tid}/users/{device['ownerId']}/mam", params={"deviceId": device_id})
    assert mam.status_code == 200, mam.text
    assert "hasMamRegistration" in mam.json()["device"]

    doc = await api.document(tid)
    assert doc["status"]["heartbeat"]["state"] == "ok"
    activity = doc["status"]["activity"]
    assert activity["heartbeatsSent"] >= 1 and activity["threatReportsAccepted"] >= 1
    assert doc["status"]["problems"] == []
    assert doc["status"]["lastPoll"] is not None

    deleted = await api.client.delete(f"/api/tenants/{tid}")
    assert deleted.status_code == 204
    assert api.sim.intune(tid)["status"] == "unavailable"
    gone = await api.document(tid)
    assert gone["state"] == "deprovisioned"
    refused = await api.client.put(
        f"/api/tenants/{tid}/devices/{device_id}/threat", json={"level": "low", "detectedAt": "2026-02-02T00:00:00Z"}
    )
    assert refused.status_code == 404 and refused.headers["content-type"].startswith(PROBLEM)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"enrollmentGroups": []}, "enrollmentGroups"),
        ({"enrollmentGroups": ["A"], "platforms": ["iOS", "BlackBerry"]}, "platforms[1]"),
        ({"enrollmentGroups": ["A"], "guard": {"maxPercent": 120}}, "guard.maxPercent"),
        ({"enrollmentGroups": ["A"], "roleMappings": [{"groupId": "x", "role": "Console.Read"}]},
         "roleMappings[0].groupId"),
        ({"enrollmentGroups": ["A"], "pollIntervalMinute": 5}, "pollIntervalMinute"),
        ({"enrollmentGroups": ["A"], "partnerEnrollmentUrl": "http://plain.example"}, "partnerEnrollmentUrl"),
    ],
)
async def test_bad_tenant_bodies_are_400_problem_naming_the_field(api: Api, body: dict, field: str) -> None:
    response = await api.client.put(f"/api/tenants/{uuid.uuid4()}", json=body)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["field"] == field


async def test_bad_threat_bodies_and_unknowns(api: Api) -> None:
    tid, info = await api.new_tenant(seed=502)
    assert info["put"].status_code == 201
    await api.poll()
    device = await _ios_device(api, tid)
    url = f"/api/tenants/{tid}/devices/{device['deviceId']}/threat"
    bad = await api.client.put(url, json={"level": "severe", "detectedAt": "2026-01-01T00:00:00Z"})
    assert bad.status_code == 400 and bad.json()["field"] == "level"
    unknown_device = await api.client.put(
        f"/api/tenants/{tid}/devices/{uuid.uuid4()}/threat", json={"level": "low", "detectedAt": "2026-01-01T00:00:00Z"}
    )
    assert unknown_device.status_code == 404
    unknown_tenant = await api.client.put(
        f"/api/tenants/{uuid.uuid4()}/devices/{device['deviceId']}/threat",
        json={"level": "low", "detectedAt": "2026-01-01T00:00:00Z"},
    )
    assert unknown_tenant.status_code == 404
    not_found = await api.client.get(f"/api/tenants/{uuid.uuid4()}")
    assert not_found.status_code == 404 and not_found.headers["content-type"].startswith(PROBLEM)


async def test_threat_is_409_with_connector_state_when_intune_is_unavailable(api: Api) -> None:
    tid, info = await api.new_tenant(seed=503)
    await api.poll()
    device = await _ios_device(api, tid)
    # Intune deprovisions the partner (another console / Intune reset): uploads are blocked while Unavailable.
    from shared_code.bootstrap import container
    from shared_code.intune.wiring import build_intune

    services = container().service(build_intune)
    tenant_service = await services.discovery.endpoint(tid, "tenant")
    await services.intune.put_partner_tenant(tenant_service.url, tid, provisioned=2, enrollment_url="",
                                             remediation_url="")
    report = {"level": "medium", "detectedAt": "2026-01-01T00:00:00Z", "idempotencyKey": "blocked-then-ok"}
    response = await api.client.put(f"/api/tenants/{tid}/devices/{device['deviceId']}/threat", json=report)
    assert response.status_code == 409, response.text
    problem = response.json()
    assert problem["connectorState"]["connectorState"] == "unavailable"
    # A PUT re-provisions the tenant at Intune and clears the blocked state.
    again = await api.client.put(f"/api/tenants/{tid}", json={"enrollmentGroups": info["summary"]["enrollment_groups"]})
    assert again.status_code == 200 and again.json()["status"]["intune"]["connectorState"] is None
    # The same idempotency key after the block: the refused message is resent (same upload id), not answered stale.
    ok = await api.client.put(f"/api/tenants/{tid}/devices/{device['deviceId']}/threat", json=report)
    assert ok.status_code == 202, ok.text
    assert (ok.json()["status"], ok.json()["replayed"]) == ("Pending", True)


async def test_an_enrolled_device_without_an_owner_is_409_device_has_no_owner(api: Api) -> None:
    """A shared/kiosk device enrolled as a group member itself (issue 10 §3) is enrolled, not "unknown": threat
    levels and App Sync requests answer 409 ``device-has-no-owner`` naming it (no UserId is documented for a device
    without a user), send nothing to Intune, and work once Entra has an owner for it."""
    tid, info = await api.new_tenant(seed=506)
    assert info["put"].status_code == 201, info["put"].text
    group = info["summary"]["enrollment_groups"][0]
    kiosk_object, kiosk_device = str(uuid.uuid4()), str(uuid.uuid4())
    api.sim.mutate(tid, "add_device", id=kiosk_object, deviceId=kiosk_device, operatingSystem="iOS")
    api.sim.mutate(tid, "add_member", group_name=group, member_id=kiosk_object)
    await api.poll()
    enrolled = {d["deviceId"]: d for d in await api.enrolled(tid)}
    assert kiosk_device in enrolled and enrolled[kiosk_device].get("ownerId") is None

    uploads_before = len(api.sim.intune(tid).get("threat_levels", {}))
    report = {"level": "low", "detectedAt": "2026-01-01T00:00:00Z"}
    for device_key in (kiosk_device, kiosk_object):  # the API takes either id
        threat = await api.client.put(f"/api/tenants/{tid}/devices/{device_key}/threat", json=report)
        assert threat.status_code == 409, threat.text
        assert threat.headers["content-type"].startswith(PROBLEM)
        problem = threat.json()
        assert problem["type"].endswith("/device-has-no-owner") and problem["deviceId"] == kiosk_device
        assert "no registered owner" in problem["detail"]
    inventory = await api.client.post(f"/api/tenants/{tid}/devices/{kiosk_device}/inventory")
    assert inventory.status_code == 409 and inventory.json()["type"].endswith("/device-has-no-owner"), inventory.text
    assert (await api.client.get(f"/api/tenants/{tid}/devices/{kiosk_device}/threat")).status_code == 404
    assert len(api.sim.intune(tid).get("threat_levels", {})) == uploads_before
    # A device that is not enrolled at all still answers 404, so the two are never confused.
    unknown = await api.client.put(f"/api/tenants/{tid}/devices/{uuid.uuid4()}/threat", json=report)
    assert unknown.status_code == 404 and unknown.json()["type"].endswith("/not-found")

    # An owner registered in Entra: registeredOwners is a navigation property that devices/delta does not report,
    # so the operator's full sync picks it up; the report is then accepted with the owner as UserId.
    truth = api.sim.truth(tid, info["summary"]["enrollment_groups"])
    owner = next(d["ownerId"] for d in truth["devices"] if d["ownerId"])
    api.sim.mutate(tid, "set_owner", device_id=kiosk_object, owner_id=owner)
    assert (await api.client.post(f"/api/tenants/{tid}/sync", params={"full": "true"})).status_code == 202
    left = await api.devhost.drain_queues()
    assert not any(left.values()), left
    ok = await api.client.put(f"/api/tenants/{tid}/devices/{kiosk_device}/threat", json=report)
    assert ok.status_code == 202, ok.text
    await api.devhost.run_timer("poll_upload_results")
    await api.devhost.run_timer("poll_upload_results")
    accepted = api.sim.intune(tid)["threat_levels"][kiosk_device]
    assert (accepted["ThreatLevel"], accepted["UserId"]) == ("low", owner)


async def test_consent_missing_is_424_and_stores_nothing(api: Api) -> None:
    summary = api.sim.create_tenant("small", seed=504)
    tid = summary["tenant_id"]
    api.sim.call("DELETE", "/_sim/consent", params={"tenant_id": tid, "app_id": api.connector_app})
    response = await api.client.put(f"/api/tenants/{tid}", json={"enrollmentGroups": summary["enrollment_groups"]})
    assert response.status_code == 424 and response.json()["type"].endswith("consent-required")
    assert (await api.client.get(f"/api/tenants/{tid}")).status_code == 404


async def test_sso_roles_endpoint(api: Api) -> None:
    tid, info = await api.new_tenant(seed=505)
    await api.poll()
    device = (await api.enrolled(tid))[0]
    owner = device["ownerId"]
    # Which of the owner's groups to map: ask Graph as the connector (the console would know its group ids).
    from shared_code.bootstrap import container

    graph = container().graph(tid)
    try:
        group_ids = []
        for name in info["summary"]["enrollment_groups"]:
            page = await graph.get_json(
                "/groups", permission="GroupMember.Read.All",
                params={"$filter": "displayName eq '" + name.replace("'", "''") + "'"},
            )
            group_ids += [g["id"] for g in page["value"]]
    finally:
        await graph.aclose()
    body = {"enrollmentGroups": info["summary"]["enrollment_groups"],
            "roleMappings": [{"groupId": g, "role": "Console.Manage"} for g in group_ids]}
    assert (await api.client.put(f"/api/tenants/{tid}", json=body)).status_code == 200
    token = api.user_token(tid, owner, ["Console.SignIn"])
    response = await api.client.post("/api/sso/roles", json={"accessToken": token})
    assert response.status_code == 200, response.text
    assert response.json()["roles"] == ["Console.Manage"] and response.json()["user"]["id"] == owner
    assert token not in response.text

    missing = await api.client.post("/api/sso/roles", json={"accessToken": api.user_token(tid, owner, ["Mail.Read"])})
    assert missing.status_code == 401 and missing.json()["type"].endswith("user-token-rejected")
    bad = await api.client.post("/api/sso/roles", json={"token": token})
    assert bad.status_code == 400 and bad.json()["field"] == "token"


# ---- the permissions test ----------------------------------------------------------------------------------------
# Every permission is an application permission (SSO reads memberships app-only: issue 11 §1).
APPLICATION_PERMISSIONS = sorted(permission_set())


async def _cycle(api: Api, tid: str, groups: list[str]) -> dict[str, Any]:
    """Run every feature once; return what each answered."""
    out: dict[str, Any] = {}
    put = await api.client.put(f"/api/tenants/{tid}", json={"enrollmentGroups": groups})
    out["put"] = put.status_code
    await api.poll()
    await api.devhost.run_timer("send_heartbeats")
    devices = await api.enrolled(tid)
    out["enrolled"] = len(devices)
    owner = api.sim.truth(tid, groups)["devices"][0]
    device_id = devices[0]["deviceId"] if devices else owner["deviceId"]
    threat = await api.client.put(
        f"/api/tenants/{tid}/devices/{device_id}/threat", json={"level": "low", "detectedAt": "2026-01-01T00:00:00Z"}
    )
    out["threat"] = threat.status_code
    out["mam"] = (await api.client.get(f"/api/tenants/{tid}/users/{owner['ownerId']}/mam")).status_code
    sso = await api.client.post("/api/sso/roles", json={"accessToken": api.user_token(tid, owner["ownerId"],
                                                                                      ["Console.SignIn"])})
    out["sso"] = sso.status_code
    out["doc"] = await api.document(tid)
    out["intune"] = api.sim.intune(tid)
    return out


async def test_exactly_the_declared_permissions_run_the_whole_cycle(api: Api) -> None:
    summary = api.sim.create_tenant("small", seed=510)
    tid = summary["tenant_id"]
    await api.grant(tid, APPLICATION_PERMISSIONS)
    out = await _cycle(api, tid, summary["enrollment_groups"])
    assert (out["put"], out["threat"], out["mam"], out["sso"]) == (201, 202, 200, 200), out
    assert out["enrolled"] > 0
    assert out["intune"]["status"] == "enabled"
    assert out["doc"]["status"]["problems"] == []


@pytest.mark.parametrize("removed", APPLICATION_PERMISSIONS)
async def test_one_permission_removed_breaks_only_its_feature(api: Api, removed: str) -> None:
    summary = api.sim.create_tenant("small", seed=520 + APPLICATION_PERMISSIONS.index(removed))
    tid = summary["tenant_id"]
    await api.grant(tid, [p for p in APPLICATION_PERMISSIONS if p != removed])
    out = await _cycle(api, tid, summary["enrollment_groups"])
    problems = out["doc"]["status"]["problems"]
    assert f"permission_missing: {removed}" in problems, (removed, problems)
    assert out["put"] == 201, "provisioning stores the tenant whatever the Intune side says"
    # transitiveMemberOf takes User.Read.All or the higher GroupMember.Read.All (user-list-transitivememberof), so
    # no single removal stops SSO.
    assert out["sso"] == 200, out
    intune_feature = removed in ("Application.Read.All", "update_device_health")
    if intune_feature:
        assert out["doc"]["status"]["intune"]["state"] == "permission_missing"
        assert out["threat"] == 409
        assert out["enrolled"] > 0, "enrollment keeps working without Intune"
    else:
        assert out["doc"]["status"]["intune"]["state"] == "provisioned"
        assert out["intune"]["status"] == "enabled", "heartbeats keep flowing"
    if removed == "DeviceManagementApps.Read.All":
        assert out["mam"] == 424
        assert out["threat"] == 202
    else:
        assert out["mam"] == 200


async def test_a_sign_in_token_without_the_scope_breaks_only_sso(api: Api) -> None:
    summary = api.sim.create_tenant("small", seed=530)
    tid = summary["tenant_id"]
    out = await _cycle(api, tid, summary["enrollment_groups"])
    owner = api.sim.truth(tid, summary["enrollment_groups"])["devices"][0]["ownerId"]
    sso = await api.client.post("/api/sso/roles", json={"accessToken": api.user_token(tid, owner, ["openid"])})
    assert sso.status_code == 401 and sso.json()["type"].endswith("user-token-rejected")
    assert (out["threat"], out["mam"]) == (202, 200)
