"""Inbound authentication: bearer JWTs Entra ID issues for the connector's own API (PyJWT + cryptography).

Two kinds of token reach us, and both are validated locally, never by passing them on:

* **Console tokens** (:class:`JwtConsoleAuth`, every route): issued by the vendor's tenant
  (``CONSOLE_API_TENANT_ID``) to an allow-listed console client (``CONSOLE_ALLOWED_CLIENT_IDS``).
* **SSO sign-in tokens** (:class:`SsoTokenValidator`, ``POST /api/sso/roles``): issued by a *customer* tenant for a
  console user, with the delegated scope ``Console.SignIn`` of the connector's API.

Validation, in this order, so the cheap checks run before any network I/O:

1. ``Authorization: Bearer <jwt>`` present, one token, at most ``MAX_TOKEN_CHARS``.
2. Header: ``alg`` is RS256 (``none`` and ``HS*`` are refused before a key is even looked up, so a public key can
   never be used as an HMAC secret) and a ``kid`` is present.
3. Key: the ``kid`` is looked up in the signing tenant's JWKS (:class:`TenantKeys`, from
   ``{AZURE_AUTHORITY_HOST}/{tenant}/v2.0/.well-known/openid-configuration``). An unknown ``kid`` refreshes the JWKS
   once, rate-limited (``min_refresh_seconds``). Cached keys are trusted for ``KEY_TRUST_SECONDS`` after the last
   successful refresh and no longer: past that, with the authority unreachable, requests get 503, not a pass.
4. Claims: signature, ``exp``/``nbf`` (leeway ``LEEWAY_SECONDS``), ``iss``, ``aud`` (both forms Entra issues for one
   API: ``api://<client id>`` and the bare client id), ``tid``.
5. Token policy (:func:`token_kind`): ID tokens are refused (they carry no ``azp``/``appid`` and may carry
   ``nonce``/``at_hash``/``c_hash``); the calling client (``azp`` in v2, ``appid`` in v1 tokens) must be
   allow-listed; the token kind must be the deployment's: ``CONSOLE_TOKEN_KIND=app`` (default: the console's backend
   calls with an app-only token, ``roles`` without ``scp``) or ``delegated`` (operators sign in: ``scp`` present,
   their app-role assignments in ``roles``).
6. Authorization (console tokens): ``roles`` holds the route's app role; ``Console.Manage`` implies ``Console.Read``.

Issuers: the v2 ``issuer`` of the tenant's OIDC document and, for console tokens, the v1 issuer named by the
tenant's v1 document (``{authority}/{tenant}/.well-known/openid-configuration``; ``https://sts.windows.net/{tid}/``
in the public cloud, another host in sovereign clouds), so nothing about the cloud is hard-coded. Why v1 at all: the
token version is chosen by the *resource* app's manifest (``requestedAccessTokenVersion``; null means v1), not by the
endpoint the client used (learn.microsoft.com/entra/identity-platform/access-tokens). SSO tokens must be v2.

Errors: :class:`~shared_code.errors.AuthenticationError` (401) and :class:`~shared_code.errors.ForbiddenError`
(403) carry fixed messages, never the token nor a claim value; the HTTP layer answers a 401 with a generic detail
and logs the reason. An unreachable authority with no usable cached key raises
:class:`~shared_code.errors.RetriableError` (503): the caller did nothing wrong.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jwt
from jwt import PyJWK

from shared_code.errors import AuthenticationError, ForbiddenError, RetriableError
from shared_code.settings import Settings

READ_ROLE = "Console.Read"
MANAGE_ROLE = "Console.Manage"
# The delegated scope the connector's API exposes for console sign-in (docs/deploy.md, "Console sign-in").
SSO_SCOPE = "Console.SignIn"
# Roles that satisfy a required role: Manage is a superset of Read.
_IMPLIED: dict[str, frozenset[str]] = {
    READ_ROLE: frozenset({READ_ROLE, MANAGE_ROLE}),
    MANAGE_ROLE: frozenset({MANAGE_ROLE}),
}
ALGORITHMS = ("RS256",)
# Entra access tokens are a few KiB; anything far larger is not one of them (and is not worth parsing).
MAX_TOKEN_CHARS = 16 * 1024
# Clock skew tolerance for exp/nbf. Microsoft.IdentityModel's default ClockSkew is 5 min; the brief caps it at 60 s.
LEEWAY_SECONDS = 60
# Microsoft.IdentityModel ConfigurationManager defaults: AutomaticRefreshInterval 12 h (scheduled re-fetch of the
# metadata) and RefreshInterval 5 min (the minimum time between forced refreshes, e.g. on an unknown kid). Entra
# publishes a new signing key in the JWKS well before it signs with it, so 5 min costs nothing in practice.
JWKS_MAX_AGE_SECONDS = 12 * 3600
MIN_REFRESH_SECONDS = 5 * 60
# How long keys stay trusted without a successful refresh (an authority outage, or a blocked metadata host): two
# scheduled refresh intervals. Entra can revoke a key in an emergency; we must notice within a bounded time.
KEY_TRUST_SECONDS = 24 * 3600
# Customer tenants whose keys the SSO validator keeps (least recently used dropped first).
MAX_SSO_TENANTS = 1000
TOKEN_KINDS = ("app", "delegated")
_FETCH_TIMEOUT = httpx.Timeout(10.0)
_COLD_RETRY_SECONDS = 5.0
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash")

# Fixed reasons for PyJWT's failures (logged by the HTTP layer; never a claim value).
_DECODE_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAudienceError, "token audience is not this API"),
    (jwt.InvalidIssuerError, "token issuer is not trusted"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim"),
)

log = logging.getLogger("connector.console_auth")

JsonGetter = Callable[[str], Awaitable[dict[str, Any]]]


def api_audiences(audience: str, client_id: str) -> frozenset[str]:
    """Both forms Entra puts in ``aud`` for one API: its App ID URI and its client id.

    v1 tokens carry the App ID URI as requested; v2 tokens carry the client id. ``api://<guid>`` and ``<guid>`` are
    each other's other form; a custom App ID URI (``api://mtd-connector``) belongs to the connector's own app
    registration (docs/deploy.md), whose client id is ``CONNECTOR_CLIENT_ID``.
    """
    if not audience:
        return frozenset()
    bare = audience.lower().removeprefix("api://")
    if _GUID.fullmatch(bare):
        return frozenset({audience, bare, f"api://{bare}"})
    return frozenset({audience, client_id.lower()}) if client_id else frozenset({audience})


def token_kind(claims: dict[str, Any]) -> str:
    """``app`` (client credentials) or ``delegated`` (a signed-in user) for an Entra *access* token.

    Raises:
        AuthenticationError: an ID token (or anything without a calling client), or an inconsistent ``idtyp``.
    """
    if any(name in claims for name in _ID_TOKEN_CLAIMS) or not (claims.get("azp") or claims.get("appid")):
        raise AuthenticationError("not an access token")
    idtyp = claims.get("idtyp")
    kind = "delegated" if claims.get("scp") else "app"
    if idtyp is not None and idtyp != ("user" if kind == "delegated" else "app"):
        raise AuthenticationError("token type is inconsistent")
    return kind


def client_of(claims: dict[str, Any]) -> str:
    """The client the token was issued to: ``azp`` (v2) or ``appid`` (v1), lower-cased."""
    return str(claims.get("azp") or claims.get("appid") or "").lower()


class TenantKeys:
    """One Entra tenant's signing keys and issuers from its OIDC documents, cached with bounded trust.

    Args:
        authority: ``AZURE_AUTHORITY_HOST`` without a trailing slash.
        tenant: the tenant id (lower-case GUID).
        get_json: fetches a JSON document over HTTPS.
        clock: seconds since the epoch.
        min_refresh_seconds: minimum interval between refreshes triggered by unknown ``kid`` values.
        v1_issuer: also learn the tenant's v1 issuer from its v1 document.
    """

    def __init__(
        self,
        authority: str,
        tenant: str,
        get_json: JsonGetter,
        clock: Callable[[], float],
        *,
        min_refresh_seconds: float = MIN_REFRESH_SECONDS,
        v1_issuer: bool = True,
    ) -> None:
        self._authority = authority
        self.tenant = tenant
        self._get_json = get_json
        self._clock = clock
        self._min_refresh = min_refresh_seconds
        self._with_v1 = v1_issuer
        self._keys: dict[str, Any] = {}
        self.v2_issuer = ""
        self.issuers: frozenset[str] = frozenset()
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0  # observable for tests: how often the authority was asked

    @property
    def metadata_url(self) -> str:
        """The tenant's v2 OIDC discovery document."""
        return f"{self._authority}/{self.tenant}/v2.0/.well-known/openid-configuration"

    def _stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at > JWKS_MAX_AGE_SECONDS

    async def key(self, kid: str) -> Any:
        """The verification key for ``kid``; refreshes the cached JWKS when stale or when the kid is unknown.

        Raises:
            AuthenticationError: the kid is not in the tenant's key set.
            RetriableError: no keys could be fetched, or none for longer than ``KEY_TRUST_SECONDS``.
        """
        now = self._clock()
        if self._stale(now) or kid not in self._keys:
            async with self._lock:
                now = self._clock()
                # Another request may have refreshed while we waited for the lock.
                if self._stale(now) or kid not in self._keys:
                    # Before the first successful fetch retry sooner (an outage at start-up), never unthrottled.
                    interval = self._min_refresh if self._keys else min(self._min_refresh, _COLD_RETRY_SECONDS)
                    throttled = self._last_attempt is not None and now - self._last_attempt < interval
                    if not throttled:
                        await self._refresh(now)
        if not self._keys:
            raise RetriableError("identity provider metadata is unavailable")
        assert self._fetched_at is not None
        if self._clock() - self._fetched_at > KEY_TRUST_SECONDS:
            # Keys we could not re-check for this long may have been revoked: stop trusting them.
            raise RetriableError("identity provider signing keys could not be refreshed")
        key = self._keys.get(kid)
        if key is None:
            raise AuthenticationError("token signing key is unknown")
        return key

    async def _refresh(self, now: float) -> None:
        self._last_attempt = now
        self.fetches += 1
        try:
            metadata = await self._get_json(self.metadata_url)
            issuer = metadata.get("issuer")
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(issuer, str) or not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
                raise ValueError("OIDC metadata lacks issuer or an https jwks_uri")
            if self.tenant not in issuer.lower():
                # A tenant-specific document names its tenant in the issuer; anything else is the wrong document.
                raise ValueError("OIDC metadata issuer does not name the tenant")
            keys = _parse_jwks(await self._get_json(jwks_uri))
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("token validation: cannot refresh the signing keys of %s (%s)", self.tenant,
                        type(exc).__name__)
            return  # keep serving with the keys we have, within KEY_TRUST_SECONDS
        issuers = {issuer}
        if self._with_v1:
            v1 = await self._v1_issuer()
            if v1:
                issuers.add(v1)
        self._keys, self.v2_issuer, self.issuers, self._fetched_at = keys, issuer, frozenset(issuers), now

    async def _v1_issuer(self) -> str | None:
        """The v1 issuer from the tenant's v1 document (its host differs per cloud), or None when unavailable."""
        try:
            v1 = (await self._get_json(f"{self._authority}/{self.tenant}/.well-known/openid-configuration"))
        except (httpx.HTTPError, ValueError) as exc:
            log.info("token validation: no v1 metadata for %s (%s); v2 tokens only", self.tenant, type(exc).__name__)
            return None
        issuer = v1.get("issuer")
        return issuer if isinstance(issuer, str) and self.tenant in issuer.lower() else None


