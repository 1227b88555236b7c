"""HTTP plumbing shared by every console route: auth, input validation, JSON bodies, problem+json errors.

Each route function stays thin:

    TENANT_BODY = Obj({"enrollmentGroups": Prop(List(Str(max_length=256), max_items=50), required=True)})

    @bp.route(route="tenants/{tenantId}/devices", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    async def list_devices(req: func.HttpRequest) -> func.HttpResponse:
        return await handle(req, READ, _list_devices)

    async def _list_devices(ctx: RequestContext) -> func.HttpResponse:
        tenant_id = ctx.guid("tenantId")                        # 400 invalid-parameter unless a GUID
        limit = ctx.query_int("limit", default=100, minimum=1, maximum=1000)
        body = ctx.body(TENANT_BODY)                            # 400 unknown-field / validation-error, 413, 415
        ...

Bodies are declared with the specs of ``shared_code/validation.py`` (the API's one validation mechanism, shared
with the poll, which re-checks stored configuration with the same specs); query parameters and headers pass the same
text rule. Every string the API stores is valid Unicode text (no lone surrogates, noncharacters, bidi overrides or
isolates, C0/C1 controls).

``handle`` authenticates the bearer token (``shared_code.adapters.console_auth``) *before* anything else (so an
anonymous caller learns nothing, not even whether an id is well-formed), caps the body size, runs the action, and maps
the taxonomy in ``shared_code.errors`` to HTTP in this one place. Every 4xx/5xx is ``application/problem+json``
(RFC 9457) with a stable ``type`` URI (``PROBLEM_BASE`` + one of ``PROBLEM_TYPES``), a human ``detail`` and, for input
errors, the offending ``field`` (a path such as ``guard.maxPercent``, ``enrollmentGroups[3]``, or the parameter name).
Responses never carry stack traces, and URLs are scrubbed from details (an upstream message may name an internal host).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from azure.core.exceptions import AzureError

from shared_code import telemetry
from shared_code.bootstrap import Container, container
from shared_code.domain.ids import is_guid
from shared_code.errors import (
    AuthenticationError,
    ConfigInvalidError,
    ConflictError,
    ConsentRequiredError,
    FatalError,
    ForbiddenError,
    NotFoundError,
    PermissionMissingError,
    RetriableError,
    ValidationError,
)
from shared_code.validation import Obj, Prop, check_text, safe_name

READ = "Console.Read"
MANAGE = "Console.Manage"
MAX_BODY_BYTES = 64 * 1024
MAX_DETAIL_CHARS = 500
PROBLEM_BASE = "https://mtd-connector.dev/problems/"
# The stable problem types (slug → title). openapi.yaml lists the same slugs; a test keeps them in step.
PROBLEM_TYPES: dict[str, str] = {
    "unauthenticated": "Unauthenticated",
    "forbidden": "Forbidden",
    "invalid-parameter": "Invalid parameter",
    "invalid-json": "Invalid JSON",
    "invalid-body": "Invalid body",
    "unknown-field": "Unknown field",
    "validation-error": "Validation error",
    "unsupported-media-type": "Unsupported media type",
    "body-too-large": "Body too large",
    "not-found": "Not found",
    "conflict": "Conflict",
    "config-invalid": "Stored configuration invalid",
    "connector-not-ready": "Intune connector not ready",
    "device-has-no-owner": "Device has no registered owner",
    "device-service-unavailable": "Intune device service unavailable",
    "tenant-service-unavailable": "Intune tenant service unavailable",
    "user-token-rejected": "User token rejected",
    "permission-missing": "Permission missing",
    "consent-required": "Consent required",
    "upstream-error": "Upstream error",
    "upstream-unavailable": "Upstream unavailable",
    "storage-unavailable": "Storage unavailable",
    "internal-error": "Internal error",
}
_URL_RE = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
log = logging.getLogger("connector.http")


class ApiError(Exception):
    """An error answered as application/problem+json."""

    def __init__(self, status: int, type_: str, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.type = type_
        self.detail = detail
        self.field = field
        self.extra = extra


def invalid(field_: str, detail: str, type_: str = "validation-error") -> ValidationError:
    """A 400 naming the offending field (the same error the shared specs raise)."""
    return ValidationError(detail, field=field_, kind=type_)


# ---- scalar validators (usable outside a RequestContext too) ------------------------------------------------------
def parse_guid(value: Any, field_: str) -> str:
    """``value`` as a canonical lower-case GUID string.

    Raises:
        ValidationError: 400 ``invalid-parameter`` naming ``field_``.
    """
    if not is_guid(value):
        raise invalid(field_, f"{field_} must be a GUID (8-4-4-4-12 hexadecimal digits)", "invalid-parameter")
    return str(value).lower()


def parse_int(raw: str, field_: str, *, minimum: int, maximum: int) -> int:
    """A decimal integer within [minimum, maximum] (no signs other than '-', no spaces, no exponents)."""
    if not re.fullmatch(r"-?[0-9]{1,18}", raw):
        raise invalid(field_, f"{field_} must be an integer between {minimum} and {maximum}", "invalid-parameter")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise invalid(field_, f"{field_} must be between {minimum} and {maximum}", "invalid-parameter")
    return value


def parse_bool(raw: str, field_: str) -> bool:
    """``true`` or ``false`` (any case)."""
    lowered = raw.lower()
    if lowered not in ("true", "false"):
        raise invalid(field_, f"{field_} must be true or false", "invalid-parameter")
    return lowered == "true"


def strict_object(body: Any, schema: Obj | Mapping[str, Prop]) -> dict[str, Any]:
    """Validate ``body`` against ``schema`` (unknown fields refused) and return the normalised copy.

    Raises:
        ValidationError: 400 ``invalid-body`` / ``unknown-field`` / ``validation-error`` naming the field.
    """
    spec = schema if isinstance(schema, Obj) else Obj(props=schema)
    return spec.check(body, "")


# ---- the request context -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequestContext:
    """What a route action gets: the request, the caller, and the composition root."""

    req: func.HttpRequest
    caller: dict[str, Any]
    services: Container

    def route(self, name: str) -> str:
        """A route parameter (always present: the route template guarantees it)."""
        return str(self.req.route_params.get(name, ""))

    def guid(self, name: str) -> str:
        """A route parameter that must be a canonical GUID (lower-cased). 400 ``invalid-parameter`` otherwise.

        The one rule for ids in paths: 8-4-4-4-12 hex digits, nothing else (``uuid.UUID`` would also take braces, a
        ``urn:uuid:`` prefix or no dashes and rewrite them, giving one tenant several spellings).
        """
        return parse_guid(self.route(name), name)

    def query(self, name: str, *, max_length: int = 256) -> str | None:
        """A raw query parameter (``None`` when absent), length-capped."""
        raw: str | None = self.req.params.get(name)
        if raw is None:
            return None
        if len(raw) > max_length:
            raise invalid(name, f"{name} must be at most {max_length} characters", "invalid-parameter")
        return check_text(raw, name, "invalid-parameter")

    def header(self, name: str, *, max_length: int) -> str | None:
        """A request header (``None`` when absent): 1..``max_length`` characters of valid text, else 400
        ``invalid-parameter`` naming the header."""
        raw: str | None = self.req.headers.get(name)
        if raw is None:
            return None
        if not 1 <= len(raw) <= max_length:
            raise invalid(name, f"{name} must be 1..{max_length} characters", "invalid-parameter")
        return check_text(raw, name, "invalid-parameter")

    def query_int(self, name: str, *, default: int, minimum: int, maximum: int) -> int:
        """An integer query parameter within [minimum, maximum]; ``default`` when absent."""
        raw = self.query(name, max_length=20)
        return default if raw is None else parse_int(raw, name, minimum=minimum, maximum=maximum)

    def query_bool(self, name: str, *, default: bool = False) -> bool:
        """``true``/``false`` query parameter; ``default`` when absent."""
        raw = self.query(name, max_length=5)
        return default if raw is None else parse_bool(raw, name)

    def query_str(self, name: str, *, max_length: int = 256, pattern: str | None = None) -> str | None:
        """A string query parameter, optionally matching ``pattern`` in full."""
        raw = self.query(name, max_length=max_length)
        if raw is not None and pattern is not None and not re.fullmatch(pattern, raw):
            raise invalid(name, f"{name} has an invalid format", "invalid-parameter")
        return raw

    def query_guid(self, name: str) -> str | None:
        """An optional GUID query parameter."""
        raw = self.query(name, max_length=36)
        return None if raw is None else parse_guid(raw, name)

    def allow_query(self, *names: str) -> None:
        """Refuse query parameters other than ``names`` (400 ``invalid-parameter``)."""
        for name in self.req.params:
            if name not in names:
                raise invalid(safe_name(name), f"unknown query parameter {safe_name(name)!r}", "invalid-parameter")

    def json_body(self) -> dict[str, Any]:
        """The body as a JSON object.

        Raises:
            ApiError: 413 when too large, 415 when not declared as JSON, 400 when not a JSON object.
        """
        raw = self.req.get_body() or b""
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, "body-too-large", f"request body exceeds {MAX_BODY_BYTES} bytes", field="body")
        content_type = (self.req.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if raw and content_type and content_type != "application/json" and not content_type.endswith("+json"):
            raise ApiError(415, "unsupported-media-type", "request body must be application/json", field="body")
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ApiError(400, "invalid-json", "request body is not valid JSON", field="body") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid-body", "request body must be a JSON object", field="body")
        return body

    def body(self, schema: Obj | Mapping[str, Prop]) -> dict[str, Any]:
        """The JSON body validated with :func:`strict_object`."""
        return strict_object(self.json_body(), schema)


# ---- responses -----------------------------------------------------------------------------------------------------
def _scrub(detail: str) -> str:
    """No URLs (internal hosts, SAS tokens, nextLinks) and no unbounded text in a response detail."""
    text = _URL_RE.sub("<url>", detail)
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


def problem(status: int, type_: str, detail: str, *, field: str | None = None, **extra: Any) -> func.HttpResponse:
    """An RFC 9457 problem response."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + type_,
        "title": PROBLEM_TYPES.get(type_, type_.replace("-", " ").capitalize()),
        "status": status,
        "detail": _scrub(detail),
    }
    if field is not None:
        body["field"] = field
    for key, value in extra.items():
        body.setdefault(key, _scrub(value) if isinstance(value, str) else value)
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return func.HttpResponse(
        json.dumps(body), status_code=status, mimetype="application/problem+json", headers=headers
    )


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    """A JSON response."""
    return func.HttpResponse(
        json.dumps(body, default=str),
        status_code=status,
        mimetype="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", **(headers or {})},
    )


