"""App factory, TLS and the core middleware (auth → faults → throttle → counters) of the simulated Microsoft cloud.

One HTTPS aiohttp server hosts Entra (OIDC + token + JWKS), Graph v1.0 (graph helper's `simulator.graph`), the
Intune partner services, Key Vault secrets and the `/_sim` admin API. The test CA comes from trustme and is written
to `{workdir}/ca.pem`; the server certificate is valid for `localhost` and `127.0.0.1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trustme
from aiohttp import web

from simulator import admin, intune, keyvault
from simulator.auth import (
    CLOCK,
    ENTRA,
    FAULTS,
    INFO,
    THROTTLE,
    WORLD,
    TokenValidator,
    authenticate,
    family,
    graph_error,
    intune_error,
)
from simulator.clouds import ACTIVE
from simulator.entra import INTUNE_RESOURCE, Entra, EntraError, err_outage, err_tenant_not_found
from simulator.faults import Fault, Faults, request_tenant
from simulator.throttle import Clock, Decision, Throttle

log = logging.getLogger("simulator")

try:  # graph helper's modules; the core still starts without them (contract)
    from simulator import directory as _directory
    from simulator import scenarios as _scenarios
except Exception as exc:  # noqa: BLE001 - guard: ImportError or a bug in their module
    _directory = None  # type: ignore[assignment]
    _scenarios = None  # type: ignore[assignment]
    log.warning("simulator.directory unavailable: %s", exc)
try:
    from simulator import graph as _graph
except Exception as exc:  # noqa: BLE001 - guard: the simulator must keep serving
    _graph = None  # type: ignore[assignment]
    log.warning("simulator.graph unavailable: %s", exc)
try:
    from simulator import pricing as _pricing
except Exception as exc:  # noqa: BLE001 - guard: the simulator must keep serving
    _pricing = None  # type: ignore[assignment]
    log.warning("simulator.pricing unavailable: %s", exc)

VALIDATOR: web.AppKey[TokenValidator] = web.AppKey("sim_validator", TokenValidator)
SECRET_NAME = "connector-client-secret"


def fmt_seconds(value: float) -> str:
    """Retry-After as Graph sends it: seconds, possibly fractional (e.g. "2.128"; graph.md §2)."""
    s = f"{value:.3f}".rstrip("0").rstrip(".")
    return s or "0"


# ---- TLS -------------------------------------------------------------------------------------------------------------
def make_tls(workdir: Path) -> tuple[ssl.SSLContext, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_path = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return ctx, ca_path


# ---- responses used by the middleware -------------------------------------------------------------------------------
def _throttle_response(fam: str | None, request: web.Request, retry_after: float | None, scope: str | None,
                       info: str | None, ru: int | None, pct: float | None) -> web.Response:
    # Retry-After is "not always included" in a 429; clients back off exponentially then
    # (learn.microsoft.com/graph/throttling, "If no Retry-After header is provided ..."): a throttle fault with
    # an explicit `"retry_after": null` omits it.
    headers = {"Retry-After": fmt_seconds(retry_after)} if retry_after is not None else {}
    if fam == "graph":
        # 429 TooManyRequests with Retry-After + throttle headers (graph.md §1–2, learn.microsoft.com/graph/throttling).
        if scope:
            headers["x-ms-throttle-scope"] = scope
        headers["x-ms-throttle-information"] = info or "ResourceUnitLimitExceeded"
        if ru is not None:
            headers["x-ms-resource-unit"] = str(ru)
        if pct is not None:
            headers["x-ms-throttle-limit-percentage"] = f"{pct:.2f}"
        return graph_error(429, "TooManyRequests", "Too many requests, please try again later.", request, headers)
    if fam == "intune":
        return intune_error(429, "TooManyRequests", "Too many requests.", headers)
    if fam == "keyvault":
        # Key Vault throttling answers 429 with Retry-After (key-vault/general/overview-throttling).
        return web.json_response({"error": {"code": "Throttled", "message": "Request was not processed because too "
                                            "many requests were received."}}, status=429, headers=headers)
    return web.json_response({"error": "temporarily_unavailable", "error_description": "Too many requests."},
                             status=429, headers=headers)


def _status_response(fam: str | None, request: web.Request, f: Fault) -> web.Response:
    headers = {"Retry-After": fmt_seconds(f.retry_after)} if f.retry_after is not None else {}
    if fam == "graph":
        # Graph's codes for transient failures (graph.md §2: serviceNotAvailable on 503; 504 gatewayTimeout).
        code = {503: "serviceNotAvailable", 504: "gatewayTimeout", 429: "TooManyRequests"}.get(f.status,
                                                                                             "generalException")
        return graph_error(f.status, code, f"Injected fault: HTTP {f.status}.", request, headers)
    if fam == "intune":
        return intune_error(f.status, "ServiceUnavailable" if f.status == 503 else "InternalServerError",
                            f"Injected fault: HTTP {f.status}.", headers)
    if fam is None and "/oauth2/" in request.path:
        err = err_outage()
        return web.json_response(err.body(), status=f.status, headers=headers)
    return web.json_response({"error": {"code": "ServiceUnavailable", "message": f"Injected fault: HTTP {f.status}."}},
                             status=f.status, headers=headers)


async def _truncate(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Send the headers and half of the body, then drop the connection (client sees an incomplete body)."""
    if not isinstance(resp, web.Response) or resp.prepared or not isinstance(resp.body, bytes | bytearray):
        return resp
    body = bytes(resp.body)
    out = web.StreamResponse(status=resp.status, headers={k: v for k, v in resp.headers.items()
                                                          if k.lower() not in ("content-length",
                                                                               "transfer-encoding")})
    out.content_length = len(body)
    await out.prepare(request)
    await out.write(body[: max(1, len(body) // 2)])
    if request.transport is not None:
        request.transport.abort()
    return out


def _reset(request: web.Request) -> web.Response:
    if request.transport is not None:
        request.transport.abort()  # no response at all: the client sees a dropped connection
    return web.Response(status=500)


def _route_label(request: web.Request, fam: str | None) -> str:
    if fam == "graph" and _pricing is not None and hasattr(_pricing, "route_label"):
        try:
            return str(_pricing.route_label(request.path))
        except Exception:  # noqa: BLE001 - guard: the simulator must keep serving
            pass
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is not None and getattr(resource, "canonical", None):
        return str(resource.canonical)
    return "unmatched"


@web.middleware
async def core_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    path = request.path
    if path.startswith("/_sim"):
        return await handler(request)  # type: ignore[no-any-return]
    app = request.app
    counters = app[THROTTLE].counters
    fam = family(path)
    route = _route_label(request, fam)
    status = 500
    tenant = "-"
    try:
        # 1. auth
        if fam is not None:
            denied = authenticate(request, fam, app[VALIDATOR])
            tenant = request_tenant(request) or "-"
            if denied is not None:
                counters.record_request(tenant, route)
                status = denied.status
                return denied
        tenant = request_tenant(request) or "-"
        # 2. faults
        faults = app[FAULTS]
        truncate = False
        lat = faults.consume("latency", request)
        if lat is not None:
            await asyncio.sleep(lat.latency_ms / 1000)
        is_token = fam is None and "/oauth2/" in path
        kinds = ("throttle", "status", "reset", "truncate", "token_outage", "redirect", "html") if is_token else (
            "throttle", "status", "reset", "truncate", "redirect", "html")
        f = faults.consume_any(kinds, request)
        if f is not None:
            if f.kind == "truncate":
                truncate = True
            else:
                counters.record_request(tenant, route)
                if f.kind == "throttle":
                    counters.record_throttled(tenant, route)
                    resp = _throttle_response(fam, request, f.retry_after, None, "InjectedFault", None, None)
                elif f.kind == "reset":
                    resp = _reset(request)
                elif f.kind == "redirect":
                    resp = web.Response(status=f.status, headers={"Location": "https://redirected.invalid" + path})
                elif f.kind == "html":
                    resp = web.Response(status=f.status, content_type="text/html",
                                        text="<html><body><h1>Service unavailable</h1></body></html>")
                elif f.kind == "token_outage":
                    err = err_outage()
                    headers = {"Retry-After": fmt_seconds(f.retry_after)} if f.retry_after is not None else None
                    resp = web.json_response(err.body(), status=f.status, headers=headers)
                else:
                    resp = _status_response(fam, request, f)
                status = resp.status
                return resp
        # 3. throttle (Graph identity RU buckets; the $batch envelope is charged per inner request by graph.py)
        decision: Decision | None = None
        ru = 0
        if fam == "graph" and request.get("principal") is not None:
            ru = _pricing.price(request.method, path, request.query_string) if _pricing is not None else 1
            if ru > 0:
                write = bool(_pricing.is_write(request.method, path)) if _pricing is not None else (
                    request.method not in ("GET", "HEAD"))
                p = request["principal"]
                decision = app[THROTTLE].decide(tenant_id=p.tenant_id, app_id=p.app_id, ru=ru, route=route,
                                                write=write)
                if decision.retry_after is not None:
                    resp = _throttle_response(fam, request, decision.retry_after, decision.scope,
                                              decision.information, ru, decision.limit_percentage)
                    status = resp.status
                    return resp
            else:
                counters.record_request(tenant, route)
        else:
            counters.record_request(tenant, route)
        # 4. the handler
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            status = exc.status
            raise
        status = resp.status
        if fam == "graph" and not resp.prepared:
            rid = resp.headers.get("request-id") or str(uuid.uuid4())
            resp.headers.setdefault("request-id", rid)
            resp.headers.setdefault("client-request-id", request.headers.get("client-request-id", rid))
            if ru > 0:
                resp.headers["x-ms-resource-unit"] = str(ru)  # RU charged for this request (graph.md §1)
            if decision is not None and decision.limit_percentage is not None:
                resp.headers["x-ms-throttle-limit-percentage"] = f"{decision.limit_percentage:.2f}"
        if truncate:
            return await _truncate(request, resp)
        return resp  # type: ignore[no-any-return]
    finally:
        counters.record_status(tenant, route, status)


# ---- Entra routes ----------------------------------------------------------------------------------------------
def _entra_error(err: EntraError) -> web.Response:
    return web.json_response(err.body(), status=err.status)


def _tenant_known(entra: Entra, tenant: str) -> bool:
    return tenant in ("common", "organizations") or entra.tenant_exists(tenant)


async def openid_v2(request: web.Request) -> web.Response:
    entra = request.app[ENTRA]
    tenant = request.match_info["tenant"]
    if not _tenant_known(entra, tenant):
        return _entra_error(err_tenant_not_found(tenant))
    return web.json_response(entra.openid_configuration(tenant, v2=True))


async def openid_v1(request: web.Request) -> web.Response:
    entra = request.app[ENTRA]
    tenant = request.match_info["tenant"]
    if not _tenant_known(entra, tenant):
        return _entra_error(err_tenant_not_found(tenant))
    return web.json_response(entra.openid_configuration(tenant, v2=False))


async def jwks(request: web.Request) -> web.Response:
    entra = request.app[ENTRA]
    return web.json_response(entra.jwks(request.match_info["tenant"]))


async def instance_discovery(request: web.Request) -> web.Response:
    return web.json_response(request.app[ENTRA].instance_discovery(request.query.get("authorization_endpoint")))


async def token(request: web.Request) -> web.Response:
    entra = request.app[ENTRA]
    try:
        form = await request.post()
    except Exception:  # noqa: BLE001 - guard: malformed form body
        return web.json_response({"error": "invalid_request", "error_description": "Malformed request body."},
                                 status=400)
    values = {k: str(v) for k, v in form.items()}
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("basic ") and "client_secret" not in values:
        # client_secret_basic (RFC 6749 §2.3.1), listed in the OIDC document's token_endpoint_auth_methods_supported.
        import base64
        from urllib.parse import unquote_plus

        try:
            cid, _, secret = base64.b64decode(auth[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            cid, secret = "", ""
        values.setdefault("client_id", unquote_plus(cid))
        values["client_secret"] = unquote_plus(secret)
    try:
        result = entra.client_credentials(request.match_info["tenant"], values)
    except EntraError as err:
        return _entra_error(err)
    return web.json_response(result, headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})


# ---- factory ---------------------------------------------------------------------------------------------------------
def build_app(base_url: str, ca_path: Path, workdir: Path, *, clock: Clock | None = None) -> web.Application:
    """Create the aiohttp app with all state (World, Entra, throttle, faults, vault, Intune) and routes."""
    app = web.Application(middlewares=[core_middleware], client_max_size=64 * 1024 * 1024)
    clock = clock or Clock()
    world: Any = None
    if _directory is not None:
        try:
            world = _directory.World(base_url)
        except Exception as exc:  # noqa: BLE001 - guard: the simulator must keep serving
            log.warning("World() failed: %s", exc)
    if world is not None:
        world.base_url = base_url
    app[WORLD] = world
    app[CLOCK] = clock
    app[FAULTS] = Faults()
    app[THROTTLE] = Throttle(clock, world.user_count if world is not None else None)

    def known_tenant(t: str) -> bool:
        return world is not None and t in world.tenants

    def user_exists(t: str, u: str) -> bool | None:
        tenant = world.tenants.get(t) if world is not None else None
        users = getattr(tenant, "users", None)
        return None if users is None else users.get(u) is not None

    entra = Entra(base_url, known_tenant, user_exists)
    entra.bootstrap()
    app[ENTRA] = entra
    app[VALIDATOR] = TokenValidator(entra)
    vault = keyvault.Vault()
    assert entra.connector is not None and entra.console is not None
    vault.set(SECRET_NAME, entra.connector.secrets[0])
    app[keyvault.VAULT] = vault
    cert_path = workdir / "connector-cert.pem"
    cert_path.write_bytes(entra.connector_key_pem)
    app[INFO] = {
        "base_url": base_url, "ca_path": str(ca_path), "pid": None,
        "authority": base_url, "graph_base_url": base_url, "key_vault_url": base_url,
        "intune_resource": INTUNE_RESOURCE,
        # The Microsoft cloud impersonated (SIMULATOR_CLOUD, simulator/clouds.py): clients set AZURE_CLOUD to it.
        "cloud": ACTIVE.name,
        # The DNS name the discovered Intune service URLs live under here (Azure: *.manage.microsoft.com).
        "intune_service_domains": urlsplit(base_url).hostname,
        "connector": {"client_id": entra.connector.app_id, "client_secret": entra.connector.secrets[0],
                      "secret_name": SECRET_NAME, "certificate_path": str(cert_path),
                      "certificate_thumbprint": entra.connector_thumbprint(),
                      "home_tenant_id": entra.vendor_tenant},
        "console": {"client_id": entra.console.app_id, "client_secret": entra.console.secrets[0],
                    "audience": "api://mtd-connector", "tenant_id": entra.vendor_tenant},
        "tenants": [],
    }
    # Entra
    r = app.router
    r.add_get("/common/discovery/instance", instance_discovery)
    r.add_get("/{tenant}/v2.0/.well-known/openid-configuration", openid_v2)
    r.add_get("/{tenant}/.well-known/openid-configuration", openid_v1)
    r.add_get("/{tenant}/discovery/v2.0/keys", jwks)
    r.add_get("/{tenant}/discovery/keys", jwks)
    r.add_post("/{tenant}/oauth2/v2.0/token", token)
    r.add_post("/{tenant}/oauth2/token", token)
    keyvault.register(app)
    intune.register(app)
    if _graph is not None and world is not None:
        try:
            _graph.register(app, world)
        except Exception as exc:  # noqa: BLE001 - guard: the simulator must keep serving
            log.warning("graph.register failed: %s", exc)
    admin.register(app)
    if _graph is not None and world is not None and hasattr(_graph, "register_admin"):
        try:
            _graph.register_admin(app, world)
        except Exception as exc:  # noqa: BLE001 - guard: the simulator must keep serving
            log.warning("graph.register_admin failed: %s", exc)
    admin.register_fallback(app)
    return app


def add_tenants(app: web.Application, scenario: str, count: int, seed: int) -> None:
    world = app[WORLD]
    if world is None or _scenarios is None:
        raise RuntimeError("the directory module (World) is not available; cannot create tenants")
    if scenario == "fleet":
        created = _scenarios.add_fleet(world, count, seed)  # mostly small, some M
    else:
        created = [_scenarios.add_tenant(world, scenario, seed + i) for i in range(count)]
    for t in created:
        app[INFO]["tenants"].append({"tenant_id": t.tenant_id, "scenario": getattr(t, "scenario", scenario),
                                     "enrollment_groups": list(getattr(t, "enrollment_groups", []))})


def prepare(host: str, port: int, workdir: Path, *, scenario: str | None = None, tenants: int = 0,
            seed: int = 1) -> tuple[web.Application, Any, ssl.SSLContext]:
    """Blocking setup: TLS material, listening socket, app and start-up tenants."""
    import os
    import socket

    workdir.mkdir(parents=True, exist_ok=True)
    ssl_ctx, ca_path = make_tls(workdir)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    base_url = f"https://localhost:{sock.getsockname()[1]}"
    app = build_app(base_url, ca_path, workdir)
    if scenario and tenants > 0:
        add_tenants(app, scenario, tenants, seed)
    app[INFO]["pid"] = os.getpid()
    return app, sock, ssl_ctx


def write_info(app: web.Application, info_file: Path) -> None:
    """Write the info JSON atomically (tmp file, then rename) — contract."""
    tmp = info_file.with_suffix(info_file.suffix + ".tmp")
    tmp.write_text(json.dumps(admin.current_info(app), indent=2))
    tmp.replace(info_file)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def serve(host: str, port: int, workdir: Path, info_file: Path, *, scenario: str | None = None,
                tenants: int = 0, seed: int = 1, parent_pid: int | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (SIGTERM/SIGINT in __main__) or the parent process is gone."""
    import os

    app, sock, ssl_ctx = prepare(host, port, workdir, scenario=scenario, tenants=tenants, seed=seed)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock, ssl_context=ssl_ctx)
    await site.start()
    write_info(app, info_file)
    print(f"SIMULATOR READY {info_file}", flush=True)
    stop = stop or asyncio.Event()

    direct_child = parent_pid is not None and os.getppid() == parent_pid

    async def watch_parent() -> None:
        while parent_pid is not None:
            await asyncio.sleep(0.5)
            # A dead direct parent re-parents us at once (even while it is an unreaped zombie); otherwise probe it.
            gone = os.getppid() != parent_pid if direct_child else not _alive(parent_pid)
            if gone:
                print("simulator: parent process gone, exiting", file=sys.stderr, flush=True)
                stop.set()
                return

    watcher = asyncio.create_task(watch_parent())
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await runner.cleanup()
