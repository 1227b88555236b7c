"""Simulated Entra: OIDC discovery, token endpoint with the real azure-identity credentials, AADSTS errors, JWKS."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CertificateCredential, ClientSecretCredential
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.simulator.conftest import SimHandle

GRAPH = "https://graph.microsoft.com/.default"
INTUNE_DOUBLE = "https://api.manage.microsoft.com//.default"
INTUNE_SINGLE = "https://api.manage.microsoft.com/.default"
DEFAULT_GRAPH_ROLES = {"User.Read.All", "Device.Read.All", "GroupMember.Read.All", "Application.Read.All",
                       "DeviceManagementApps.Read.All"}


def secret_credential(sim: SimHandle, tenant: str, secret: str | None = None) -> ClientSecretCredential:
    c = sim.info["connector"]
    return ClientSecretCredential(tenant, c["client_id"], secret or c["client_secret"], authority=sim.info["authority"],
                                  disable_instance_discovery=True, connection_verify=sim.ca_path)


def verified_claims(sim: SimHandle, token: str, tenant: str) -> dict[str, Any]:
    """Verify a token's signature with the published JWKS (as a resource server would)."""
    keys = sim.http.get(f"{sim.base_url}/{tenant}/discovery/v2.0/keys").json()["keys"]
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in keys if k["kid"] == kid)
    return jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=["RS256"], options={"verify_aud": False})


def test_openid_configuration_and_discovery(sim: SimHandle) -> None:
    tid = sim.tenant_ids[0]
    doc = sim.http.get(f"{sim.base_url}/{tid}/v2.0/.well-known/openid-configuration").json()
    assert doc["issuer"] == f"{sim.base_url}/{tid}/v2.0"
    assert doc["token_endpoint"] == f"{sim.base_url}/{tid}/oauth2/v2.0/token"
    assert doc["jwks_uri"] == f"{sim.base_url}/{tid}/discovery/v2.0/keys"
    assert doc["authorization_endpoint"].endswith("/oauth2/v2.0/authorize")
    inst = sim.http.get(f"{sim.base_url}/common/discovery/instance",
                        params={"api-version": "1.1", "authorization_endpoint": doc["authorization_endpoint"]}).json()
    assert inst["tenant_discovery_endpoint"].endswith(f"/{tid}/v2.0/.well-known/openid-configuration")
    unknown = sim.http.get(f"{sim.base_url}/{uuid.uuid4()}/v2.0/.well-known/openid-configuration")
    assert unknown.status_code == 400 and unknown.json()["error_codes"] == [90002]


def test_client_secret_credential_graph_token(sim: SimHandle) -> None:
    tid = sim.tenant_ids[0]
    token = secret_credential(sim, tid).get_token(GRAPH).token
    claims = verified_claims(sim, token, tid)
    assert claims["aud"] == "https://graph.microsoft.com"
    assert claims["iss"] == f"https://sts.windows.net/{tid}/"
    assert claims["tid"] == tid
    assert claims["appid"] == claims["azp"] == sim.connector_id
    assert set(claims["roles"]) == DEFAULT_GRAPH_ROLES  # the Intune role belongs to another resource
    assert claims["exp"] - claims["iat"] >= 3000
    assert claims["ver"] == "1.0" and claims["idtyp"] == "app"


def test_certificate_credential_intune_token_double_slash(sim: SimHandle) -> None:
    tid = sim.tenant_ids[0]
    c = sim.info["connector"]
    cred = CertificateCredential(tid, c["client_id"], c["certificate_path"], authority=sim.info["authority"],
                                 disable_instance_discovery=True, connection_verify=sim.ca_path)
    claims = verified_claims(sim, cred.get_token(INTUNE_DOUBLE).token, tid)
    assert claims["aud"] == "https://api.manage.microsoft.com/"
    assert claims["roles"] == ["update_device_health"]
    assert claims["appidacr"] == "2"  # certificate


def test_certificate_credential_with_chain_ps256(sim: SimHandle) -> None:
    """send_certificate_chain makes MSAL use PS256 with x5t#S256; Entra accepts it."""
    tid = sim.tenant_ids[0]
    c = sim.info["connector"]
    cred = CertificateCredential(tid, c["client_id"], c["certificate_path"], authority=sim.info["authority"],
                                 disable_instance_discovery=True, connection_verify=sim.ca_path,
                                 send_certificate_chain=True)
    assert cred.get_token(GRAPH).token


