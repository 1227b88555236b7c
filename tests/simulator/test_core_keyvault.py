"""Simulated Key Vault with the real azure-keyvault-secrets SecretClient (challenge authentication)."""

from __future__ import annotations

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient

from tests.simulator.conftest import SimHandle


def secret_client(sim: SimHandle) -> SecretClient:
    c = sim.info["connector"]
    cred = ClientSecretCredential(c["home_tenant_id"], c["client_id"], c["client_secret"],
                                  authority=sim.info["authority"], disable_instance_discovery=True,
                                  connection_verify=sim.ca_path)
    return SecretClient(sim.info["key_vault_url"], cred, verify_challenge_resource=False,
                        connection_verify=sim.ca_path)


def test_challenge_without_token(sim: SimHandle) -> None:
    r = sim.http.get(f"{sim.base_url}/secrets/connector-client-secret", params={"api-version": "7.5"})
    assert r.status_code == 401
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'authorization="{sim.info["authority"]}/{sim.info["connector"]["home_tenant_id"]}"' in challenge
    assert 'resource="https://vault.azure.net"' in challenge


def test_secret_client_reads_connector_secret(sim: SimHandle) -> None:
    secret = secret_client(sim).get_secret(sim.info["connector"]["secret_name"])
    assert secret.value == sim.info["connector"]["client_secret"]
    assert secret.id.startswith(f'{sim.info["key_vault_url"]}/secrets/connector-client-secret/')
    assert secret.properties.enabled is True


def test_missing_secret_is_404(sim: SimHandle) -> None:
    with pytest.raises(ResourceNotFoundError) as err:
        secret_client(sim).get_secret("no-such-secret")
    assert "SecretNotFound" in str(err.value)


def test_rotation_via_admin_and_versions(sim: SimHandle) -> None:
    client = secret_client(sim)
    r = sim.admin("POST", "/_sim/keyvault/secrets", {"name": "rotating-secret", "value": "one"})
    first = r.json()["version"]
    sim.admin("POST", "/_sim/keyvault/secrets", {"name": "rotating-secret", "value": "two"})
    assert client.get_secret("rotating-secret").value == "two"
    assert client.get_secret("rotating-secret", version=first).value == "one"
    assert client.set_secret("rotating-secret", "three").value == "three"
    assert client.get_secret("rotating-secret").value == "three"


def test_wrong_audience_token_is_rejected(sim: SimHandle) -> None:
    graph_token = sim.app_token(sim.tenant_ids[0])
    r = sim.get("/secrets/connector-client-secret?api-version=7.5", graph_token)
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers


def test_list_secret_properties(sim: SimHandle) -> None:
    names = {p.name for p in secret_client(sim).list_properties_of_secrets()}
    assert "connector-client-secret" in names
