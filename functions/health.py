"""GET /api/health: the only anonymous route. Says the app is up and nothing else (no versions, no settings)."""

from __future__ import annotations

import azure.functions as func

from functions.http_support import json_response

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness probe for load balancers and the console."""
    return json_response({"status": "ok"})
