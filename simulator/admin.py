"""The `/_sim` admin API (plain JSON, no auth). Bad input → 400 `{"error": "...", "field": "..."}`, never a hang.

Core routes (the graph helper's directory routes are mounted by `graph.register_admin`):
GET /_sim/health · GET /_sim/info · GET /_sim/counters[?tenant=] · POST /_sim/counters/reset ·
POST|GET|DELETE /_sim/faults · POST|GET|DELETE /_sim/consent · POST /_sim/apps/{app_id}/secrets ·
POST /_sim/tokens/console · POST /_sim/tokens/user · POST /_sim/clock/advance · GET /_sim/clock ·
POST /_sim/keys/rotate · POST|GET /_sim/throttle · POST /_sim/keyvault/secrets · POST /_sim/intune/config ·
GET /_sim/intune/{tenant_id} · POST /_sim/entra/tenants.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

from aiohttp import web

from simulator.auth import CLOCK, ENTRA, FAULTS, INFO, THROTTLE, WORLD
from simulator.entra import CONSOLE_AUDIENCE, CONSOLE_ROLES, GRAPH_RESOURCE
from simulator.faults import FaultError
from simulator.intune import INTUNE, AdminInputError
from simulator.keyvault import VAULT


def current_info(app: web.Application) -> dict[str, Any]:
    """The info JSON, with the tenant list refreshed from the World (tenants may be added via the admin API)."""
    info = app[INFO].copy()
    world = app[WORLD]
    if world is not None:
        info["tenants"] = [
            {"tenant_id": t.tenant_id, "scenario": getattr(t, "scenario", None),
             "enrollment_groups": list(getattr(t, "enrollment_groups", []))}
            for t in list(world.tenants.values())
        ]
    return info


class BadInput(Exception):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def bad(message: str, field: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status)


async def body_object(request: web.Request, allowed: set[str] | None = None) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadInput("body is not valid JSON", "body") from exc
    if not isinstance(data, dict):
        raise BadInput("body must be a JSON object", "body")
    if allowed is not None:
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise BadInput(f"unknown field(s): {unknown}", unknown[0])
    return data


def _str(data: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    v = data.get(name)
    if v is None:
        if required:
            raise BadInput(f"{name} is required", name)
        return None
    if not isinstance(v, str) or not v:
        raise BadInput(f"{name} must be a non-empty string", name)
    return v


def _guid(data: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    v = _str(data, name, required=required)
    if v is None:
        return None
    try:
        return str(uuid.UUID(v))
    except ValueError as exc:
        raise BadInput(f"{name} must be a GUID", name) from exc


def _str_list(data: dict[str, Any], name: str, default: list[str] | None = None) -> list[str]:
    v = data.get(name, default)
    if v is None:
        raise BadInput(f"{name} is required", name)
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadInput(f"{name} must be a list of strings", name)
    return list(v)


def _int(data: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    v = data.get(name, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadInput(f"{name} must be an integer {lo}..{hi}", name)
    return v


def _overrides(data: dict[str, Any]) -> dict[str, Any] | None:
    v = data.get("claims")
    if v is None:
        return None
    if not isinstance(v, dict):
        raise BadInput("claims must be an object of claim overrides (null removes a claim)", "claims")
    return v


def handler(fn: Any) -> Any:
    """Wrap an admin handler so bad input becomes a 400 JSON answer."""
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)  # type: ignore[no-any-return]
        except BadInput as exc:
            return bad(exc.message, exc.field)
        except (FaultError, AdminInputError) as exc:
            return bad(str(exc), exc.field)
    return wrapped


# ---- routes --------------------------------------------------------------------------------------------------------
@handler
async def health(request: web.Request) -> web.Response:
    world = request.app[WORLD]
    return web.json_response({"status": "ok", "world": world is not None,
                              "tenants": len(world.tenants) if world is not None else 0,
                              "tokens_issued": request.app[ENTRA].token_count})


@handler
async def info(request: web.Request) -> web.Response:
    return web.json_response(current_info(request.app))


@handler
async def counters(request: web.Request) -> web.Response:
    tenant = request.query.get("tenant") or None
    return web.json_response(request.app[THROTTLE].counters.snapshot(tenant))


@handler
async def counters_reset(request: web.Request) -> web.Response:
    request.app[THROTTLE].counters.reset()
    return web.json_response({"reset": True})


@handler
async def faults_add(request: web.Request) -> web.Response:
    data = await body_object(request)
    f = request.app[FAULTS].add(data)
    return web.json_response(f.as_dict(), status=201)


@handler
async def faults_list(request: web.Request) -> web.Response:
    return web.json_response({"faults": request.app[FAULTS].list()})


@handler
async def faults_clear(request: web.Request) -> web.Response:
    return web.json_response({"cleared": request.app[FAULTS].clear()})


@handler
async def consent_set(request: web.Request) -> web.Response:
    data = await body_object(request, {"tenant_id", "app_id", "roles"})
    entra = request.app[ENTRA]
    tenant = _guid(data, "tenant_id")
    app_id = _str(data, "app_id")
    assert tenant is not None and app_id is not None
    if not entra.tenant_exists(tenant):
        raise BadInput("unknown tenant", "tenant_id")
    if app_id not in entra.apps:
        raise BadInput("unknown app", "app_id")
    try:
        roles = entra.set_consent(tenant, app_id, _str_list(data, "roles"))
    except ValueError as exc:
        raise BadInput(str(exc), "roles") from exc
    return web.json_response({"tenant_id": tenant, "app_id": app_id, "roles": sorted(roles)})


@handler
async def consent_get(request: web.Request) -> web.Response:
    data = dict(request.query)
    tenant = _guid(data, "tenant_id")
    app_id = _str(data, "app_id")
    assert tenant is not None and app_id is not None
    roles = request.app[ENTRA].roles_granted(tenant, app_id)
    return web.json_response({"tenant_id": tenant, "app_id": app_id,
                              "service_principal": roles is not None,
                              "roles": sorted(roles) if roles is not None else None})


@handler
async def consent_delete(request: web.Request) -> web.Response:
    data = dict(request.query)
    tenant = _guid(data, "tenant_id")
    app_id = _str(data, "app_id")
    assert tenant is not None and app_id is not None
    entra = request.app[ENTRA]
    if app_id not in entra.apps:
        raise BadInput("unknown app", "app_id")
    entra.revoke_consent(tenant, app_id)
    return web.json_response({"tenant_id": tenant, "app_id": app_id, "revoked": True})


@handler
async def app_secret(request: web.Request) -> web.Response:
    data = await body_object(request, {"secret", "revoke_old"})
    entra = request.app[ENTRA]
    app = entra.apps.get(request.match_info["app_id"])
    if app is None:
        raise BadInput("unknown app", "app_id")
    secret = _str(data, "secret")
    assert secret is not None
    revoke = data.get("revoke_old", False)
    if not isinstance(revoke, bool):
        raise BadInput("revoke_old must be a boolean", "revoke_old")
    app.secrets = [secret] if revoke else [*app.secrets, secret]
    return web.json_response({"app_id": app.app_id, "secrets": len(app.secrets)})


@handler
async def token_console(request: web.Request) -> web.Response:
    data = await body_object(request, {"roles", "exp_in", "claims"})
    roles = _str_list(data, "roles", ["Console.Read"])
    unknown = set(roles) - CONSOLE_ROLES
    if unknown:
        raise BadInput(f"unknown console role(s): {sorted(unknown)}", "roles")
    exp_in = _int(data, "exp_in", 3600, -86400 * 365, 86400)
    tok = request.app[ENTRA].mint_console_token(roles, exp_in, _overrides(data))
    return web.json_response({"access_token": tok, "token_type": "Bearer", "expires_in": exp_in})


@handler
async def token_user(request: web.Request) -> web.Response:
    data = await body_object(request, {"tenant_id", "user_id", "scopes", "audience", "name", "upn", "exp_in",
                                       "roles", "claims", "client_id"})
    entra = request.app[ENTRA]
    tenant = _guid(data, "tenant_id")
    user = _guid(data, "user_id")
    assert tenant is not None and user is not None
    if not entra.tenant_exists(tenant):
        raise BadInput("unknown tenant", "tenant_id")
    if entra.user_exists(tenant, user) is False:
        raise BadInput("unknown user in that tenant", "user_id")
    scopes = _str_list(data, "scopes", ["User.Read"])
    audience = _str(data, "audience", required=False) or GRAPH_RESOURCE
    if audience not in (GRAPH_RESOURCE, CONSOLE_AUDIENCE):
        raise BadInput(f"audience must be {GRAPH_RESOURCE} or {CONSOLE_AUDIENCE}", "audience")
    roles = _str_list(data, "roles", [])
    exp_in = _int(data, "exp_in", 3600, -86400 * 365, 86400)
    tok = entra.mint_user_token(tenant, user, scopes, audience=audience, name=_str(data, "name", required=False),
                                upn=_str(data, "upn", required=False), exp_in=exp_in, roles=roles,
                                overrides=_overrides(data), client_id=_guid(data, "client_id", required=False))
    return web.json_response({"access_token": tok, "token_type": "Bearer", "expires_in": exp_in})


@handler
async def clock_advance(request: web.Request) -> web.Response:
    data = await body_object(request, {"seconds"})
    v = data.get("seconds")
    if not isinstance(v, int | float) or isinstance(v, bool) or math.isnan(v) or math.isinf(v) or v < 0 \
            or v > 10 * 365 * 86400:
        raise BadInput("seconds must be a number 0..315360000", "seconds")
    clock = request.app[CLOCK]
    clock.advance(float(v))
    return web.json_response({"now": clock.utcnow().isoformat(), "offset_seconds": clock.offset})


@handler
async def clock_get(request: web.Request) -> web.Response:
    clock = request.app[CLOCK]
    return web.json_response({"now": clock.utcnow().isoformat(), "offset_seconds": clock.offset})


@handler
async def keys_rotate(request: web.Request) -> web.Response:
    data = await body_object(request, {"drop_old"})
    drop = data.get("drop_old", False)
    if not isinstance(drop, bool):
        raise BadInput("drop_old must be a boolean", "drop_old")
    entra = request.app[ENTRA]
    kid = entra.rotate_keys(drop_old=drop)
    return web.json_response({"kid": kid, "kids": [k.kid for k in entra.keys]})


@handler
async def throttle_set(request: web.Request) -> web.Response:
    data = await body_object(request, {"scale", "enabled"})
    scale = data.get("scale")
    if scale is not None and (not isinstance(scale, int | float) or isinstance(scale, bool) or math.isnan(scale)
                              or not 0.00001 <= scale <= 1000):
        raise BadInput("scale must be a number 0.00001..1000", "scale")
    enabled = data.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise BadInput("enabled must be a boolean", "enabled")
    t = request.app[THROTTLE]
    t.configure(scale=float(scale) if scale is not None else None, enabled=enabled)
    return web.json_response(t.state())


@handler
async def throttle_get(request: web.Request) -> web.Response:
    return web.json_response(request.app[THROTTLE].state())


@handler
async def kv_set(request: web.Request) -> web.Response:
    data = await body_object(request, {"name", "value"})
    name = _str(data, "name")
    assert name is not None
    value = data.get("value")
    if not isinstance(value, str):
        raise BadInput("value must be a string", "value")
    import re
    if not re.fullmatch(r"[0-9a-zA-Z-]{1,127}", name):
        # Secret names: 1–127 alphanumerics and dashes (Key Vault object naming rules).
        raise BadInput("name must be 1-127 letters, digits or dashes", "name")
    v = request.app[VAULT].set(name, value)
    return web.json_response({"name": name, "version": v.version})


@handler
async def intune_config(request: web.Request) -> web.Response:
    data = await body_object(request)
    svc = request.app[INTUNE]
    svc.configure(data)
    return web.json_response(svc.config_dict())


@handler
async def intune_get(request: web.Request) -> web.Response:
    tenant = _guid(dict(request.match_info), "tenant_id")
    assert tenant is not None
    return web.json_response(request.app[INTUNE].snapshot(tenant, request.app[CLOCK].now()))


@handler
async def entra_tenant(request: web.Request) -> web.Response:
    data = await body_object(request, {"tenant_id"})
    tenant = _guid(data, "tenant_id", required=False) or str(uuid.uuid4())
    request.app[ENTRA].extra_tenants.add(tenant)
    return web.json_response({"tenant_id": tenant}, status=201)


async def not_found(request: web.Request) -> web.Response:
    return web.json_response({"error": f"no admin route {request.method} {request.path}", "field": "path"},
                             status=404)


def register(app: web.Application) -> None:
    r = app.router
    r.add_get("/_sim/health", health)
    r.add_get("/_sim/info", info)
    r.add_get("/_sim/counters", counters)
    r.add_post("/_sim/counters/reset", counters_reset)
    r.add_post("/_sim/faults", faults_add)
    r.add_get("/_sim/faults", faults_list)
    r.add_delete("/_sim/faults", faults_clear)
    r.add_post("/_sim/consent", consent_set)
    r.add_get("/_sim/consent", consent_get)
    r.add_delete("/_sim/consent", consent_delete)
    r.add_post("/_sim/apps/{app_id}/secrets", app_secret)
    r.add_post("/_sim/tokens/console", token_console)
    r.add_post("/_sim/tokens/user", token_user)
    r.add_post("/_sim/clock/advance", clock_advance)
    r.add_get("/_sim/clock", clock_get)
    r.add_post("/_sim/keys/rotate", keys_rotate)
    r.add_post("/_sim/throttle", throttle_set)
    r.add_get("/_sim/throttle", throttle_get)
    r.add_post("/_sim/keyvault/secrets", kv_set)
    r.add_post("/_sim/intune/config", intune_config)
    r.add_get("/_sim/intune/{tenant_id}", intune_get)
    r.add_post("/_sim/entra/tenants", entra_tenant)


def register_fallback(app: web.Application) -> None:
    """JSON 404 for unknown admin paths (registered after every other /_sim route)."""
    app.router.add_route("*", "/_sim/{tail:.*}", not_found)
