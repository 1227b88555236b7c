"""Tokens for customer tenants, from the connector's one multi-tenant app credential (azure-identity).

Tokens are cached by azure-identity per credential; we keep one credential per customer tenant and rebuild it when
the secret source says the secret changed (rotation) or a token request is rejected for a bad secret. Every
credential sends on one shared aiohttp session: a session per credential (azure-identity's default) held
200–350 KiB per cached tenant — a worker that had polled 1,000 tenants sat at 220–305 MiB, 118 MiB with the shared
session — and opened a TLS connection per token request (bench/notes/issue9.md, "Fleet profile").
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import ssl
import urllib.request
from typing import Any, Protocol

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError
from azure.identity.aio import CertificateCredential, ClientSecretCredential

from shared_code.errors import (
    ConnectorCredentialError,
    ConsentRequiredError,
    CredentialRejectedError,
    RetriableError,
)

_AADSTS = re.compile(r"AADSTS(\d+)")
# AADSTS codes that mean "this tenant has not (or no longer) consented / the app is not there": the customer must
# act; retrying cannot help. 65001 consent missing, 7000229 no service principal, 700016 app not found in tenant,
# 90002 tenant not found, 500011 resource principal not found in tenant.
_CONSENT_CODES = frozenset({"65001", "7000229", "700016", "90002", "500011", "50020"})
# Bad or expired client secret: refresh it from the secret source once, then give up.
_BAD_SECRET_CODES = frozenset({"7000215", "7000222"})


def tls_options() -> dict[str, Any]:
    """Extra trust for azure-core clients: REQUESTS_CA_BUNDLE / SSL_CERT_FILE (ARCHITECTURE §5).

    Passed explicitly because aiohttp builds its default SSL context at import time and would miss a CA bundle
    configured later in the process (the local simulator's test CA).
    """
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    return {"connection_verify": bundle} if bundle else {}


def env_proxies() -> bool:
    """Whether azure-core/aiohttp clients should read proxy settings from the environment (``trust_env``).

    Only when a proxy is configured: with it on, aiohttp re-reads ``~/.netrc`` and the proxy environment in a worker
    thread on every request, to find what is fixed for the process (two thread hand-offs per storage call).
    """
    return bool(urllib.request.getproxies())


def certificate_bytes(material: str) -> bytes:
    """The connector certificate (with its private key) as bytes azure-identity accepts.

    A Key Vault certificate's private key is read as the secret of the same name: PEM text when the certificate's
    content type is ``application/x-pem-file``, else base64 of a PKCS#12 file (Key Vault "Certificate composition",
    learn.microsoft.com/azure/key-vault/certificates/about-certificates).

    Raises:
        ConnectorCredentialError: the material is neither PEM nor base64 (it cannot sign an assertion; an operator
            must fix the vault entry, no tenant is at fault).
    """
    text = material.strip()
    if text.startswith("-----BEGIN"):
        return text.encode()
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        msg = "the connector certificate in Key Vault is neither PEM nor base64 PKCS#12"
        raise ConnectorCredentialError(msg) from None


class SecretSource(Protocol):
    """Where the connector's client secret comes from (Key Vault in Azure, an env var locally)."""

    async def get_secret(self) -> str:
        """Return the current secret (cached)."""
        ...

    def invalidate(self) -> None:
        """Forget the cached secret so the next get re-reads it (after an auth failure)."""
        ...


