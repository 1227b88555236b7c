"""``POST /api/sso/roles``: console roles of a console user, from their delegated Graph token (User.Read).

Body ``{"accessToken": "<user's Graph token>", "tenantId"?: "<guid>"}`` → ``{user, tenantId, roles,
matchedGroups}``. The user token is used for two Graph calls as that user and never stored or logged.
"""

from __future__ import annotations

import azure.functions as func

from functions.http_support import READ, ApiError, RequestContext, handle, invalid, json_response
from shared_code.domain.ids import is_guid
from shared_code.identity.sso import MAX_TOKEN_CHARS, UserTokenRejectedError, token_tenant
from shared_code.intune.wiring import build_intune
from shared_code.validation import Guid, Obj, Prop, Str

bp = func.Blueprint()  # type: ignore[no-untyped-call]

# openapi.yaml's SsoInput: unknown fields refused, tenantId a canonical GUID (as everywhere in the API).
SSO_BODY = Obj(
    {
        "accessToken": Prop(Str(max_length=MAX_TOKEN_CHARS, strip=False), required=True),
        "tenantId": Prop(Guid()),
    }
)


async def _roles(ctx: RequestContext) -> func.HttpResponse:
    body = ctx.body(SSO_BODY)
    # The tenant comes from the token: it must be a GUID too before it is used as a storage key.
    if not is_guid(token_tenant(body["accessToken"])):
        raise invalid("accessToken", "accessToken's tenant (tid) is not a GUID")
    try:
        result = await ctx.services.service(build_intune).sso.roles(body)
    except UserTokenRejectedError:
        raise ApiError(400, "user-token-rejected", "Graph rejected the user's token", field="accessToken") from None
    return json_response(result)


@bp.route(route="sso/roles", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def sso_roles(req: func.HttpRequest) -> func.HttpResponse:
    """Map a console user's Entra groups to console roles."""
    return await handle(req, READ, _roles)
