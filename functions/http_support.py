"""HTTP plumbing shared by every console route: auth, JSON bodies, problem+json errors.

Each route function stays thin:

    @bp.route(route="tenants/{tenantId}/devices", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    async def list_devices(req: func.HttpRequest) -> func.HttpResponse:
        return await handle(req, READ, lambda ctx: _list_devices(ctx))

``handle`` authenticates the bearer token (``shared_code.adapters.console_auth``), runs the action, and maps the
taxonomy in ``shared_code.errors`` to HTTP in this one place. Responses never carry stack traces or internal URLs.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import azure.functions as func

from shared_code.bootstrap import Container, container
from shared_code.errors import (
    AuthenticationError,
    ConflictError,
    ConsentRequiredError,
    ForbiddenError,
    NotFoundError,
    PermissionMissingError,
    RetriableError,
    ValidationError,
)

READ = "Console.Read"
MANAGE = "Console.Manage"
MAX_BODY_BYTES = 64 * 1024
PROBLEM_BASE = "https://mtd-connector.dev/problems/"
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


@dataclass(frozen=True)
class RequestContext:
    """What a route action gets: the request, the caller, and the composition root."""

    req: func.HttpRequest
    caller: dict[str, Any]
    services: Container

    def route(self, name: str) -> str:
        """A route parameter (always present: the route template guarantees it)."""
        return str(self.req.route_params.get(name, ""))

    def json_body(self) -> dict[str, Any]:
        """The body as a JSON object.

        Raises:
            ApiError: 413 when too large, 400 when not a JSON object.
        """
        raw = self.req.get_body() or b""
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, "body-too-large", f"request body exceeds {MAX_BODY_BYTES} bytes", field="body")
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "invalid-json", "request body is not valid JSON", field="body") from None
        if not isinstance(body, dict):
            raise ApiError(400, "invalid-body", "request body must be a JSON object", field="body")
        return body


def problem(status: int, type_: str, detail: str, *, field: str | None = None, **extra: Any) -> func.HttpResponse:
    """An RFC 9457 problem response."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + type_,
        "title": type_.replace("-", " "),
        "status": status,
        "detail": detail,
    }
    if field is not None:
        body["field"] = field
    body.update(extra)
    headers = {"Cache-Control": "no-store"}
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
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


Action = Callable[[RequestContext], Awaitable[func.HttpResponse]]


async def handle(req: func.HttpRequest, role: str, action: Action) -> func.HttpResponse:
    """Authenticate, run ``action``, and map errors to problem+json (the only place that does)."""
    services = container()
    try:
        caller = await services.console_auth.authenticate(req.headers.get("Authorization"), role)
        return await action(RequestContext(req=req, caller=caller, services=services))
    except AuthenticationError as exc:
        return problem(401, "unauthenticated", str(exc))
    except ForbiddenError as exc:
        return problem(403, "forbidden", str(exc))
    except ApiError as exc:
        return problem(exc.status, exc.type, exc.detail, field=exc.field, **exc.extra)
    except ValidationError as exc:
        return problem(400, "validation-error", str(exc), field=exc.field)
    except NotFoundError as exc:
        return problem(404, "not-found", str(exc))
    except ConflictError as exc:
        return problem(409, "conflict", str(exc))
    except PermissionMissingError as exc:
        return problem(424, "permission-missing", f"permission_missing: {exc.permission}", permission=exc.permission)
    except ConsentRequiredError:
        return problem(424, "consent-required", "the customer tenant has not granted admin consent to the connector")
    except RetriableError:
        return problem(503, "upstream-unavailable", "an upstream service is unavailable; retry later")
    except Exception:
        # Unexpected: log with a correlation id, answer without internals.
        incident = str(uuid.uuid4())
        log.exception("unhandled error in HTTP route (incident %s)", incident)
        return problem(500, "internal-error", "unexpected error", incident=incident)
