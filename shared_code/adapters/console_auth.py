"""Inbound authentication of the console: bearer JWTs issued by Entra ID for the connector's own API.

Validation (PyJWT + cryptography), in this order, so the cheap checks run before any network I/O:

1. ``Authorization: Bearer <jwt>`` present, one token, at most ``MAX_TOKEN_CHARS``.
2. Header: ``alg`` is RS256 (the only algorithm Entra signs access tokens with; ``none`` and ``HS*`` are refused
   before a key is even looked up, so a public key can never be used as an HMAC secret) and a ``kid`` is present.
3. Key: the ``kid`` is looked up in the authority's JWKS, discovered from
   ``{AZURE_AUTHORITY_HOST}/{CONSOLE_API_TENANT_ID}/v2.0/.well-known/openid-configuration`` and cached. An unknown
   ``kid`` refreshes the JWKS once, rate-limited (``min_refresh_seconds``), so a flood of forged ``kid`` values
   costs the authority at most one request per interval.
4. Claims: signature, ``exp``/``nbf`` (leeway ``LEEWAY_SECONDS``), ``iss``, ``aud`` = ``CONSOLE_API_AUDIENCE``,
   ``tid`` = ``CONSOLE_API_TENANT_ID``.
5. Authorization: the ``roles`` claim holds the route's app role; ``Console.Manage`` implies ``Console.Read``.

Issuers accepted: the v2 ``issuer`` of the tenant's OIDC document (``…/{tid}/v2.0``), and the v1 form
``https://sts.windows.net/{tid}/`` for the configured tenant only. Why v1: the version of an access token is chosen
by the *resource* app's manifest (``accessTokenAcceptedVersion``/``requestedAccessTokenVersion``; null or 1 means
v1), not by the endpoint the client used (learn.microsoft.com/entra/identity-platform/access-tokens, "Token
formats"). An operator who registers the connector API with the manifest default therefore receives v1 tokens.
Both forms are signed by the same tenant key set and both must carry ``tid`` = the configured tenant, so accepting
v1 widens nothing beyond "the same tenant's Entra signed it for our audience".

Errors: :class:`~shared_code.errors.AuthenticationError` (401) and :class:`~shared_code.errors.ForbiddenError`
(403) carry fixed, generic messages: never the token, never a claim value taken from it. An unreachable authority
with no usable cached key raises :class:`~shared_code.errors.RetriableError` (503): the caller did nothing wrong.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
from jwt import PyJWK

from shared_code.errors import AuthenticationError, ForbiddenError, RetriableError
from shared_code.settings import Settings

READ_ROLE = "Console.Read"
MANAGE_ROLE = "Console.Manage"
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
_FETCH_TIMEOUT = httpx.Timeout(10.0)
_COLD_RETRY_SECONDS = 5.0

log = logging.getLogger("connector.console_auth")


class JwtConsoleAuth:
    """Validates console bearer tokens against the configured Entra tenant.

    Args:
        settings: ``authority_host``, ``console_audience`` and ``console_tenant_id`` are used.
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
        self._audience = settings.console_audience
        self._tenant = settings.console_tenant_id
        self._http = http
        self._owns_http = http is None
        self._clock = clock
        self._min_refresh = min_refresh_seconds
        self._keys: dict[str, Any] = {}
        self._issuers: frozenset[str] = frozenset()
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()
        self.metadata_fetches = 0  # observable for tests: how often the authority was asked

    @property
    def metadata_url(self) -> str:
        """The OIDC discovery document of the console's tenant."""
        return f"{self._authority}/{self._tenant}/v2.0/.well-known/openid-configuration"

    async def authenticate(self, authorization: str | None, role: str) -> dict[str, Any]:
        """Validate the ``Authorization`` header and the caller's app role.

        Args:
            authorization: the raw header value (``None`` when absent).
            role: ``Console.Read`` or ``Console.Manage``.

        Returns:
            The verified claims.

        Raises:
            AuthenticationError: missing, malformed, expired, not yet valid, wrongly signed or addressed token.
            ForbiddenError: a valid token without the required app role.
            RetriableError: the authority's metadata cannot be fetched and no cached key applies.
        """
        if role not in _IMPLIED:
            raise ValueError(f"unknown console role {role!r}")  # programming error, not a caller error
        if not self._audience or not self._tenant:
            # Misconfiguration must never turn into "accept everything".
            raise AuthenticationError("console API authentication is not configured")
        token = _bearer(authorization)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationError("malformed bearer token") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthenticationError("unsupported token signing algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise AuthenticationError("token has no usable key id")
        key = await self._key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=self._audience,
                issuer=self._issuers | {f"https://sts.windows.net/{self._tenant}/"},
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "tid"], "verify_signature": True},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("token audience is not this API") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError("token issuer is not trusted") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError("token signature is invalid") from None
        except jwt.MissingRequiredClaimError:
            raise AuthenticationError("token lacks a required claim") from None
        except jwt.PyJWTError:
            raise AuthenticationError("invalid bearer token") from None
        if claims.get("tid") != self._tenant:
            raise AuthenticationError("token tenant is not trusted")
        roles = claims.get("roles")
        if not isinstance(roles, list) or not _IMPLIED[role].intersection(r for r in roles if isinstance(r, str)):
            raise ForbiddenError(f"the caller lacks the app role {role}")
        return claims

    async def _key(self, kid: str) -> Any:
        """The verification key for ``kid``; refreshes the cached JWKS when stale or when the kid is unknown."""
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at > JWKS_MAX_AGE_SECONDS
        if stale or kid not in self._keys:
            async with self._lock:
                now = self._clock()
                stale = self._fetched_at is None or now - self._fetched_at > JWKS_MAX_AGE_SECONDS
                # Another request may have refreshed while we waited for the lock.
                if stale or kid not in self._keys:
                    # Before the first successful fetch retry sooner (an outage at start-up), never unthrottled.
                    interval = self._min_refresh if self._keys else min(self._min_refresh, _COLD_RETRY_SECONDS)
                    throttled = self._last_attempt is not None and now - self._last_attempt < interval
                    if not throttled:
                        await self._refresh(now)
                    elif not self._keys:
                        raise RetriableError("identity provider metadata is unavailable")
        key = self._keys.get(kid)
        if key is None:
            raise AuthenticationError("token signing key is unknown")
        return key

    async def _refresh(self, now: float) -> None:
        self._last_attempt = now
        self.metadata_fetches += 1
        try:
            metadata = await self._get_json(self.metadata_url)
            issuer = metadata.get("issuer")
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(issuer, str) or not isinstance(jwks_uri, str) or not jwks_uri.startswith("https://"):
                raise ValueError("OIDC metadata lacks issuer or an https jwks_uri")
            if self._tenant not in issuer:
                # A tenant-specific document names its tenant in the issuer; anything else is the wrong document.
                raise ValueError("OIDC metadata issuer does not name the configured tenant")
            keys = _parse_jwks(await self._get_json(jwks_uri))
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("console auth: cannot refresh signing keys (%s)", type(exc).__name__)
            if not self._keys:
                raise RetriableError("identity provider metadata is unavailable") from None
            return  # keep serving with the keys we have
        self._keys = keys
        self._issuers = frozenset({issuer})
        self._fetched_at = now

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
