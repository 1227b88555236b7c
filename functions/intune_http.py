"""Device threat levels, App Sync inventory and MAM checks.

``PUT /api/tenants/{tenantId}/devices/{deviceId}/threat`` → 202 with the upload (``GET`` the same path for the latest
report and its result); ``POST|GET /api/tenants/{tenantId}/devices/{deviceId}/inventory``;
``GET /api/tenants/{tenantId}/users/{userId}/mam[?deviceId=]``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import azure.functions as func

from functions.http_support import MANAGE, READ, ApiError, RequestContext, handle, json_response
from shared_code.errors import NotFoundError
from shared_code.intune.discovery import IntuneServiceMissingError
from shared_code.intune.messages import ConnectorNotReadyError, DeviceHasNoOwnerError
from shared_code.intune.threat import MAX_KEY_CHARS
from shared_code.intune.wiring import build_intune

bp = func.Blueprint()  # type: ignore[no-untyped-call]

Action = Callable[[RequestContext], Awaitable[func.HttpResponse]]


def _connector_errors(action: Action) -> Action:
    """Answer Intune's "connector not ready" as 409 carrying the connector state, an enrolled device without a
    registered owner (no ``UserId`` to send) as 409 ``device-has-no-owner`` naming the device, and a partner service
    the tenant's Intune does not list (``device_service_unavailable``) as 424 naming the service's provider."""

    async def wrapped(ctx: RequestContext) -> func.HttpResponse:
        try:
            return await action(ctx)
        except ConnectorNotReadyError as exc:
            raise ApiError(409, "connector-not-ready", str(exc), connectorState=exc.connector_state) from None
        except DeviceHasNoOwnerError as exc:
            raise ApiError(409, "device-has-no-owner", str(exc), deviceId=exc.device_id) from None
        except IntuneServiceMissingError as exc:
            raise ApiError(424, f"{exc.service}-service-unavailable", str(exc), provider=exc.provider) from None

    return wrapped


async def _put_threat(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = ctx.guid("tenantId")
    device_id = ctx.guid("deviceId")
    body = ctx.json_body()
    header_key = ctx.header("Idempotency-Key", max_length=MAX_KEY_CHARS)
    threat = ctx.services.service(build_intune).threat
    upload, replayed = await threat.report(tenant_id, device_id, body, idempotency_key=header_key)
    return json_response({**upload.public(), "replayed": replayed}, status=202)


async def _get_threat(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = ctx.guid("tenantId")
    device_id = ctx.guid("deviceId")
    latest = await ctx.services.service(build_intune).threat.latest(tenant_id, device_id)
    if latest is None:
        raise NotFoundError(f"no threat level reported for device {device_id}", status=404)
    return json_response(latest)


async def _post_inventory(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = ctx.guid("tenantId")
    device_id = ctx.guid("deviceId")
    upload = await ctx.services.service(build_intune).inventory.request(tenant_id, device_id)
    return json_response(upload.public(), status=202)


async def _get_inventory(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = ctx.guid("tenantId")
    device_id = ctx.guid("deviceId")
    return json_response(await ctx.services.service(build_intune).inventory.get(tenant_id, device_id))


async def _get_mam(ctx: RequestContext) -> func.HttpResponse:
    tenant_id = ctx.guid("tenantId")
    user_id = ctx.guid("userId")
    device_id = ctx.query_guid("deviceId")
    result = await ctx.services.service(build_intune).mam.check(tenant_id, user_id, device_id)
    return json_response(result)


@bp.route(route="tenants/{tenantId}/devices/{deviceId}/threat", methods=["PUT"], auth_level=func.AuthLevel.ANONYMOUS)
async def put_threat(req: func.HttpRequest) -> func.HttpResponse:
    """Report a device's threat level to Intune (202 with the upload id)."""
    return await handle(req, MANAGE, _connector_errors(_put_threat))


@bp.route(route="tenants/{tenantId}/devices/{deviceId}/threat", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_threat(req: func.HttpRequest) -> func.HttpResponse:
    """The device's latest threat report and its Intune result."""
    return await handle(req, READ, _get_threat)


@bp.route(
    route="tenants/{tenantId}/devices/{deviceId}/inventory", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS
)
async def post_inventory(req: func.HttpRequest) -> func.HttpResponse:
    """Request the device's app inventory from Intune App Sync (202)."""
    return await handle(req, MANAGE, _connector_errors(_post_inventory))


@bp.route(
    route="tenants/{tenantId}/devices/{deviceId}/inventory", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS
)
async def get_inventory(req: func.HttpRequest) -> func.HttpResponse:
    """The latest stored inventory (fetched from Intune first when ready)."""
    return await handle(req, READ, _connector_errors(_get_inventory))


@bp.route(route="tenants/{tenantId}/users/{userId}/mam", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def get_mam(req: func.HttpRequest) -> func.HttpResponse:
    """A user's MAM registrations; with ?deviceId= whether that device has one."""
    return await handle(req, READ, _get_mam)
