"""HTTP triggers on an aiohttp server: route templates, request/response mapping, host-like errors.

Route templates are ASP.NET Core templates (functions-bindings-http-webhook-trigger#customize-the-http-endpoint):
``{id}``, ``{id?}`` (last segment only), ``{id:int}`` / ``{id:guid}`` / ``{id:alpha}`` / ``{id:bool}`` /
``{id:length(n)}`` …, and ``{*rest}`` catch-all. They are translated into aiohttp's own ``{name:regex}`` routes so
aiohttp does the matching; devhost only orders them the way ASP.NET routing prefers (literal segments first).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from aiohttp import hdrs, web
from multidict import CIMultiDict

from devhost.config import DevHostError

# Host default request body cap: 100 MB, FUNCTIONS_REQUEST_BODY_SIZE_LIMIT
# (functions-bindings-http-webhook-trigger#limits).
DEFAULT_BODY_LIMIT = 104_857_600
BODY_LIMIT_KEY = web.AppKey("devhost_body_limit", int)

_PARAM_RE = re.compile(
    r"^\{(?P<star>\*{1,2})?(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<constraints>(?::[A-Za-z]+(?:\([^)]*\))?)*)"
    r"(?P<optional>\?)?(?P<default>=[^}]*)?\}$"
)
_CONSTRAINT_RE = re.compile(r":([A-Za-z]+)(?:\(([^)]*)\))?")
_HEX = "[0-9a-fA-F]"
# ASP.NET Core route constraints (learn.microsoft.com/aspnet/core/fundamentals/routing#route-constraints).
# Value-range constraints (min/max/range) only check the shape here; devhost does not compare numbers.
_CONSTRAINT_PATTERNS: dict[str, Callable[[list[str]], str]] = {
    "int": lambda a: r"-?\d+",
    "long": lambda a: r"-?\d+",
    "min": lambda a: r"-?\d+",
    "max": lambda a: r"-?\d+",
    "range": lambda a: r"-?\d+",
    "decimal": lambda a: r"-?\d+(?:\.\d+)?",
    "double": lambda a: r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?",
    "float": lambda a: r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?",
    "bool": lambda a: r"(?i:true|false)",
    "alpha": lambda a: r"[A-Za-z]+",
    "datetime": lambda a: r"[^/]+",
    "guid": lambda a: f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}",
    "minlength": lambda a: f"[^/]{{{int(a[0])},}}",
    "maxlength": lambda a: f"[^/]{{1,{int(a[0])}}}",
    "length": lambda a: f"[^/]{{{int(a[0])}}}" if len(a) == 1 else f"[^/]{{{int(a[0])},{int(a[1])}}}",
}


@dataclass(frozen=True)
class RouteTemplate:
    """A function route translated for aiohttp."""

    function_name: str
    template: str
    paths: tuple[str, ...]  # one aiohttp path, or two when the last parameter is optional
    precedence: tuple[int, ...]
    methods: tuple[str, ...] | None


def translate_route(function_name: str, template: str, prefix: str, methods: list[str] | None) -> RouteTemplate:
    """Translate an ASP.NET route template into aiohttp path(s) under ``/{prefix}``.

    Raises:
        DevHostError: a template construct devhost does not support (complex segments, defaults, regex constraints,
            an optional parameter that is not the last segment).
    """
    where = f"function '{function_name}': route '{template}'"
    segments = [s for s in template.strip("/").split("/")] if template.strip("/") else []
    out: list[str] = []
    ranks: list[int] = []
    optional_tail = False
    for i, seg in enumerate(segments):
        if "{" not in seg and "}" not in seg:
            if not seg:
                raise DevHostError(f"{where}: empty path segment")
            out.append(seg)
            ranks.append(0)
            continue
        m = _PARAM_RE.match(seg)
        if not m:
            raise DevHostError(f"{where}: segment '{seg}' is not supported (one parameter per segment only)")
        if m.group("default"):
            raise DevHostError(f"{where}: default values in route parameters are not supported by devhost")
        name = m.group("name")
        if m.group("star"):
            if i != len(segments) - 1:
                raise DevHostError(f"{where}: catch-all parameter must be the last segment")
            out.append(f"{{{name}:.*}}")
            ranks.append(4)
            continue
        patterns: list[str] = []
        for cname, cargs in _CONSTRAINT_RE.findall(m.group("constraints") or ""):
            factory = _CONSTRAINT_PATTERNS.get(cname.lower())
            if factory is None:
                raise DevHostError(f"{where}: route constraint '{cname}' is not supported by devhost")
            try:
                patterns.append(factory([a.strip() for a in cargs.split(",")] if cargs else []))
            except (ValueError, IndexError) as exc:
                raise DevHostError(f"{where}: bad arguments for constraint '{cname}'") from exc
        if not patterns:
            pattern = "[^{}/]+"
        else:
            # Every constraint must hold: all but the first become lookaheads anchored at the segment end.
            pattern = "".join(f"(?=(?:{p})(?![^/]))" for p in patterns[1:]) + f"(?:{patterns[0]})"
        if m.group("optional"):
            if i != len(segments) - 1:
                raise DevHostError(f"{where}: optional parameter '{name}' must be the last segment")
            optional_tail = True
        out.append(f"{{{name}:{pattern}}}" if patterns else f"{{{name}}}")
        ranks.append(3 if m.group("optional") else (1 if patterns else 2))
    base = "/" + prefix.strip("/") if prefix.strip("/") else ""
    full = base + "/" + "/".join(out) if out else (base or "/")
    paths = [full]
    if optional_tail:
        shorter = out[:-1]
        paths.append(base + "/" + "/".join(shorter) if shorter else (base or "/"))
    return RouteTemplate(
        function_name=function_name,
        template=template,
        paths=tuple(paths),
        precedence=tuple(ranks),
        methods=tuple(methods) if methods else None,
    )


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """JSON error body used for devhost's own 404/405/413/500 answers."""
    headers = extra.pop("headers", None)
    return web.json_response({"error": code, "message": message, **extra}, status=status, headers=headers)


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer unknown routes and wrong methods with JSON instead of aiohttp's text pages."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return error_response(404, "NotFound", f"no function route matches {request.method} {request.path}")
    except web.HTTPMethodNotAllowed as exc:
        allowed = sorted(exc.allowed_methods)
        return error_response(
            405,
            "MethodNotAllowed",
            f"{request.method} is not allowed on {request.path}",
            allowed=allowed,
            headers={"Allow": ", ".join(allowed)},
        )
    except web.HTTPRequestEntityTooLarge:
        return error_response(
            413, "PayloadTooLarge", f"request body exceeds {request.app.get(BODY_LIMIT_KEY, '?')} bytes"
        )