def test_single_slash_intune_scope(sim: SimHandle) -> None:
    r = sim.token_response(sim.tenant_ids[0], INTUNE_SINGLE)
    assert r.status_code == 200
    claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://api.manage.microsoft.com"
    assert claims["roles"] == ["update_device_health"]


def test_vault_token_has_no_roles(sim: SimHandle) -> None:
    r = sim.token_response(sim.info["connector"]["home_tenant_id"], "https://vault.azure.net/.default")
    claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://vault.azure.net" and "roles" not in claims


def test_bad_secret_is_aadsts7000215(sim: SimHandle) -> None:
    with pytest.raises(ClientAuthenticationError) as err:
        secret_credential(sim, sim.tenant_ids[0], secret="wrong-secret").get_token(GRAPH)
    assert "AADSTS7000215" in str(err.value)


def test_token_endpoint_errors(sim: SimHandle) -> None:
    tid = sim.tenant_ids[0]
    r = sim.token_response(str(uuid.uuid4()), GRAPH)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request" and r.json()["error_codes"] == [90002]
    r = sim.token_response(tid, "https://graph.microsoft.com/User.Read.All")
    assert r.json()["error"] == "invalid_scope" and "AADSTS1002012" in r.json()["error_description"]
    r = sim.token_response(tid, "https://unknown.example.com/.default")
    assert r.json()["error"] == "invalid_resource" and r.json()["error_codes"] == [500011]
    data = {"grant_type": "client_credentials", "client_id": str(uuid.uuid4()), "client_secret": "x", "scope": GRAPH}
    r = sim.http.post(f"{sim.base_url}/{tid}/oauth2/v2.0/token", data=data)
    assert r.json()["error"] == "unauthorized_client" and r.json()["error_codes"] == [700016]
    data = {"grant_type": "client_credentials", "client_id": sim.connector_id, "scope": GRAPH}
    r = sim.http.post(f"{sim.base_url}/{tid}/oauth2/v2.0/token", data=data)
    assert r.status_code == 401 and r.json()["error_codes"] == [7000218]
    # The console app is single-tenant: unknown in a customer tenant.
    r = sim.token_response(tid, "api://mtd-connector/.default", client="console")
    assert r.json()["error_codes"] == [700016]


def test_client_secret_basic(sim: SimHandle) -> None:
    c = sim.info["connector"]
    r = sim.http.post(f"{sim.base_url}/{sim.tenant_ids[0]}/oauth2/v2.0/token",
                      data={"grant_type": "client_credentials", "scope": GRAPH},
                      auth=(c["client_id"], c["client_secret"]))
    assert r.status_code == 200, r.text


def test_consent_revoked_then_restored(sim: SimHandle) -> None:
    tid = sim.tenant_ids[1]
    r = sim.admin("DELETE", "/_sim/consent", params={"tenant_id": tid, "app_id": sim.connector_id})
    assert r.status_code == 200
    try:
        with pytest.raises(ClientAuthenticationError) as err:
            secret_credential(sim, tid).get_token(GRAPH)
        assert "AADSTS7000229" in str(err.value)
    finally:
        r = sim.admin("POST", "/_sim/consent", {"tenant_id": tid, "app_id": sim.connector_id,
                                                "roles": sorted(DEFAULT_GRAPH_ROLES | {"update_device_health"})})
        assert r.status_code == 200
    assert secret_credential(sim, tid).get_token(GRAPH).token


def test_partial_consent_limits_roles(sim: SimHandle) -> None:
    tid = sim.tenant_ids[1]
    sim.admin("POST", "/_sim/consent", {"tenant_id": tid, "app_id": sim.connector_id, "roles": ["User.Read.All"]})
    try:
        graph = jwt.decode(sim.app_token(tid, GRAPH, cache=False), options={"verify_signature": False})
        intune = jwt.decode(sim.app_token(tid, INTUNE_DOUBLE, cache=False), options={"verify_signature": False})
        assert graph["roles"] == ["User.Read.All"]
        assert "roles" not in intune  # no Intune permission consented: a token without roles (Entra behaviour)
        got = sim.admin("GET", "/_sim/consent", params={"tenant_id": tid, "app_id": sim.connector_id}).json()
        assert got["roles"] == ["User.Read.All"]
    finally:
        sim.admin("POST", "/_sim/consent", {"tenant_id": tid, "app_id": sim.connector_id,
                                            "roles": sorted(DEFAULT_GRAPH_ROLES | {"update_device_health"})})