class _Validator:
    """The shared parts: metadata fetching over one lazily built HTTPS client, header checks, decoding.

    Args:
        settings: ``authority_host``, ``console_audience``, ``client_id``, ``console_tenant_id``,
            ``console_allowed_client_ids`` and ``console_token_kind`` are used.
        http: an httpx client for the metadata fetches (tests may pass one); by default one is created lazily,
            trusting the CA bundle in ``SSL_CERT_FILE`` (or ``REQUESTS_CA_BUNDLE``) when set, else the system's.
        clock: seconds since the epoch (tests move time for the JWKS cache; token times use PyJWT's clock).
        min_refresh_seconds: minimum interval between JWKS re-fetches triggered by unknown ``kid`` values.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        min_refresh_seconds: float = MIN_REFRESH_SECONDS,
    ) -> None:
        self._authority = settings.authority_host.rstrip("/")
        self._audiences = api_audiences(settings.console_audience, settings.client_id)
        self._clients = frozenset(settings.console_allowed_client_ids)
        self._http = http
        self._owns_http = http is None
        self._clock = clock
        self._min_refresh = min_refresh_seconds
        self._configure(settings)

    def _configure(self, settings: Settings) -> None:
        """Subclasses read their own settings here."""

    def _tenant_keys(self, tenant: str, *, v1_issuer: bool) -> TenantKeys:
        return TenantKeys(self._authority, tenant, self._get_json, self._clock,
                          min_refresh_seconds=self._min_refresh, v1_issuer=v1_issuer)

    async def _decode(self, token: str, keys: TenantKeys, *, v2_only: bool) -> dict[str, Any]:
        """Signature, times, issuer (the tenant's v2 issuer, plus its v1 issuer unless ``v2_only``), audience and
        the calling client; the kid's key is fetched from ``keys``."""
        key = await keys.key(_kid(token))
        issuers = [keys.v2_issuer] if v2_only else list(keys.issuers)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=list(self._audiences),
                issuer=issuers,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "tid"], "verify_signature": True},
            )
        except jwt.PyJWTError as exc:
            reason = next((text for kind, text in _DECODE_REASONS if isinstance(exc, kind)), "invalid bearer token")
            raise AuthenticationError(reason) from None
        if client_of(claims) not in self._clients:
            token_kind(claims)  # an ID token is named as such, not as a foreign client
            raise AuthenticationError("token was issued to a client that is not allowed")
        return claims

    async def _get_json(self, url: str) -> dict[str, Any]:
        if self._http is None:
            # Extra trust (the simulator's test CA locally): SSL_CERT_FILE, else REQUESTS_CA_BUNDLE (ARCHITECTURE §5).
            bundle = os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE")
            verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=bundle) if bundle else True
            self._http = httpx.AsyncClient(timeout=_FETCH_TIMEOUT, follow_redirects=False, verify=verify)
        response = await self._http.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        body = response.json()
        if not isinstance(body, dict):
            raise ValueError("metadata is not a JSON object")
        return body

    async def close(self) -> None:
        """Close the HTTP client this instance created."""
        if self._http is not None and self._owns_http:
            await self._http.aclose()
            self._http = None


