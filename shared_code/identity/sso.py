"""SSO role mapping: which console roles a signed-in console user holds, from their Entra group memberships.

The flow (docs/deploy.md, "Console sign-in"):

1. The console signs the user in with their own tenant and asks Entra for an access token **for the connector's
   API** with the delegated scope ``Console.SignIn`` (``api://<connector>/Console.SignIn``). A Microsoft Graph token
   is *not* accepted: Graph takes a ``User.Read`` token issued to any client app, so holding one proves nothing to us.
2. The connector validates that token locally (:class:`~shared_code.adapters.console_auth.SsoTokenValidator`):
   signature from the signing tenant's keys, ``iss`` = that tenant's v2 issuer, ``tid`` an active provisioned
   customer tenant, ``aud`` = our API, ``azp`` in ``CONSOLE_ALLOWED_CLIENT_IDS``, ``scp`` contains
   ``Console.SignIn``, not an app-only token, not expired.
3. Group membership comes **app-only**: ``GET /users/{oid}/transitiveMemberOf?$select=id`` with the connector's
   own token for that tenant (``graph.user_transitive_member_of``, ``User.Read.All``). Why not on-behalf-of: OBO
   would add a delegated permission (``User.Read``) to every customer's consent and hand the user's token to a
   second exchange; the application permission ``User.Read.All`` is one the connector already holds for
   enrollment (``/users?$expand=ownedDevices``), so SSO adds no permission at all (docs/permissions.md). The user
   is identified by the verified ``oid``, never by anything the caller chose. Ids only are read, so Graph's
   "limited information for inaccessible member objects" does not matter: role mappings are keyed by group id.

The sign-in token is used for validation only: it is never sent anywhere, stored or logged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from shared_code.adapters.graph import GraphClient
from shared_code.adapters.http_retry import UsageMeter
from shared_code.errors import AuthenticationError, ConnectorError, NotFoundError, ValidationError
from shared_code.permissions import call
from shared_code.tenants import TenantRepository

MAX_TOKEN_CHARS = 16 * 1024
log = logging.getLogger("connector.sso")


class UserTokenRejectedError(ConnectorError):
    """The console user's sign-in token is not valid for the connector (answered 401, reason logged)."""


class SignInValidator(Protocol):
    """Validates a console sign-in token (shared_code/adapters/console_auth.py: SsoTokenValidator)."""

    async def validate(self, token: str, provisioned: Callable[[str], Awaitable[bool]]) -> dict[str, Any]:
        """The verified claims, or AuthenticationError."""
        ...


class SsoService:
    """Maps a console user's groups to console roles per the tenant's role mappings."""

    def __init__(
        self,
        *,
        tenants: TenantRepository,
        validator: SignInValidator,
        graph_for: Callable[[str, UsageMeter], GraphClient],
    ) -> None:
        self._tenants = tenants
        self._validator = validator
        self._graph_for = graph_for

    async def _provisioned(self, tenant_id: str) -> bool:
        record = await self._tenants.get(tenant_id)
        return record is not None and record.state == "active"

    async def roles(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{accessToken, tenantId?}`` → ``{user, tenantId, roles, matchedGroups}``.

        Raises:
            ValidationError: ``tenantId`` differs from the token's tenant.
            UserTokenRejectedError: the sign-in token is not valid (any reason: the caller learns none).
            PermissionMissingError: the tenant did not grant User.Read.All.
            ConsentRequiredError, RetriableError: no token for the tenant, Graph unavailable.
        """
        token = body["accessToken"]
        try:
            claims = await self._validator.validate(token, self._provisioned)
        except AuthenticationError as exc:
            log.info("sso: sign-in token refused: %s", exc)
            raise UserTokenRejectedError("the sign-in token is not valid for this connector") from None
        tenant_id = str(claims["tid"]).lower()
        requested = body.get("tenantId")
        if requested is not None and str(requested).lower() != tenant_id:
            raise ValidationError("tenantId does not match the token's tenant", field="tenantId")
        record = await self._tenants.get(tenant_id)
        if record is None or record.state != "active":
            raise UserTokenRejectedError("the sign-in token is not valid for this connector")
        user_id = str(claims["oid"]).lower()
        try:
            group_ids = await self._member_of(tenant_id, user_id)
        except NotFoundError:
            # The user was deleted since the token was issued.
            raise UserTokenRejectedError("the sign-in token is not valid for this connector") from None
        matched = sorted({gid for gid, _ in record.config.role_mappings if gid.lower() in group_ids})
        roles = sorted({role for gid, role in record.config.role_mappings if gid.lower() in group_ids})
        return {
            "user": {
                "id": user_id,
                "displayName": claims.get("name"),
                "userPrincipalName": claims.get("preferred_username") or claims.get("upn"),
            },
            "tenantId": tenant_id,
            "roles": roles,
            "matchedGroups": matched,
        }

    async def _member_of(self, tenant_id: str, user_id: str) -> set[str]:
        """Ids of every group (and directory role / administrative unit) the user belongs to, transitively.

        Endpoint: ``GET /users/{id}/transitiveMemberOf?$select=id&$top=999`` (paged), app-only.
        Permission: User.Read.All (call ``graph.user_transitive_member_of``).

        Raises:
            NotFoundError: no such user. PermissionMissingError, ConsentRequiredError, RetriableError, FatalError:
            see ``raise_for_graph`` and TenantCredentials.get_token.
        """
        graph = self._graph_for(tenant_id, UsageMeter())
        ids: set[str] = set()
        try:
            async for page in graph.pages(
                f"/users/{user_id}/transitiveMemberOf",
                permission=call("graph.user_transitive_member_of").permission,
                params={"$select": "id", "$top": "999"},
                # A user is waiting on this call (graph.md §1: High only for user-initiated calls).
                headers={"x-ms-throttle-priority": "High"},
            ):
                ids.update(str(item.get("id", "")).lower() for item in page.get("value", ()))
        finally:
            await graph.aclose()
        return ids
