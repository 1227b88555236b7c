"""``POST /api/sso/roles``: console roles of a console user, from a sign-in token for the connector's own API.

Body ``{"accessToken": "<the user's token for api://<connector>/Console.SignIn>", "tenantId"?: "<guid>"}`` →
``{user, tenantId, roles, matchedGroups}``. The token is validated locally (shared_code/identity/sso.py) and never
stored, logged or sent anywhere. Any invalid sign-in token is 401 ``user-token-rejected`` with a generic detail:
the caller does not learn whether the tenant is provisioned, the token expired or the scope was missing.
"""

from __future__ import annotations

import azure.functions as func

from functions.http_support import READ, ApiError, RequestContext, handle, json_response
from shared_code.identity.sso import MAX_TOKEN_CHARS, UserTokenRejectedError
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
    try:
        result = await ctx.services.service(build_intune).sso.roles(body)
    except UserTokenRejectedError:
        raise ApiError(401, "user-token-rejected", "the sign-in token is not valid for this connector",
                       field="accessToken") from None
    return json_response(result)


@bp.route(route="sso/roles", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def sso_roles(req: func.HttpRequest) -> func.HttpResponse:
    """Map a console user's Entra groups to console roles."""
    return await handle(req, READ, _roles)
