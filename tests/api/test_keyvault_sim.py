"""KeyVaultSecret against the simulator's Key Vault (challenge auth, SecretBundle) with the local vault identity."""

from __future__ import annotations

from typing import Any

import pytest

from shared_code.adapters.keyvault import KeyVaultSecret, is_azure_vault, vault_credential
from shared_code.errors import ConnectorCredentialError
from shared_code.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def vault_env(sim: Any) -> dict[str, str]:
    """The local stand-in for the managed identity: the connector app, certificate, vendor tenant."""
    return {
        "AZURE_TENANT_ID": sim.info["console"]["tenant_id"],
        "AZURE_CLIENT_ID": sim.info["connector"]["client_id"],
        "AZURE_CLIENT_CERTIFICATE_PATH": sim.info["connector"]["certificate_path"],
    }


def _settings(sim: Any, connector_env: dict[str, str], name: str, ttl: int = 3600) -> Settings:
    env = connector_env | {"KEY_VAULT_URL": sim.info["key_vault_url"], "CONNECTOR_SECRET_NAME": name,
                           "SECRET_CACHE_SECONDS": str(ttl)}
    env.pop("CONNECTOR_CLIENT_SECRET", None)
    return Settings.from_env(env)


def test_challenge_resource_is_verified_for_azure_vaults_only():
    assert is_azure_vault("https://kv-mtd.vault.azure.net/")
    assert is_azure_vault("https://kv.vault.usgovcloudapi.net")
    assert not is_azure_vault("https://localhost:8443")
    assert not is_azure_vault("https://vault.azure.net.evil.example")


async def test_secret_is_read_once_cached_for_the_ttl_and_reread_after_invalidate(sim, connector_env):
    name = "api-test-secret"
    sim.call("POST", "/_sim/keyvault/secrets", json={"name": name, "value": "first-value"})
    settings = _settings(sim, connector_env, name, ttl=600)
    clock = Clock()
    source = KeyVaultSecret(settings, credential=vault_credential(settings, vault_env(sim)), clock=clock)
    try:
        assert await source.get_secret() == "first-value"
        for _ in range(10):
            assert await source.get_secret() == "first-value"
        assert source.reads == 1
        sim.call("POST", "/_sim/keyvault/secrets", json={"name": name, "value": "rotated-value"})
        assert await source.get_secret() == "first-value"  # still cached
        source.invalidate()  # what TenantCredentials does on AADSTS7000215
        assert await source.get_secret() == "rotated-value"
        assert source.reads == 2
        clock.t += 601  # TTL elapsed
        assert await source.get_secret() == "rotated-value"
        assert source.reads == 3
        assert source.version  # the version id is known (and is not the value)
    finally:
        await source.close()


async def test_missing_secret_is_a_connector_credential_error_without_the_value(sim, connector_env):
    settings = _settings(sim, connector_env, "no-such-secret")
    source = KeyVaultSecret(settings, credential=vault_credential(settings, vault_env(sim)))
    try:
        with pytest.raises(ConnectorCredentialError, match="not found"):
            await source.get_secret()
    finally:
        await source.close()


async def test_the_connector_gets_customer_tokens_with_the_secret_from_the_vault(sim, connector_env):
    """End to end: the real secret lives only in the vault; TenantCredentials obtains a Graph token with it."""
    from shared_code.adapters.credentials import TenantCredentials

    sim.call("POST", "/_sim/keyvault/secrets",
             json={"name": "connector-secret-e2e", "value": sim.info["connector"]["client_secret"]})
    settings = _settings(sim, connector_env, "connector-secret-e2e")
    source = KeyVaultSecret(settings, credential=vault_credential(settings, vault_env(sim)))
    tenant = sim.create_tenant("small", seed=7)["tenant_id"]
    creds = TenantCredentials(client_id=settings.client_id, authority_host=settings.authority_host,
                              secret_source=source)
    try:
        token = await creds.get_token(tenant, "https://graph.microsoft.com/.default")
        assert token.count(".") == 2
        assert source.reads == 1
    finally:
        await creds.close()
        await source.close()