class StaticSecret:
    """A secret given directly (``CONNECTOR_CLIENT_SECRET``, local runs only)."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    async def get_secret(self) -> str:
        """Return the secret."""
        return self._secret

    def invalidate(self) -> None:
        """Nothing to re-read."""


class TenantCredentials:
    """Hands out access tokens for (customer tenant, resource scope)."""

    def __init__(
        self, *, client_id: str, authority_host: str, secret_source: SecretSource, credential_type: str = "secret"
    ) -> None:
        if credential_type not in ("secret", "certificate"):
            msg = f"credential type must be 'secret' or 'certificate', got {credential_type!r}"
            raise ValueError(msg)
        self._client_id = client_id
        self._authority = authority_host
        self._secrets = secret_source
        self._certificate = credential_type == "certificate"
        self._credentials: dict[str, tuple[str, AsyncTokenCredential]] = {}
        self._retired: list[AsyncTokenCredential] = []
        self._session: Any = None  # aiohttp.ClientSession shared by every credential (see the module docstring)
        self._transport: Any = None

    def _shared_transport(self) -> Any:
        """The azure-core transport every credential sends on (one aiohttp session, opened in the running loop)."""
        if self._transport is None:
            import aiohttp
            from azure.core.pipeline.transport import AioHttpTransport

            # As azure-core builds its own session, but shared: a credential's close leaves it open (not its owner).
            # The extra CA (tls_options) is the connector's default context, built once: azure-core's
            # ``connection_verify=<path>`` builds an SSL context per request, and aiohttp reuses a kept-alive
            # connection only for the same context — every token request would open a new TLS connection.
            bundle = tls_options().get("connection_verify")
            connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=bundle)) if bundle else None
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=env_proxies(), cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
            self._transport = AioHttpTransport(session=self._session, session_owner=False)
        return self._transport

    async def _credential(self, tenant_id: str) -> AsyncTokenCredential:
        material = await self._secrets.get_secret()
        cached = self._credentials.get(tenant_id)
        if cached is not None and cached[0] == material:
            return cached[1]
        if cached is not None:
            await cached[1].close()
        options: dict[str, Any] = {
            "authority": self._authority,
            # Instance discovery asks login.microsoftonline.com about the authority; the authority is a setting.
            "disable_instance_discovery": True,
            # TLS trust (tls_options) is the shared transport's.
            "transport": self._shared_transport(),
        }
        credential: AsyncTokenCredential
        if self._certificate:
            try:
                credential = CertificateCredential(
                    tenant_id, self._client_id, certificate_data=certificate_bytes(material), **options
                )
            except (ValueError, TypeError):
                # azure-identity parses the certificate here: base64 that is no PKCS#12/PEM key pair lands here.
                msg = "the connector certificate in Key Vault cannot be loaded (no private key or malformed)"
                raise ConnectorCredentialError(msg) from None
        else:
            credential = ClientSecretCredential(tenant_id, self._client_id, material, **options)
        self._credentials[tenant_id] = (material, credential)
        return credential

    async def get_token(self, tenant_id: str, scope: str) -> str:
        """Return a bearer token for ``scope`` in ``tenant_id``.

        Raises:
            ConsentRequiredError: the tenant has not consented, revoked consent, or does not exist (AADSTS code kept).
            ConnectorCredentialError: the connector's own secret/certificate is unreadable, malformed or rejected.
            RetriableError: the token endpoint is unavailable.
        """
        for attempt in (1, 2):
            credential = await self._credential(tenant_id)
            try:
                token = await credential.get_token(scope)
            except ClientAuthenticationError as exc:
                message = str(exc.message or exc)
                match = _AADSTS.search(message)
                code = match.group(1) if match else None
                if code in _BAD_SECRET_CODES and attempt == 1:
                    self._secrets.invalidate()
                    continue
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if code is None and (status is None or status >= 500 or status == 429):
                    raise RetriableError(f"token endpoint unavailable (HTTP {status})", status=status) from None
                if code in _BAD_SECRET_CODES:
                    # Our own credential is wrong (every tenant is affected): not the customer's consent.
                    raise CredentialRejectedError(
                        f"the connector's credential was rejected (AADSTS{code}); check the Key Vault secret"
                    ) from None
                if code is None or code in _CONSENT_CODES:
                    # Keep only the AADSTS code: the message can echo request details.
                    raise ConsentRequiredError(
                        f"token request for tenant {tenant_id} rejected (AADSTS{code or '?'})", aadsts=code
                    ) from None
                raise RetriableError(f"token endpoint error AADSTS{code}") from None
            except (AzureError, OSError) as exc:
                raise RetriableError(f"token endpoint unreachable: {type(exc).__name__}") from None
            return token.token
        raise CredentialRejectedError("the connector's credential was rejected twice")

    async def forget(self, tenant_id: str) -> None:
        """Drop the tenant's credential and its cached tokens, so the next get_token asks Entra again.

        For a token the resource rejects (401) although it has not expired: signing keys rolled, consent changed,
        or Intune's "intermittently rejects freshly-issued access tokens" (reference/intune.md §2).
        """
        cached = self._credentials.pop(tenant_id, None)
        if cached is not None:
            # Not closed here: another coroutine of the same tenant may be mid-request with it, and a closed
            # azure-identity credential raises ValueError. Retired credentials are closed with the others.
            self._retired.append(cached[1])

    def credential_for(self, tenant_id: str) -> AsyncTokenCredential | None:
        """The cached azure-identity credential for a tenant (for SDK clients that take a credential)."""
        cached = self._credentials.get(tenant_id)
        return cached[1] if cached else None

    async def close(self) -> None:
        """Close every credential's transport."""
        for _, credential in self._credentials.values():
            await credential.close()
        for credential in self._retired:
            await credential.close()
        self._credentials.clear()
        self._retired.clear()
        if self._session is not None:
            await self._session.close()
        self._session = self._transport = None