def _assertion(sim: SimHandle, tenant: str, *, aud: str | None = None, exp_delta: int = 600,
               key: Any = None, alg: str = "RS256") -> str:
    c = sim.info["connector"]
    with open(c["certificate_path"], "rb") as fh:
        pem = fh.read()
    own = serialization.load_pem_private_key(pem, password=None)
    now = int(time.time())
    claims = {"aud": aud or f"{sim.base_url}/{tenant}/oauth2/v2.0/token", "iss": c["client_id"],
              "sub": c["client_id"], "jti": str(uuid.uuid4()), "nbf": now, "exp": now + exp_delta}
    import base64
    x5t = base64.urlsafe_b64encode(bytes.fromhex(c["certificate_thumbprint"])).decode()
    return jwt.encode(claims, key or own, algorithm=alg, headers={"x5t": x5t})


def _assertion_request(sim: SimHandle, tenant: str, assertion: str) -> Any:
    data = {"grant_type": "client_credentials", "client_id": sim.connector_id, "scope": GRAPH,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion}
    return sim.http.post(f"{sim.base_url}/{tenant}/oauth2/v2.0/token", data=data)


def test_client_assertion_rules(sim: SimHandle) -> None:
    tid = sim.tenant_ids[0]
    assert _assertion_request(sim, tid, _assertion(sim, tid)).status_code == 200
    r = _assertion_request(sim, tid, _assertion(sim, tid, aud="https://elsewhere.example/token"))
    assert r.status_code == 401 and r.json()["error_codes"] == [700023]
    r = _assertion_request(sim, tid, _assertion(sim, tid, exp_delta=-3600))
    assert r.json()["error_codes"] == [700024]
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    r = _assertion_request(sim, tid, _assertion(sim, tid, key=stranger))
    assert r.json()["error_codes"] == [700027]


def test_console_tokens(sim: SimHandle) -> None:
    con = sim.info["console"]
    r = sim.token_response(con["tenant_id"], "api://mtd-connector/.default", client="console")
    assert r.status_code == 200, r.text
    claims = verified_claims(sim, r.json()["access_token"], con["tenant_id"])
    assert claims["aud"] == con["audience"] and claims["ver"] == "2.0"
    assert claims["iss"] == f"{sim.base_url}/{con['tenant_id']}/v2.0"
    assert set(claims["roles"]) == {"Console.Read", "Console.Manage"}
    r = sim.admin("POST", "/_sim/tokens/console", {"roles": ["Console.Read"], "exp_in": -60})
    claims = jwt.decode(r.json()["access_token"], options={"verify_signature": False, "verify_exp": False})
    assert claims["roles"] == ["Console.Read"] and claims["exp"] < time.time()
    r = sim.admin("POST", "/_sim/tokens/console", {"roles": ["Console.Read"], "claims": {"aud": "api://other"}})
    assert jwt.decode(r.json()["access_token"], options={"verify_signature": False})["aud"] == "api://other"
    assert sim.admin("POST", "/_sim/tokens/console", {"roles": ["Admin"]}).status_code == 400


def test_user_tokens(sim: SimHandle) -> None:
    tid = sim.tenant_ids[0]
    token = sim.app_token(tid)
    user = sim.get("/v1.0/users?$top=1", token).json()["value"][0]
    r = sim.admin("POST", "/_sim/tokens/user", {"tenant_id": tid, "user_id": user["id"], "scopes": ["User.Read"]})
    claims = verified_claims(sim, r.json()["access_token"], tid)
    assert claims["scp"] == "User.Read" and claims["oid"] == user["id"] and claims["tid"] == tid
    missing = sim.admin("POST", "/_sim/tokens/user", {"tenant_id": tid, "user_id": str(uuid.uuid4())})
    assert missing.status_code == 400 and missing.json()["field"] == "user_id"


def test_token_outage_fault(sim: SimHandle) -> None:
    tid = sim.tenant_ids[0]
    r = sim.admin("POST", "/_sim/faults", {"kind": "token_outage", "match": {"tenant": tid}, "count": 2,
                                           "retry_after": 0.5})
    assert r.status_code == 201
    for _ in range(2):
        r = sim.token_response(tid, GRAPH)
        assert r.status_code == 503 and r.json()["error"] == "temporarily_unavailable"
        assert r.json()["error_codes"] == [90033] and r.headers["Retry-After"] == "0.5"
    assert sim.token_response(tid, GRAPH).status_code == 200


