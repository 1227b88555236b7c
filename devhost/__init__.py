"""devhost: run this project's Azure Functions app locally without the Functions host.

It reads each function's own decorator metadata (``app.get_functions()``) and serves:

- HTTP triggers on aiohttp under ``/{routePrefix}`` (host.json, default ``api``), ASP.NET route templates,
  ``azure.functions.HttpRequest``/``HttpResponse`` mapping, JSON 404/405/413/500 answers.
- Timer triggers on NCRONTAB schedules (6 fields, UTC, croniter) with ``%SETTING%`` resolution, runOnStartup,
  the host's no-overlap singleton behaviour and ``@app.retry`` for timers.
- Queue triggers polling Azurite with host.json ``extensions.queues`` (batchSize, newBatchThreshold,
  visibilityTimeout, maxDequeueCount → ``<queue>-poison``, maxPollingInterval, messageEncoding).

Not emulated: function keys / authLevel (every route is anonymous locally), EasyAuth, the 230 s HTTP response cap,
functionTimeout for sync functions (async ones are cancelled), output/input bindings (rejected at startup),
identity-based connections, lease renewal past 10 minutes, multiple instances/scale-out, the timer schedule monitor
(``use_monitor``: past_due only reflects lateness within this process), case-insensitive route literals,
WEBSITE_TIME_ZONE, Application Insights.
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy exports (PEP 562) so `python -m devhost.azurite` does not import its own module twice.
_EXPORTS = {
    "Azurite": "devhost.azurite",
    "AzuriteError": "devhost.azurite",
    "start_azurite": "devhost.azurite",
    "DevHostError": "devhost.config",
    "load_app": "devhost.functions",
    "DevHost": "devhost.host",
    "FunctionStats": "devhost.host",
    "InvocationError": "devhost.host",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'devhost' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