Action = Callable[[RequestContext], Awaitable[func.HttpResponse]]


async def handle(req: func.HttpRequest, role: str, action: Action) -> func.HttpResponse:
    """Authenticate, cap the body, run ``action``, and map errors to problem+json (the only place that does).

    One telemetry span per request (route template, method, status, tenant); it never waits for telemetry to be
    configured, so a cold start answers as fast as without it.
    """
    tenant = req.route_params.get("tenantId")
    attributes = {"http.request.method": req.method, "http.route": _route_template(req),
                  "tenant_id": tenant.lower() if is_guid(tenant) else None}
    async with telemetry.unit(telemetry.HTTP, attributes, wait=False) as work:
        response = await _handle(req, role, action)
        work.set(**{"http.response.status_code": response.status_code})
        return response


def _upstream_ids() -> str:
    """The failed Graph/Intune responses of this request (request-id, client-request-id) for the log line."""
    work = telemetry.current()
    summary = work.upstream_summary() if work is not None else ""
    return f"; upstream: {summary}" if summary else ""


def _route_template(req: func.HttpRequest) -> str:
    """The request path with its route parameters named (``/api/tenants/{tenantId}/sync``): bounded cardinality."""
    path = "/" + "/".join(req.url.split("://", 1)[-1].split("?", 1)[0].split("/")[1:])
    segments = path.split("/")
    names = {str(v): k for k, v in req.route_params.items() if v}
    return "/".join("{" + names[s] + "}" if s in names else s for s in segments)