async def build_request(request: web.Request) -> func.HttpRequest:
    """aiohttp request → ``azure.functions.HttpRequest`` (repeated headers/query values joined with ',')."""
    body = await request.read()
    headers: dict[str, str] = {}
    for k, v in request.headers.items():
        key = k.lower()
        headers[key] = f"{headers[key]}, {v}" if key in headers else v
    params: dict[str, str] = {}
    for k, v in request.query.items():
        params[k] = f"{params[k]},{v}" if k in params else v
    return func.HttpRequest(
        method=request.method,
        url=str(request.url),
        headers=headers,
        params=params,
        route_params=dict(request.match_info),
        body=body,
    )


def build_response(result: Any, function_name: str) -> web.Response:
    """Map the handler's return value to an aiohttp response like the Python worker does.

    ``HttpResponse`` → status/headers/body (Content-Type from headers, else mimetype+charset); ``str``/``bytes`` →
    200 text; ``None`` → 204.
    """
    if result is None:
        return web.Response(status=204)
    if isinstance(result, str | bytes):
        result = func.HttpResponse(result)
    if not isinstance(result, func.HttpResponse):
        return error_response(
            500,
            "InvalidReturnValue",
            f"function '{function_name}' returned {type(result).__name__}, expected azure.functions.HttpResponse",
        )
    headers: CIMultiDict[str] = CIMultiDict()
    for k, v in result.headers.items():
        headers.add(k, v)
    if hdrs.CONTENT_TYPE not in headers and result.get_body():
        mimetype = result.mimetype
        headers[hdrs.CONTENT_TYPE] = (
            f"{mimetype}; charset={result.charset}"
            if mimetype.startswith("text/") or mimetype == "application/json"
            else mimetype
        )
    return web.Response(status=result.status_code, body=result.get_body(), headers=headers)
