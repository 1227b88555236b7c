"""Bearer-token validation for the simulated resources, the Principal the handlers see, and shared app keys.

Route families and the audiences each accepts (public cloud shown; ``SIMULATOR_CLOUD`` swaps in another cloud's,
simulator/clouds.py):
- Graph `/v1.0/*`: `https://graph.microsoft.com` or `00000003-0000-0000-c000-000000000000`
  (v1.0 tokens' `aud` "can be the client ID or the resource URI used in the request":
  https://learn.microsoft.com/entra/identity-platform/access-token-claims-reference).
- Intune partner services `/intune/*`: `https://api.manage.microsoft.com/` with or without the trailing slash.
- Key Vault `/secrets/*`: `https://vault.azure.net` (with or without trailing slash).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from aiohttp import web

from simulator.entra import GRAPH_RESOURCE, INTUNE_RESOURCE, VAULT_RESOURCE, Entra
from simulator.faults import Faults
from simulator.throttle import Clock, Throttle


@dataclass(frozen=True)
class Principal:
    tenant_id: str  # tid
    app_id: str  # appid / azp
    audience: str  # aud
    roles: frozenset[str]  # application permissions (admin-consented) — app tokens
    scopes: frozenset[str]  # delegated scopes (scp, space-separated in the JWT) — user tokens
    user_id: str | None  # oid for delegated tokens


WORLD: web.AppKey[Any] = web.AppKey("sim_world", object)
THROTTLE: web.AppKey[Throttle] = web.AppKey("sim_throttle", Throttle)
FAULTS: web.AppKey[Faults] = web.AppKey("sim_faults", Faults)
CLOCK: web.AppKey[Clock] = web.AppKey("sim_clock", Clock)
ENTRA: web.AppKey[Entra] = web.AppKey("sim_entra", Entra)
INFO: web.AppKey[dict[str, Any]] = web.AppKey("sim_info")

# The active cloud's resources (simulator/clouds.py): another cloud's audience is refused, as Azure would.
GRAPH_AUDIENCES = frozenset({GRAPH_RESOURCE, GRAPH_RESOURCE + "/", "00000003-0000-0000-c000-000000000000"})
INTUNE_AUDIENCES = frozenset({INTUNE_RESOURCE, INTUNE_RESOURCE.rstrip("/")})
VAULT_AUDIENCES = frozenset({VAULT_RESOURCE, VAULT_RESOURCE + "/"})


def family(path: str) -> str | None:
    """Which protected resource a path belongs to (None = unauthenticated route)."""
    if path.startswith("/v1.0/") or path == "/v1.0":
        return "graph"
    if path.startswith("/intune/"):
        return "intune"
    if path.startswith("/secrets"):
        return "keyvault"
    return None


AUDIENCES = {"graph": GRAPH_AUDIENCES, "intune": INTUNE_AUDIENCES, "keyvault": VAULT_AUDIENCES}


class TokenError(Exception):
    def __init__(self, message: str, empty: bool = False) -> None:
        super().__init__(message)
        self.empty = empty


class TokenValidator:
    """Validates simulator-issued RS256 tokens with a small cache (tokens are reused for an hour by clients)."""

    def __init__(self, entra: Entra) -> None:
        self.entra = entra
        self._cache: dict[str, tuple[Principal, float, str]] = {}

    def validate(self, token: str, audiences: frozenset[str]) -> Principal:
        hit = self._cache.get(token)
        now = time.time()
        if hit is not None:
            principal, exp, kid = hit
            if exp <= now:
                raise TokenError("Access token has expired or is not yet valid.")
            if self.entra.key_by_kid(kid) is None:
                raise TokenError("Access token signature validation failed: unknown signing key (kid).")
            if principal.audience not in audiences:
                raise TokenError("Invalid audience.")
            return principal
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("IDX14100: JWT is not well formed.") from exc
        kid = str(header.get("kid", ""))
        key = self.entra.key_by_kid(kid)
        if key is None:
            raise TokenError("Access token signature validation failed: unknown signing key (kid).")
        try:
            claims = jwt.decode(token, key.private_key.public_key(), algorithms=["RS256"],
                                options={"verify_aud": False, "require": ["exp", "tid", "aud"]})
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("Access token has expired or is not yet valid.") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenError("Access token has expired or is not yet valid.") from exc
        except jwt.PyJWTError as exc:
            raise TokenError(f"Access token validation failure. {exc}") from exc
        aud = claims.get("aud")
        scp = claims.get("scp")
        roles = claims.get("roles") or []
        principal = Principal(
            tenant_id=str(claims.get("tid")),
            app_id=str(claims.get("appid") or claims.get("azp") or ""),
            audience=str(aud),
            roles=frozenset(str(r) for r in roles) if isinstance(roles, list) else frozenset(),
            scopes=frozenset(str(scp).split()) if scp else frozenset(),
            user_id=str(claims.get("oid")) if scp and claims.get("oid") else None,
        )
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[token] = (principal, float(claims["exp"]), kid)
        if principal.audience not in audiences:
            raise TokenError("Access token validation failure. Invalid audience.")
        return principal


def bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


def graph_error(status: int, code: str, message: str, request: web.Request,
                headers: dict[str, str] | None = None) -> web.Response:
    """Graph's error shape (https://learn.microsoft.com/graph/errors)."""
    rid = str(uuid.uuid4())
    body = {"error": {"code": code, "message": message, "innerError": {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "request-id": rid,
        "client-request-id": request.headers.get("client-request-id", rid)}}}
    h = {"request-id": rid, "client-request-id": request.headers.get("client-request-id", rid)}
    h.update(headers or {})
    return web.json_response(body, status=status, headers=h)


def keyvault_challenge(request: web.Request, status: int = 401, message: str | None = None) -> web.Response:
    """Key Vault's 401 challenge (azure.md §7): WWW-Authenticate names the authority/tenant and the resource."""
    entra = request.app[ENTRA]
    challenge = (f'Bearer authorization="{entra.base_url}/{entra.vendor_tenant}", '
                 f'resource="{VAULT_RESOURCE}"')
    body = {"error": {"code": "Unauthorized",
                      "message": message or "AKV10000: Request is missing a Bearer or PoP token."}}
    return web.json_response(body, status=status, headers={"WWW-Authenticate": challenge})


def intune_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """Error shape of the simulated Intune partner services (OData v3 style, as the api-version 1.x services use;
    the real shape is not public, so ErrorDetail is repeated at top level like Fleet reads it)."""
    body = {"odata.error": {"code": code, "message": {"lang": "en-US", "value": message}},
            "ErrorDetail": message, "HttpStatusCode": status}
    return web.json_response(body, status=status, headers=headers)


def unauthorized(fam: str, request: web.Request, message: str) -> web.Response:
    if fam == "graph":
        # Graph answers 401 InvalidAuthenticationToken for missing/invalid tokens (https://learn.microsoft.com/graph/errors).
        return graph_error(401, "InvalidAuthenticationToken", message, request)
    if fam == "keyvault":
        return keyvault_challenge(request, message=message)
    return intune_error(401, "Unauthorized", message,
                        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def authenticate(request: web.Request, fam: str, validator: TokenValidator) -> web.Response | None:
    """Validate the bearer token for a protected family; store request["principal"]; return an error response."""
    token = bearer(request)
    if token is None or token == "":
        msg = "Access token is empty." if fam != "keyvault" else "AKV10000: Request is missing a Bearer or PoP token."
        return unauthorized(fam, request, msg)
    try:
        request["principal"] = validator.validate(token, AUDIENCES[fam])
    except TokenError as exc:
        return unauthorized(fam, request, str(exc))
    return None
