"""SSO role mapping: which console roles a signed-in console user holds, from their Entra group memberships.

The console passes the user's delegated Microsoft Graph token (scope ``User.Read``). We call Graph **as that user**:

* ``GET /me?$select=id,displayName,userPrincipalName`` — who they are (``User.Read``; user-get).
* ``POST /me/getMemberObjects {"securityEnabledOnly": false}`` — the ids of every group (and directory role /
  administrative unit) they belong to, **transitively**. For the signed-in user the least-privileged delegated
  permission is ``User.Read`` ("Memberships for the signed-in user",
  https://learn.microsoft.com/graph/api/directoryobject-getmemberobjects). It returns ids only, so Graph's "limited
  information for inaccessible member objects" rule (which blanks group names under User.Read for ``/me/memberOf``)
  does not matter: role mappings are keyed by group id. Nested groups count, which ``/me/memberOf`` (direct only)
  would miss.

Why not :class:`shared_code.adapters.graph.GraphClient`: it authenticates every request with the connector's own
app token for a customer tenant (``TenantCredentials.get_token``), and on a 401 it drops and renews that token —
neither makes sense for a token the console user handed us. So SSO sends its two requests itself, but over the very
same HTTP stack as GraphClient: ``RetryTransport`` (the one retry layer) in ``graph_http_client`` (whose msgraph-core
middleware only runs for SDK requests, not for these raw ones), and errors mapped by the same ``raise_for_graph``.

The user token is used for these two requests only: it is never stored, logged, or sent anywhere but Graph, and
error messages never include it. The tenant is the token's ``tid`` claim, read without verification only to pick the
tenant's role mappings — Graph verifies the token, and nothing is answered unless Graph accepted it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import orjson

from shared_code.adapters.graph import graph_http_client, raise_for_graph
from shared_code.adapters.http_retry import RetryTransport, UsageMeter
from shared_code.errors import ConnectorError, NotFoundError, RetriableError, ValidationError
from shared_code.permissions import call
from shared_code.tenants import TenantRepository

MAX_TOKEN_CHARS = 16 * 1024


class UserTokenRejectedError(ConnectorError):
    """Graph rejected the console user's token (expired, wrong audience, revoked)."""


def token_tenant(user_token: str) -> str:
    """The ``tid`` claim of a JWT, unverified (Graph verifies the token itself).

    Raises:
        ValidationError: not a JWT or no ``tid``.
    """
    try:
        claims = jwt.decode(user_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise ValidationError("accessToken is not a JWT", field="accessToken") from None
    tid = claims.get("tid")
    if not isinstance(tid, str) or not tid:
        raise ValidationError("accessToken carries no tenant (tid)", field="accessToken")
    return tid


class SsoService:
    """Maps a console user's groups to console roles per the tenant's role mappings."""

    def __init__(
        self,
        *,
        tenants: TenantRepository,
        graph_base_url: str,
        max_retries: int,
        transport_factory: Callable[[], httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        self._tenants = tenants
        self._v1 = graph_base_url.rstrip("/") + "/v1.0"
        self._max_retries = max_retries
        self._transport_factory = transport_factory or (lambda: httpx.AsyncHTTPTransport(retries=0))
        self.meter = UsageMeter()

    async def roles(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{accessToken, tenantId?}`` → ``{user, tenantId, roles, matchedGroups}``.

        Raises:
            ValidationError: bad body (field named).
            NotFoundError: the user's tenant is not provisioned.
            UserTokenRejectedError: Graph rejected the user token.
            PermissionMissingError: the user token lacks User.Read.
            RetriableError: Graph unavailable.
        """
        for name in body:
            if name not in ("accessToken", "tenantId"):
                raise ValidationError(f"unknown field '{name}'", field=name)
        token = body.get("accessToken")
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise ValidationError("accessToken (the user's delegated Graph token) is required", field="accessToken")
        tenant_id = token_tenant(token)
        requested = body.get("tenantId")
        if requested is not None and (not isinstance(requested, str) or requested.lower() != tenant_id.lower()):
            raise ValidationError("tenantId does not match the token's tenant", field="tenantId")
        record = await self._tenants.get(tenant_id)
        if record is None or record.state != "active":
            raise NotFoundError(f"tenant {tenant_id} is not provisioned", status=404)

        # Built exactly as GraphClient builds its client (same retry layer), per request because the
        # token is the caller's; see the module docstring for why GraphClient itself cannot be used.
        retry = RetryTransport(
            self._transport_factory(), max_retries=self._max_retries, meter_for=lambda _: self.meter
        )
        async with graph_http_client(retry) as http:
            me = await self._send(http, token, "GET", "/me?$select=id,displayName,userPrincipalName", "graph.me")
            member = await self._send(
                http, token, "POST", "/me/getMemberObjects", "graph.me_get_member_objects",
                {"securityEnabledOnly": False},
            )
        group_ids = {str(g).lower() for g in member.get("value", [])}
        matched = sorted({gid for gid, _ in record.config.role_mappings if gid.lower() in group_ids})
        roles = sorted({role for gid, role in record.config.role_mappings if gid.lower() in group_ids})
        return {
            "user": {
                "id": me.get("id"),
                "displayName": me.get("displayName"),
                "userPrincipalName": me.get("userPrincipalName"),
            },
            "tenantId": tenant_id,
            "roles": roles,
            "matchedGroups": matched,
        }

    async def _send(
        self, http: httpx.AsyncClient, token: str, method: str, path: str, name: str, body: Any = None
    ) -> dict[str, Any]:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "client-request-id": str(uuid.uuid4()),
            # A user is waiting on this call (graph.md §1: High only for user-initiated calls).
            "x-ms-throttle-priority": "High",
        }
        content = None
        if body is not None:
            content = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            response = await http.request(method, self._v1 + path, headers=headers, content=content)
        except httpx.HTTPError as exc:
            raise RetriableError(f"Graph unreachable: {type(exc).__name__}") from None
        if response.status_code == 401:
            raise UserTokenRejectedError("Graph rejected the user's token")
        raise_for_graph(response, permission=call(name).permission)
        parsed: dict[str, Any] = orjson.loads(response.content)
        return parsed
