"""Enrollment routes: sync now / dry run, device list, change feed, approve staged deactivations.

``POST /api/tenants/{tenantId}/sync[?dryRun=true][&full=true]`` · ``GET /api/tenants/{tenantId}/devices`` ·
``GET /api/tenants/{tenantId}/events?after=&limit=`` · ``POST /api/tenants/{tenantId}/deactivations/approve`` ·
``POST /api/tenants/{tenantId}/poison/requeue``.
"""

from __future__ import annotations

import azure.functions as func

from functions.http_support import MANAGE, READ, RequestContext, handle, json_response
from shared_code.enrollment.poison import build_poison_service
from shared_code.enrollment.service import MAX_PAGE, EnrollmentService, build_enrollment_service
from shared_code.validation import Obj, Prop, Str

bp = func.Blueprint()  # type: ignore[no-untyped-call]

# openapi.yaml's ApproveInput: the approval names the plan the console reviewed (status / dry run ``planId``).
APPROVE_BODY = Obj({"planId": Prop(Str(max_length=64, pattern=r"plan-[0-9a-f]{24}"), required=True)})


def _service(ctx: RequestContext) -> EnrollmentService:
    return ctx.services.service(build_enrollment_service)


def _limit(ctx: RequestContext) -> int:
    return ctx.query_int("limit", default=MAX_PAGE, minimum=1, maximum=MAX_PAGE)


async def _sync(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = ctx.guid("tenantId")
    dry_run, full = ctx.query_bool("dryRun"), ctx.query_bool("full")
    if dry_run:
        return json_response(await _service(ctx).dry_run(tenant_id, full=full))
    return json_response(await _service(ctx).request_sync(tenant_id, full=full), status=202)


async def _devices(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = ctx.guid("tenantId")
    # An empty ``after`` is the first page, as consoles send it when they start paging.
    after = ctx.query_guid("after") if ctx.req.params.get("after") else None
    return json_response(await _service(ctx).list_devices(tenant_id, after, _limit(ctx)))


async def _events(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = ctx.guid("tenantId")
    limit = _limit(ctx)
    after = ctx.query_str("after", max_length=256)
    return json_response(await _service(ctx).list_events(tenant_id, after or None, limit))


def _caller(ctx: RequestContext) -> str:
    return str(ctx.caller.get("oid") or ctx.caller.get("azp") or ctx.caller.get("sub") or "console")


async def _approve(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = ctx.guid("tenantId")
    body = ctx.body(APPROVE_BODY)
    return json_response(await _service(ctx).approve(tenant_id, _caller(ctx), body["planId"]), status=202)


async def _requeue(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = ctx.guid("tenantId")
    ctx.allow_query()
    poison = ctx.services.service(build_poison_service)
    return json_response(await poison.requeue(tenant_id=tenant_id, caller=_caller(ctx)), status=202)


@bp.route(route="tenants/{tenantId}/sync", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def sync_tenant(req: func.HttpRequest) -> func.HttpResponse:
    """Enqueue a poll now (202), or with ``dryRun=true`` answer the plan it would apply and write nothing."""
    return await handle(req, MANAGE, _sync)


@bp.route(route="tenants/{tenantId}/devices", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def list_devices(req: func.HttpRequest) -> func.HttpResponse:
    """Current enrollment state of the tenant's devices (``after``/``limit`` paging)."""
    return await handle(req, READ, _devices)


@bp.route(route="tenants/{tenantId}/events", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def list_events(req: func.HttpRequest) -> func.HttpResponse:
    """The change feed in order after an opaque cursor (``limit`` 1..1000)."""
    return await handle(req, READ, _events)


@bp.route(route="tenants/{tenantId}/deactivations/approve", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def approve_deactivations(req: func.HttpRequest) -> func.HttpResponse:
    """Release deactivations the guard staged (applied by the poll this enqueues)."""
    return await handle(req, MANAGE, _approve)


@bp.route(route="tenants/{tenantId}/poison/requeue", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def requeue_poison(req: func.HttpRequest) -> func.HttpResponse:
    """Move the tenant's poll messages from the poison queue back to the poll queue (after fixing the cause)."""
    return await handle(req, MANAGE, _requeue)
