"""Enrollment routes: sync now / dry run, device list, change feed, approve staged deactivations.

``POST /api/tenants/{tenantId}/sync[?dryRun=true][&full=true]`` · ``GET /api/tenants/{tenantId}/devices`` ·
``GET /api/tenants/{tenantId}/events?after=&limit=`` · ``POST /api/tenants/{tenantId}/deactivations/approve``.
"""

from __future__ import annotations

import azure.functions as func

from functions.http_support import MANAGE, READ, ApiError, RequestContext, handle, json_response
from shared_code.enrollment.service import MAX_PAGE, EnrollmentService, build_enrollment_service, is_guid

bp = func.Blueprint()  # type: ignore[no-untyped-call]


def _tenant(ctx: RequestContext) -> str:
    tenant_id = ctx.route("tenantId")
    if not is_guid(tenant_id):
        raise ApiError(400, "invalid-tenant-id", "tenantId must be a GUID", field="tenantId")
    return tenant_id


def _service(ctx: RequestContext) -> EnrollmentService:
    return ctx.services.service(build_enrollment_service)


def _flag(ctx: RequestContext, name: str) -> bool:
    raw = ctx.req.params.get(name)
    if raw is None or raw == "":
        return False
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise ApiError(400, "invalid-parameter", f"{name} must be true or false", field=name)


def _limit(ctx: RequestContext) -> int:
    raw = ctx.req.params.get("limit")
    if raw is None or raw == "":
        return MAX_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(400, "invalid-parameter", f"limit must be an integer 1..{MAX_PAGE}", field="limit")
    return int(raw)


async def _sync(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = _tenant(ctx)
    dry_run, full = _flag(ctx, "dryRun"), _flag(ctx, "full")
    if dry_run:
        return json_response(await _service(ctx).dry_run(tenant_id, full=full))
    return json_response(await _service(ctx).request_sync(tenant_id, full=full), status=202)


async def _devices(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = _tenant(ctx)
    after = ctx.req.params.get("after") or None
    if after is not None and not is_guid(after):
        raise ApiError(400, "invalid-parameter", "after must be a device object id (GUID)", field="after")
    return json_response(await _service(ctx).list_devices(tenant_id, after, _limit(ctx)))


async def _events(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = _tenant(ctx)
    limit = _limit(ctx)
    return json_response(await _service(ctx).list_events(tenant_id, ctx.req.params.get("after") or None, limit))


async def _approve(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = _tenant(ctx)
    caller = str(ctx.caller.get("oid") or ctx.caller.get("azp") or ctx.caller.get("sub") or "console")
    return json_response(await _service(ctx).approve(tenant_id, caller), status=202)


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
