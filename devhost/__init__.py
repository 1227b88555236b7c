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

from devhost.azurite import Azurite, AzuriteError, start_azurite
from devhost.config import DevHostError
from devhost.functions import load_app
from devhost.host import DevHost, FunctionStats, InvocationError

__all__ = [
    "Azurite",
    "AzuriteError",
    "DevHost",
    "DevHostError",
    "FunctionStats",
    "InvocationError",
    "load_app",
    "start_azurite",
]