class JwtConsoleAuth(_Validator):
    """Validates console bearer tokens against the configured vendor tenant and token policy (see _Validator)."""

    def _configure(self, settings: Settings) -> None:
        self._tenant = settings.console_tenant_id
        self._kind = settings.console_token_kind
        self._keys = self._tenant_keys(self._tenant, v1_issuer=True)

    @property
    def metadata_url(self) -> str:
        """The OIDC discovery document of the console's tenant."""
        return self._keys.metadata_url

    @property
    def metadata_fetches(self) -> int:
        """How often the authority was asked (observable for tests)."""
        return self._keys.fetches

    async def authenticate(self, authorization: str | None, role: str) -> dict[str, Any]:
        """Validate the ``Authorization`` header, the token policy and the caller's app role.

        Args:
            authorization: the raw header value (``None`` when absent).
            role: ``Console.Read`` or ``Console.Manage``.

        Returns:
            The verified claims.

        Raises:
            AuthenticationError: missing, malformed, expired, not yet valid, wrongly signed or addressed token; an
                ID token; a client not allow-listed; a token kind this deployment does not accept.
            ForbiddenError: a valid token without the required app role.
            RetriableError: the authority's metadata cannot be fetched and no cached key applies.
        """
        if role not in _IMPLIED:
            raise ValueError(f"unknown console role {role!r}")  # programming error, not a caller error
        if not self._audiences or not self._tenant or not self._clients:
            # Misconfiguration must never turn into "accept everything".
            raise AuthenticationError("console API authentication is not configured")
        token = _bearer(authorization)
        claims = await self._decode(token, self._keys, v2_only=False)
        if str(claims.get("tid", "")).lower() != self._tenant:
            raise AuthenticationError("token tenant is not trusted")
        if token_kind(claims) != self._kind:
            raise AuthenticationError(f"this deployment accepts {self._kind} console tokens only")
        roles = claims.get("roles")
        if not isinstance(roles, list) or not _IMPLIED[role].intersection(r for r in roles if isinstance(r, str)):
            raise ForbiddenError(f"the caller lacks the app role {role}")
        return claims


