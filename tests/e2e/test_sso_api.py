"""Console SSO without token substitution (issue 11 §1), through devhost's HTTP API, the simulator and Azurite.

The console sends the user's token for the connector's own API (scope ``Console.SignIn``); the connector validates it
locally and reads the user's groups app-only. Every other kind of token is 401 ``user-token-rejected`` with one
generic detail.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

CONSOLE_API = "api://mtd-connector"
REJECTED = "https://mtd-connector.dev/problems/user-token-rejected"


@pytest.fixture(scope="module")
async def tenant(sim: Any, api: httpx.AsyncClient, app_container: Any) -> dict[str, Any]:
    """A provisioned tenant whose enrollment groups map to Console.Manage, and a user who is in one of them."""
    from shared_code.adapters.http_retry import UsageMeter

    summary = sim.create_tenant("small", seed=1207)
    tid = summary["tenant_id"]
    truth = sim.truth(tid, summary["enrollment_groups"])
    owner = truth["devices"][0]["ownerId"]
    graph = app_container.graph(tid, UsageMeter())
    try:
        groups = []
        for name in summary["enrollment_groups"]:
            odata = "displayName eq '" + name.replace("'", "''") + "'"
            page = await graph.get_json("/groups", permission="GroupMember.Read.All", params={"$filter": odata})
            groups.append(page["value"][0]["id"])
    finally:
        await graph.aclose()
    mappings = [{"groupId": g, "role": "Console.Manage"} for g in groups]
    mappings.append({"groupId": str(uuid.uuid4()), "role": "Console.Admin"})
    body = {"enrollmentGroups": summary["enrollment_groups"], "roleMappings": mappings}
    response = await api.put(f"/api/tenants/{tid}", json=body)
    assert response.status_code in (200, 201), response.text
    return {"id": tid, "owner": owner, "groups": groups}


def _requests(sim: Any, tenant_id: str) -> dict[str, int]:
    """Requests the simulator counted for the tenant, per route label."""
    routes = sim.counters(tenant_id).get(tenant_id, {}).get("routes", {})
    return {label: int(c["requests"]) for label, c in routes.items()}


def _user_token(sim: Any, tenant_id: str, user_id: str, **spec: Any) -> str:
    body = {"tenant_id": tenant_id, "user_id": user_id, "audience": CONSOLE_API, "scopes": ["Console.SignIn"], **spec}
    return str(sim.call("POST", "/_sim/tokens/user", json=body)["access_token"])


async def test_a_sign_in_token_for_our_api_maps_the_users_groups_to_roles(
    sim: Any, api: httpx.AsyncClient, tenant: dict[str, Any]
) -> None:
    before = _requests(sim, tenant["id"])
    token = _user_token(sim, tenant["id"], tenant["owner"], name="Ada", upn="ada@contoso.example")
    response = await api.post("/api/sso/roles", json={"accessToken": token, "tenantId": tenant["id"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tenantId"] == tenant["id"] and body["user"]["id"] == tenant["owner"]
    assert body["user"]["userPrincipalName"] == "ada@contoso.example"
    assert body["roles"] == ["Console.Manage"]
    assert body["matchedGroups"] and set(body["matchedGroups"]) <= set(tenant["groups"])
    # One app-only Graph read (transitiveMemberOf), nothing sent as the user: the sign-in token never left.
    after = _requests(sim, tenant["id"])
    grown = {label: n - before.get(label, 0) for label, n in after.items() if n != before.get(label, 0)}
    # The tenant's signing keys (validation, cached afterwards) and one app-only Graph read; no Graph call as the user.
    assert grown == {"/{tenant}/v2.0/.well-known/openid-configuration": 1, "/{tenant}/discovery/v2.0/keys": 1,
                     "/v1.0/users/{id}/transitiveMemberOf": 1}, grown


async def test_every_other_token_is_refused_with_one_generic_answer(
    sim: Any, api: httpx.AsyncClient, tenant: dict[str, Any]
) -> None:
    tid, user = tenant["id"], tenant["owner"]
    unprovisioned = sim.create_tenant("small", seed=1208)
    stranger = sim.truth(unprovisioned["tenant_id"], unprovisioned["enrollment_groups"])["devices"][0]["ownerId"]
    foreign_app = str(uuid.uuid4())
    cases = {
        # The old contract's token: Graph takes it from any client app, so it proves nothing to us.
        "graph token of a foreign app": sim.call("POST", "/_sim/tokens/user", json={
            "tenant_id": tid, "user_id": user, "scopes": ["User.Read"], "client_id": foreign_app})["access_token"],
        "graph token of the console": sim.call("POST", "/_sim/tokens/user", json={
            "tenant_id": tid, "user_id": user, "scopes": ["User.Read"],
            "client_id": sim.info["console"]["client_id"]})["access_token"],
        "token for another API": _user_token(sim, tid, user, claims={"aud": "api://someone-else"}),
        "issued to a client not allowed": _user_token(sim, tid, user, client_id=foreign_app),
        "without Console.SignIn": _user_token(sim, tid, user, scopes=["User.Read"]),
        "app-only token": _user_token(sim, tid, user, claims={"scp": None, "idtyp": "app",
                                                               "roles": ["Console.Manage"]}),
        "ID token": _user_token(sim, tid, user, claims={"scp": None, "azp": None, "nonce": "abc"}),
        "expired": _user_token(sim, tid, user, exp_in=-3600),
        "v1 issuer": _user_token(sim, tid, user, claims={"iss": f"https://sts.windows.net/{tid}/"}),
        "unprovisioned tenant": _user_token(sim, unprovisioned["tenant_id"], stranger),
        "tid claimed for a provisioned tenant, signed for another": _user_token(
            sim, unprovisioned["tenant_id"], stranger, claims={"tid": tid}),
    }
    for name, token in cases.items():
        response = await api.post("/api/sso/roles", json={"accessToken": token})
        assert response.status_code == 401, (name, response.text)
        problem = response.json()
        assert problem["type"] == REJECTED and problem["field"] == "accessToken", name
        assert problem["detail"] == "the sign-in token is not valid for this connector", name
    garbage = await api.post("/api/sso/roles", json={"accessToken": "not-a-jwt"})
    assert garbage.status_code == 401, garbage.text
    mismatch = await api.post("/api/sso/roles", json={"accessToken": _user_token(sim, tid, user),
                                                       "tenantId": unprovisioned["tenant_id"]})
    assert mismatch.status_code == 400 and mismatch.json()["field"] == "tenantId"