@pytest.fixture(scope="module")
def own(private_sim: Any) -> SimHandle:
    """A simulator of this module only: its tests drop signing keys and revoke secrets."""
    return private_sim()  # type: ignore[no-any-return]


def test_secret_rotation_with_vault(own: SimHandle) -> None:
    tid = own.tenant_ids[0]
    c = own.info["connector"]
    old = c["client_secret"]
    r = own.admin("POST", f"/_sim/apps/{c['client_id']}/secrets", {"secret": "new-secret-value-0123456789"})
    assert r.json()["secrets"] == 2
    own.admin("POST", "/_sim/keyvault/secrets", {"name": c["secret_name"], "value": "new-secret-value-0123456789"})
    assert secret_credential(own, tid, secret=old).get_token(GRAPH).token  # both valid during the overlap
    own.admin("POST", f"/_sim/apps/{c['client_id']}/secrets", {"secret": "new-secret-value-0123456789",
                                                               "revoke_old": True})
    with pytest.raises(ClientAuthenticationError) as err:
        secret_credential(own, tid, secret=old).get_token(GRAPH)
    assert "AADSTS7000215" in str(err.value)
    assert secret_credential(own, tid, secret="new-secret-value-0123456789").get_token(GRAPH).token
    c["client_secret"] = "new-secret-value-0123456789"  # later tests of this module use the handle's secret


def test_key_rotation_unknown_kid(own: SimHandle) -> None:
    tid = own.tenant_ids[0]
    old = own.app_token(tid, cache=False)
    assert own.get("/v1.0/users?$top=1", old).status_code == 200
    r = own.admin("POST", "/_sim/keys/rotate", {"drop_old": False})
    assert len(r.json()["kids"]) == 2
    assert own.get("/v1.0/users?$top=1", old).status_code == 200  # old key still published
    new = own.app_token(tid, cache=False)
    assert jwt.get_unverified_header(new)["kid"] == r.json()["kid"]
    own.admin("POST", "/_sim/keys/rotate", {"drop_old": True})
    denied = own.get("/v1.0/users?$top=1", old)
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "InvalidAuthenticationToken"
    kids = [k["kid"] for k in own.http.get(f"{own.base_url}/{tid}/discovery/v2.0/keys").json()["keys"]]
    assert jwt.get_unverified_header(old)["kid"] not in kids


def test_unknown_tenant_with_sdk(sim: SimHandle) -> None:
    # The OIDC document answers 400 AADSTS90002, so MSAL fails at tenant discovery (as against real Entra).
    with pytest.raises(ClientAuthenticationError) as err:
        secret_credential(sim, str(uuid.uuid4())).get_token(GRAPH)
    assert "Unable to get authority configuration" in str(err.value)


def test_expired_and_wrong_audience_tokens_get_401(sim: SimHandle) -> None:
    tid = sim.tenant_ids[0]
    user = sim.get("/v1.0/users?$top=1", sim.app_token(tid)).json()["value"][0]["id"]
    expired = sim.admin("POST", "/_sim/tokens/user", {"tenant_id": tid, "user_id": user, "exp_in": -120}).json()
    r = sim.get("/v1.0/me", expired["access_token"])
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    vault = sim.app_token(sim.info["connector"]["home_tenant_id"], "https://vault.azure.net/.default")
    r = sim.get("/v1.0/users", vault)
    assert r.status_code == 401 and r.json()["error"]["code"] == "InvalidAuthenticationToken"
    r = sim.http.get(f"{sim.base_url}/v1.0/users", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401
    r = sim.http.get(f"{sim.base_url}/v1.0/users")
    assert r.status_code == 401 and r.json()["error"]["message"] == "Access token is empty."


def test_token_outage_seen_by_the_sdk(sim: SimHandle) -> None:
    """azure-identity retries a 503 token response; a lasting outage surfaces as ClientAuthenticationError."""
    tid = sim.tenant_ids[0]
    sim.admin("POST", "/_sim/faults", {"kind": "token_outage", "match": {"tenant": tid}, "retry_after": 0.05})
    assert secret_credential(sim, tid).get_token(GRAPH).token  # one 503, then the SDK's retry succeeds
    sim.admin("POST", "/_sim/faults", {"kind": "token_outage", "match": {"tenant": tid}, "retry_after": 0.05,
                                       "unlimited": True})
    try:
        with pytest.raises(ClientAuthenticationError) as err:
            secret_credential(sim, tid).get_token(GRAPH)
        assert "503" in str(err.value)
    finally:
        sim.admin("DELETE", "/_sim/faults")