class SsoTokenValidator(_Validator):
    """Validates a console user's sign-in token: issued by a provisioned customer tenant for ``Console.SignIn``.

    The signing tenant is read from the unverified ``tid`` only to pick whose keys to use, and only after the
    tenant is found provisioned (so a caller cannot make us fetch any tenant's metadata); the verified ``tid``
    must then equal it and ``iss`` must be that tenant's v2 issuer.
    """

    def _configure(self, settings: Settings) -> None:
        self._tenants: OrderedDict[str, TenantKeys] = OrderedDict()

    async def validate(self, token: str, provisioned: Callable[[str], Awaitable[bool]]) -> dict[str, Any]:
        """The verified claims of a sign-in token (``oid``, ``tid``, ``name``, ``preferred_username`` …).

        Args:
            token: the raw JWT.
            provisioned: whether a tenant id is an active customer tenant.

        Raises:
            AuthenticationError: anything but a valid delegated ``Console.SignIn`` token of a provisioned tenant
                issued to an allow-listed client.
            RetriableError: the tenant's metadata cannot be fetched and no cached key applies.
        """
        if not self._audiences or not self._clients:
            raise AuthenticationError("console sign-in is not configured")
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationError("token is too large")
        _kid(token)
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthenticationError("malformed token") from None
        tenant = str(unverified.get("tid", "")).lower()
        if not _GUID.fullmatch(tenant) or not await provisioned(tenant):
            raise AuthenticationError("token tenant is not a provisioned customer tenant")
        keys = self._keys_for(tenant)
        claims = await self._decode(token, keys, v2_only=True)
        if str(claims.get("tid", "")).lower() != tenant:
            raise AuthenticationError("token tenant is not trusted")
        if token_kind(claims) != "delegated":
            raise AuthenticationError("an app-only token cannot sign a user in")
        if SSO_SCOPE not in str(claims.get("scp", "")).split():
            raise AuthenticationError(f"token lacks the scope {SSO_SCOPE}")
        if not _GUID.fullmatch(str(claims.get("oid", "")).lower()):
            raise AuthenticationError("token names no user")
        return claims

    def _keys_for(self, tenant: str) -> TenantKeys:
        keys = self._tenants.get(tenant)
        if keys is None:
            keys = self._tenant_keys(tenant, v1_issuer=False)
            self._tenants[tenant] = keys
            while len(self._tenants) > MAX_SSO_TENANTS:
                self._tenants.popitem(last=False)
        else:
            self._tenants.move_to_end(tenant)
        return keys


