"""The Azure Functions app (Python v2 model): creates the app and registers the blueprints in functions/."""

from __future__ import annotations

import logging

import azure.functions as func

from functions import (
    enrollment_http,
    enrollment_jobs,
    health,
    identity_http,
    intune_http,
    intune_jobs,
    tenants_http,
)

# The SDK and HTTP-client loggers log every outbound request at INFO: full URLs with group names, object ids and
# $skiptoken/$deltatoken values. Only their warnings go to Application Insights (devhost does the same).
for _noisy in ("azure", "msal", "httpx", "httpcore", "urllib3", "kiota_http", "kiota_abstractions", "msgraph",
               "msgraph_core", "aiohttp.access", "aiohttp.client"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

# Routes authenticate the console's bearer JWT in code (functions/http_support.py), so they behave the same under
# devhost and in Azure; function keys may be layered on top but are never the only guard.
app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
for blueprint in (
    health.bp,
    tenants_http.bp,
    enrollment_http.bp,
    enrollment_jobs.bp,
    intune_http.bp,
    intune_jobs.bp,
    identity_http.bp,
):
    app.register_functions(blueprint)