async def _handle(req: func.HttpRequest, role: str, action: Action) -> func.HttpResponse:
    services = container()
    try:
        caller = await services.console_auth.authenticate(req.headers.get("Authorization"), role)
        if len(req.get_body() or b"") > MAX_BODY_BYTES:
            raise ApiError(413, "body-too-large", f"request body exceeds {MAX_BODY_BYTES} bytes", field="body")
        return await action(RequestContext(req=req, caller=caller, services=services))
    except AuthenticationError as exc:
        # The reason (expired, wrong audience, client not allowed …) goes to the log only: telling a caller which
        # check failed helps whoever is forging tokens, not the console.
        log.info("console token refused: %s", exc)
        return problem(401, "unauthenticated", "the bearer token is missing or invalid")
    except ForbiddenError as exc:
        return problem(403, "forbidden", str(exc))
    except ApiError as exc:
        return problem(exc.status, exc.type, exc.detail, field=exc.field, **exc.extra)
    except ValidationError as exc:
        return problem(400, exc.kind, str(exc), field=exc.field)
    except NotFoundError as exc:
        return problem(404, "not-found", str(exc))
    except ConfigInvalidError as exc:
        return problem(409, "config-invalid", str(exc), field=exc.field)
    except ConflictError as exc:
        return problem(409, "conflict", str(exc), **exc.details)
    except PermissionMissingError as exc:
        return problem(424, "permission-missing", f"permission_missing: {exc.permission}", permission=exc.permission)
    except ConsentRequiredError:
        return problem(424, "consent-required", "the customer tenant has not granted admin consent to the connector")
    except RetriableError as exc:
        log.warning("upstream unavailable in HTTP route: %s (status %s)%s", type(exc).__name__, exc.status,
                    _upstream_ids())
        return problem(503, "upstream-unavailable", "an upstream service is unavailable; retry later")
    except FatalError as exc:
        # An upstream refused for a reason retrying cannot fix; its message may name internals, so only the status.
        log.warning("upstream error in HTTP route: %s (status %s)%s", type(exc).__name__, exc.status, _upstream_ids())
        return problem(502, "upstream-error", f"an upstream service refused the request (HTTP {exc.status or '?'})")
    except AzureError:
        # Graph, Intune and Key Vault faults are mapped into the taxonomy by their adapters, so an Azure SDK error
        # that gets here comes from the connector's own Table/Queue storage (unreachable, throttled, a table or role
        # assignment missing): the console can retry later, and the incident id finds the stack in the log.
        incident = str(uuid.uuid4())
        log.exception("storage error in HTTP route (incident %s)", incident)
        return problem(503, "storage-unavailable", "the connector's storage is unavailable; retry later",
                       incident=incident)
    except Exception:
        # Unexpected: log with a correlation id, answer without internals.
        incident = str(uuid.uuid4())
        log.exception("unhandled error in HTTP route (incident %s)", incident)
        return problem(500, "internal-error", "unexpected error", incident=incident)