def _kid(token: str) -> str:
    """The header's ``kid`` after the algorithm check (before any key is looked up)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthenticationError("malformed bearer token") from None
    if header.get("alg") not in ALGORITHMS:
        raise AuthenticationError("unsupported token signing algorithm")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 256:
        raise AuthenticationError("token has no usable key id")
    return kid


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthenticationError("missing bearer token")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthenticationError("malformed Authorization header: expected 'Bearer <token>'")
    if len(token) > MAX_TOKEN_CHARS:
        raise AuthenticationError("bearer token is too large")
    return token


def _parse_jwks(document: dict[str, Any]) -> dict[str, Any]:
    """RSA signing keys by kid (others — encryption keys, other key types — are skipped)."""
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, list):
        raise ValueError("JWKS has no keys array")
    keys: dict[str, Any] = {}
    for raw in raw_keys:
        if not isinstance(raw, dict) or raw.get("kty") != "RSA" or raw.get("use", "sig") != "sig":
            continue
        kid = raw.get("kid")
        if not isinstance(kid, str):
            continue
        try:
            keys[kid] = PyJWK.from_dict(raw, algorithm="RS256").key
        except (jwt.PyJWTError, ValueError, TypeError):
            continue  # one malformed key must not take down the others
    if not keys:
        raise ValueError("JWKS holds no usable RSA signing key")
    return keys
