"""Tenant provisioning: ``PUT|GET|DELETE /api/tenants/{tenantId}``.

PUT validates the body, checks consent (tokens), discovers Intune, provisions the tenant at Intune, stores config and
status, and answers 201 (created) or 200 (replaced) with the tenant document; repeating it is harmless. DELETE
deprovisions at Intune and stops polling (history kept): 204; ``DELETE …?purge=true`` also deletes everything the
connector stored about the tenant (shared_code/offboarding.py): 204 when done, 202 while rows remain (repeat it).
GET answers the document with its status.
"""

from __future__ import annotations

import azure.functions as func

from functions.http_support import MANAGE, READ, RequestContext, handle, json_response
from shared_code.errors import NotFoundError
from shared_code.intune.tenant_api import tenant_document
from shared_code.intune.wiring import build_intune
from shared_code.offboarding import build_offboarding
from shared_code.tenant_config import parse_tenant_body

bp = func.Blueprint()  # type: ignore[no-untyped-call]


async def _put(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = ctx.guid("tenantId")
    config = parse_tenant_body(tenant_id, ctx.json_body())
    services = ctx.services.service(build_intune)
    record, created = await services.provisioning.provision(config)
    return json_response(tenant_document(record), status=201 if created else 200)


async def _get(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = ctx.guid("tenantId")
    record = await ctx.services.service(build_intune).tenants.get(tenant_id)
    if record is None:
        raise NotFoundError(f"tenant {tenant_id} is not provisioned", status=404)
    return json_response(tenant_document(record))


async def _delete(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = ctx.guid("tenantId")
    ctx.allow_query("purge")
    if ctx.query_bool("purge"):
        # Offboarding: deprovision, then delete everything stored about the tenant in bounded steps (202 = repeat).
        result = await ctx.services.service(build_offboarding).purge(tenant_id)
        return func.HttpResponse(status_code=204) if result["complete"] else json_response(result, status=202)
    await ctx.services.service(build_intune).provisioning.deprovision(tenant_id)
    return func.HttpResponse(status_code=204)


@bp.route(route="tenants/{tenantId}", methods=["PUT"], auth_level=func.AuthLevel.ANONYMOUS)
async def put_tenant(req: func.HttpRequest) -> func.HttpResponse:
    """Provision (or re-provision) a customer tenant."""
    return await handle(req, MANAGE, _put)


@bp.route(route="tenants/{tenantId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_tenant(req: func.HttpRequest) -> func.HttpResponse:
    """The tenant document with its status."""
    return await handle(req, READ, _get)


@bp.route(route="tenants/{tenantId}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
async def delete_tenant(req: func.HttpRequest) -> func.HttpResponse:
    """Deprovision a tenant (Intune Provisioned=2; polling stops; history kept)."""
    return await handle(req, MANAGE, _delete)
