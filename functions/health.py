"""Health: ``GET /api/health`` (the only anonymous route: says the app is up and nothing else — no versions, no
settings) and ``GET /api/connector`` (Console.Read: the connector-level state, e.g. a broken Key Vault credential
that fails every tenant alike; see shared_code/connector_status.py)."""

from __future__ import annotations

import azure.functions as func

from functions.http_support import READ, RequestContext, handle, json_response
from shared_code.adapters.tenant_store import build_connector_status

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness probe for load balancers and the console."""
    return json_response({"status": "ok"})


async def _connector(ctx: RequestContext) -> func.HttpResponse:
    ctx.allow_query()
    return json_response({"credential": await ctx.services.service(build_connector_status).get()})


@bp.route(route="connector", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def connector_state(req: func.HttpRequest) -> func.HttpResponse:
    """The connector-level state (credential faults that are no tenant's)."""
    return await handle(req, READ, _connector)
