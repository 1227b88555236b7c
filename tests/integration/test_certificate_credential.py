"""The connector credential as a Key Vault certificate: tokens come from a signed client assertion, not a secret."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key, pkcs12
from cryptography.x509 import load_pem_x509_certificate

from shared_code.adapters.credentials import TenantCredentials, certificate_bytes
from shared_code.adapters.graph import GRAPH_SCOPE
from shared_code.adapters.keyvault import KeyVaultSecret, vault_credential
from shared_code.errors import ConnectorCredentialError
from shared_code.settings import Settings, SettingsError


def _settings(sim: Any, connector_env: dict[str, str], name: str) -> Settings:
    env = connector_env | {
        "KEY_VAULT_URL": sim.info["key_vault_url"],
        "CONNECTOR_SECRET_NAME": name,
        "CONNECTOR_CREDENTIAL_TYPE": "certificate",
    }
    env.pop("CONNECTOR_CLIENT_SECRET", None)
    return Settings.from_env(env)


def _vault_env(sim: Any) -> dict[str, str]:
    return {
        "AZURE_TENANT_ID": sim.info["console"]["tenant_id"],
        "AZURE_CLIENT_ID": sim.info["connector"]["client_id"],
        "AZURE_CLIENT_CERTIFICATE_PATH": sim.info["connector"]["certificate_path"],
    }


def _pfx_base64(pem: bytes) -> str:
    key = load_pem_private_key(pem, password=None)
    cert = load_pem_x509_certificate(pem)
    from cryptography.hazmat.primitives.serialization import NoEncryption

    blob = pkcs12.serialize_key_and_certificates(b"connector", key, cert, None, NoEncryption())  # type: ignore[arg-type]
    return base64.b64encode(blob).decode()


@pytest.fixture(scope="module")
def connector_pem(sim: Any) -> bytes:
    return Path(sim.info["connector"]["certificate_path"]).read_bytes()


@pytest.mark.parametrize("form", ["pem", "pkcs12"])
async def test_a_certificate_in_key_vault_gets_graph_tokens_for_a_customer_tenant(
    sim: Any, connector_env: dict[str, str], connector_pem: bytes, form: str
) -> None:
    tenant = sim.create_tenant("small", seed=777)
    pem = connector_pem
    value = pem.decode() if form == "pem" else _pfx_base64(pem)
    name = f"connector-cert-{form}"
    sim.call("POST", "/_sim/keyvault/secrets", json={"name": name, "value": value})
    settings = _settings(sim, connector_env, name)
    source = KeyVaultSecret(settings, credential=vault_credential(settings, _vault_env(sim)))
    credentials = TenantCredentials(
        client_id=settings.client_id,
        authority_host=settings.authority_host,
        secret_source=source,
        credential_type=settings.credential_type,
    )
    try:
        token = await credentials.get_token(tenant["tenant_id"], GRAPH_SCOPE)
    finally:
        await credentials.close()
        await source.close()
    assert token.count(".") == 2


def test_certificate_type_needs_key_vault(connector_env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="KEY_VAULT_URL"):
        Settings.from_env(connector_env | {"CONNECTOR_CREDENTIAL_TYPE": "certificate"})


def test_unknown_credential_type_is_named(connector_env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match="CONNECTOR_CREDENTIAL_TYPE"):
        Settings.from_env(connector_env | {"CONNECTOR_CREDENTIAL_TYPE": "password"})


def test_material_that_is_neither_pem_nor_base64_is_refused_clearly() -> None:
    with pytest.raises(ConnectorCredentialError, match="neither PEM nor base64"):
        certificate_bytes("not a certificate!")
