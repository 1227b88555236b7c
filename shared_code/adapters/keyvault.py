"""The connector's client secret from Key Vault (``KEY_VAULT_URL`` + ``CONNECTOR_SECRET_NAME``), cached in memory.

Key Vault's throttling guidance is to cache secrets in memory and re-read them only when the cached value stops
working (learn.microsoft.com/azure/key-vault/general/overview-throttling): the cache lives ``SECRET_CACHE_SECONDS``
and :meth:`KeyVaultSecret.invalidate` (called by ``TenantCredentials`` on AADSTS7000215/7000222, a bad or expired
secret) forces the next read, which is how a rotated secret is picked up without a restart.

Which identity reads the vault (``vault_credential``):

- **Azure**: the Function App's managed identity (``ManagedIdentityCredential``; ``AZURE_CLIENT_ID`` selects a
  user-assigned identity, the azure-identity convention). It holds *Key Vault Secrets User* on the vault only.
- **Local runs and tests against the simulator**: there is no managed identity, so a service principal stands in
  for it, configured with azure-identity's own ``EnvironmentCredential`` variables: ``AZURE_TENANT_ID``,
  ``AZURE_CLIENT_ID`` and ``AZURE_CLIENT_CERTIFICATE_PATH`` (or ``AZURE_CLIENT_SECRET``). Against the simulator
  that is the connector app itself in the vendor's own tenant (``console.tenant_id`` in the simulator info) with
  its certificate (``connector.certificate_path``): the simulator's vault challenge names the vendor tenant and
  accepts any valid ``https://vault.azure.net`` token there. A certificate is used, not the client secret, because
  the secret is what we are fetching. We build the credential ourselves rather than using ``EnvironmentCredential``
  so that ``authority=AZURE_AUTHORITY_HOST`` and ``disable_instance_discovery`` apply (MSAL would otherwise ask
  login.microsoftonline.com to validate a non-Microsoft authority).

``verify_challenge_resource`` (the SDK check that the vault host lies in the challenge's resource domain) stays on
for every Azure vault DNS suffix and is relaxed only for other hosts (the simulator on localhost).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity.aio import CertificateCredential, ClientSecretCredential, ManagedIdentityCredential
from azure.keyvault.secrets.aio import SecretClient

from shared_code.adapters.credentials import tls_options
from shared_code.errors import ConnectorCredentialError, RetriableError
from shared_code.settings import Settings

log = logging.getLogger("connector.keyvault")

# Key Vault DNS suffixes of the public and sovereign clouds
# (learn.microsoft.com/azure/key-vault/general/about-keys-secrets-certificates, "Object identifiers").
AZURE_VAULT_SUFFIXES = (
    ".vault.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
    ".vault.microsoftazure.de",
    ".managedhsm.azure.net",
)


def is_azure_vault(url: str) -> bool:
    """True when ``url`` names a vault in an Azure cloud (then the challenge resource is verified)."""
    host = (urlsplit(url).hostname or "").lower()
    return any(host.endswith(suffix) for suffix in AZURE_VAULT_SUFFIXES)


def vault_credential(settings: Settings, env: Mapping[str, str] | None = None) -> AsyncTokenCredential:
    """The identity that reads the vault: a service principal when configured (local), else managed identity.

    Args:
        settings: ``authority_host`` is used for the service-principal form.
        env: environment (defaults to ``os.environ``).
    """
    env = os.environ if env is None else env
    tenant = env.get("AZURE_TENANT_ID", "")
    client_id = env.get("AZURE_CLIENT_ID", "")
    certificate = env.get("AZURE_CLIENT_CERTIFICATE_PATH", "")
    secret = env.get("AZURE_CLIENT_SECRET", "")
    if tenant and client_id and certificate:
        return CertificateCredential(
            tenant,
            client_id,
            certificate,
            authority=settings.authority_host,
            disable_instance_discovery=True,
            **tls_options(),
        )
    if tenant and client_id and secret:
        return ClientSecretCredential(
            tenant,
            client_id,
            secret,
            authority=settings.authority_host,
            disable_instance_discovery=True,
            **tls_options(),
        )
    return ManagedIdentityCredential(client_id=client_id or None)


class KeyVaultSecret:
    """A :class:`~shared_code.adapters.credentials.SecretSource` backed by one Key Vault secret.

    Args:
        settings: ``key_vault_url``, ``secret_name`` and ``secret_cache_seconds`` are used.
        credential: the vault identity (default: :func:`vault_credential`).
        clock: monotonic seconds (tests move time).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        credential: AsyncTokenCredential | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settings.key_vault_url:
            raise ValueError("KEY_VAULT_URL is not set")
        self._settings = settings
        self._vault_url = settings.key_vault_url
        self._name = settings.secret_name
        self._ttl = max(0, settings.secret_cache_seconds)
        self._credential = credential
        self._owns_credential = credential is None
        self._client: SecretClient | None = None
        self._clock = clock
        self._value: str | None = None
        self._version: str | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()
        self.reads = 0  # how often the vault was asked (observable for tests and logs)

    @property
    def version(self) -> str | None:
        """The version id of the cached secret (never the value)."""
        return self._version

    def _secret_client(self) -> SecretClient:
        if self._client is None:
            if self._credential is None:
                self._credential = vault_credential(self._settings)
            options: dict[str, Any] = tls_options()
            if not is_azure_vault(self._vault_url):
                # Local vaults (the simulator) do not live under vault.azure.net; see the module docstring.
                options["verify_challenge_resource"] = False
            self._client = SecretClient(self._vault_url, self._credential, **options)
        return self._client

    def _fresh(self) -> bool:
        return self._value is not None and self._clock() - self._read_at < self._ttl

    async def get_secret(self) -> str:
        """The current secret, from the cache while it is fresh.

        Raises:
            RetriableError: the vault is unreachable/throttled and nothing is cached.
            ConnectorCredentialError: the secret does not exist, is disabled/empty, or the identity may not read it
                (a connector-wide fault an operator must fix; never blamed on a tenant).
        """
        if self._fresh():
            assert self._value is not None
            return self._value
        async with self._lock:
            if self._fresh():  # another caller refreshed while we waited
                assert self._value is not None
                return self._value
            try:
                value, version = await self._read()
            except ConnectorCredentialError:
                raise  # the vault answered: the entry itself is wrong, a cached value must not hide that
            except RetriableError:
                if self._value is not None:
                    # Keep working on the last good value through a vault outage (the guidance: re-read only
                    # when the cached value stops working); the next call tries again.
                    log.warning("key vault unavailable; using the cached connector secret")
                    return self._value
                raise
            self._value, self._version, self._read_at = value, version, self._clock()
            return value

    async def _read(self) -> tuple[str, str | None]:
        self.reads += 1
        try:
            bundle = await self._secret_client().get_secret(self._name)
        except ResourceNotFoundError:
            raise ConnectorCredentialError(f"secret {self._name!r} not found in the key vault", status=404) from None
        except ClientAuthenticationError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is None or status == 429 or status >= 500:
                # The token endpoint (or the network) failed, not the identity's right to read.
                raise RetriableError(f"key vault identity unavailable ({type(exc).__name__})") from None
            # Messages from the identity layer may echo request details; keep only the type.
            raise ConnectorCredentialError(
                f"cannot authenticate to the key vault ({type(exc).__name__})", status=401
            ) from None
        except HttpResponseError as exc:
            status = exc.status_code
            if status is not None and (status == 429 or status >= 500):
                raise RetriableError(f"key vault answered HTTP {status}", status=status) from None
            msg = f"key vault refused the secret read (HTTP {status})"
            raise ConnectorCredentialError(msg, status=status) from None
        except (ServiceRequestError, ServiceResponseError, OSError) as exc:
            raise RetriableError(f"key vault unreachable: {type(exc).__name__}") from None
        if not bundle.value:
            raise ConnectorCredentialError(f"secret {self._name!r} is empty or disabled")
        version = bundle.properties.version if bundle.properties is not None else None
        log.info("read connector secret %s (version %s) from key vault", self._name, version)
        return bundle.value, version

    def invalidate(self) -> None:
        """Forget the cached value: the next :meth:`get_secret` reads the vault (after an auth failure)."""
        self._value = None
        self._read_at = 0.0

    async def close(self) -> None:
        """Close the vault client and the credential this instance created."""
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._credential is not None and self._owns_credential:
            await self._credential.close()
            self._credential = None
