"""Telemetry an operator can act on: one OpenTelemetry span per poll, heartbeat, upload and console request, metrics
for the same, and the request ids of failed Graph/Intune calls on spans and in error logs.

Configured once per process on first use, never at import:

* ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set → the Azure Monitor distro (``azure-monitor-opentelemetry``). The
  Bicep disables local auth on Application Insights and sets ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` to
  ``ClientId=<user-assigned identity>;Authorization=AAD``: the exporter gets a ``ManagedIdentityCredential`` for that
  client id (the identity holds Monitoring Metrics Publisher on the component). The distro exports spans and
  metrics only: the Functions host already forwards log records to ``traces`` (where the alerts look), so exporting
  them again would double them. Library auto-instrumentation (Azure SDK, HTTP clients) stays off: a full sync makes
  thousands of storage and Graph calls, and the spans here carry their totals.
* ``OTEL_TRACES_EXPORTER`` or ``OTEL_METRICS_EXPORTER`` = ``console`` → the OpenTelemetry SDK's console exporters
  (local runs).
* otherwise off: OpenTelemetry is never imported, and a unit costs a few attribute writes.

An HTTP request never waits for the configuration (it runs in a thread; spans started before it finished are not
recorded), so a cold start of the console API pays nothing for telemetry. Timer and queue work waits for it once.

Upstream request ids: every response of the one retry layer (``shared_code.adapters.http_retry``) goes through
:func:`note_response`. A status ≥ 400 is remembered in the current unit (``request-id`` and ``client-request-id``, what
Microsoft support asks for), added to its span as an ``upstream.error`` event, and logged by the unit when it fails.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("connector.telemetry")

SERVICE_NAME = "mtd-connector"
INSTRUMENTATION_SCOPE = "shared_code.telemetry"
# Failed upstream responses remembered per unit (span events and the error log): the first ones tell the story.
MAX_UPSTREAM_ERRORS = 10
# What the units are called (span names; ``connector.<unit>``) and their kind in Application Insights: consumer and
# server spans become ``requests`` rows, internal ones ``dependencies`` rows of type InProc.
POLL, HEARTBEAT, UPLOAD, UPLOAD_RESULTS, HTTP = "poll", "heartbeat", "upload", "upload_results", "http"
_KINDS = {POLL: "CONSUMER", HEARTBEAT: "INTERNAL", UPLOAD: "INTERNAL", UPLOAD_RESULTS: "INTERNAL", HTTP: "SERVER"}


_SEMCONV_PREFIXES = ("http.", "server.", "messaging.")


def _attribute_name(key: str) -> str:
    return key if key.startswith(_SEMCONV_PREFIXES) else f"connector.{key}"


@dataclass
class UpstreamError:
    """One failed Graph/Intune response."""

    status: int
    request_id: str
    client_request_id: str
    host: str

    def attributes(self) -> dict[str, Any]:
        """Span event attributes."""
        return {"http.response.status_code": self.status, "upstream.request_id": self.request_id,
                "upstream.client_request_id": self.client_request_id, "server.address": self.host}

    def __str__(self) -> str:
        return f"{self.status} request-id={self.request_id} client-request-id={self.client_request_id}"


@dataclass
class Unit:
    """One unit of work being measured: its attributes, its upstream traffic, and (when enabled) its span."""

    name: str
    attributes: dict[str, Any] = field(default_factory=dict)
    upstream_requests: int = 0
    upstream_throttled: int = 0
    upstream_errors: list[UpstreamError] = field(default_factory=list)
    span: Any = None

    def set(self, **attributes: Any) -> None:
        """Set attributes (``None`` values are skipped); names get the ``connector.`` prefix unless they are
        OpenTelemetry semantic-convention names (``http.``, ``server.``, ``messaging.``)."""
        for key, value in attributes.items():
            if value is None:
                continue
            name = _attribute_name(key)
            self.attributes[name] = value
            if self.span is not None:
                self.span.set_attribute(name, value)

    def get(self, key: str, default: Any = None) -> Any:
        """An attribute set before (short names as in :meth:`set`)."""
        return self.attributes.get(_attribute_name(key), default)

    def note(self, status: int, headers: Mapping[str, str], request_headers: Mapping[str, str], host: str) -> None:
        """Count one upstream response; remember a failed one and add it to the span."""
        self.upstream_requests += 1
        if status == 429:
            self.upstream_throttled += 1
        if status < 400:
            return
        error = UpstreamError(status, headers.get("request-id", ""), request_headers.get("client-request-id", ""),
                              host)
        if len(self.upstream_errors) < MAX_UPSTREAM_ERRORS:
            self.upstream_errors.append(error)
        if self.span is not None:
            self.span.add_event("upstream.error", error.attributes())

    def upstream_summary(self) -> str:
        """The remembered failed responses, for an error log line ("" when none)."""
        return "; ".join(str(e) for e in self.upstream_errors[:3])


_current: contextvars.ContextVar[Unit | None] = contextvars.ContextVar("connector_telemetry_unit", default=None)


def note_response(status: int, headers: Mapping[str, str], request_headers: Mapping[str, str], host: str) -> None:
    """Called by the retry layer for every upstream response (also when telemetry is off: error logs use it)."""
    unit = _current.get()
    if unit is not None:
        unit.note(status, headers, request_headers, host)


def current() -> Unit | None:
    """The unit of work the caller runs in, if any."""
    return _current.get()


# ---- configuration ---------------------------------------------------------------------------------------------------
class _Pipeline:
    """Tracer and instruments of the configured providers."""

    def __init__(self, tracer_provider: Any, meter_provider: Any, mode: str) -> None:
        from opentelemetry import trace

        self.mode = mode
        self.trace = trace
        self.tracer = tracer_provider.get_tracer(INSTRUMENTATION_SCOPE)
        meter = meter_provider.get_meter(INSTRUMENTATION_SCOPE)
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.polls = meter.create_counter("connector.polls", unit="{poll}", description="polls by mode and result")
        self.poll_duration = meter.create_histogram("connector.poll.duration", unit="s", description="poll time")
        self.pages = meter.create_counter("connector.poll.pages", unit="{page}", description="Graph pages read")
        self.events = meter.create_counter("connector.poll.events_written", unit="{event}",
                                           description="change-feed events written")
        self.requests = meter.create_counter("connector.upstream.requests", unit="{request}",
                                             description="Graph/Intune requests (retries included) by operation")
        self.resource_units = meter.create_counter("connector.graph.resource_units", unit="{RU}",
                                                   description="Graph resource units charged")
        self.throttled = meter.create_counter("connector.upstream.throttled", unit="{response}",
                                              description="429 responses by operation")
        self.heartbeats = meter.create_counter("connector.heartbeats", unit="{heartbeat}", description="by result")
        self.uploads = meter.create_counter("connector.uploads", unit="{upload}", description="by kind and result")
        self.http = meter.create_counter("connector.http.requests", unit="{request}",
                                         description="console API requests by route and status")
        self.http_duration = meter.create_histogram("connector.http.duration", unit="s", description="API latency")
        self.poison = meter.create_gauge("connector.queue.poison_length", unit="{message}",
                                         description="approximate messages in the poll queue's poison queue")


_pipeline: _Pipeline | None = None
_decided = threading.Event()
_lock = threading.Lock()
_started = False


def wanted(env: Mapping[str, str] | None = None) -> str:
    """Which exporter the environment asks for: ``azure``, ``console`` or ``off`` (no import involved)."""
    env = os.environ if env is None else env
    if env.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
        return "azure"
    if "console" in (env.get("OTEL_TRACES_EXPORTER", "") + "," + env.get("OTEL_METRICS_EXPORTER", "")).lower():
        return "console"
    return "off"


def _auth_credential(env: Mapping[str, str]) -> Any:
    """The Entra credential for Application Insights from ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` (the same
    value the Functions host reads): ``Authorization=AAD`` with an optional ``ClientId`` of a user-assigned identity."""
    raw = env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "")
    pairs = dict(part.split("=", 1) for part in raw.split(";") if "=" in part)
    values = {k.strip().lower(): v.strip() for k, v in pairs.items()}
    if values.get("authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential

    return ManagedIdentityCredential(client_id=values.get("clientid") or None)


def _configure_azure(env: Mapping[str, str]) -> _Pipeline:
    # Only the App Service detector: it reads environment variables. The VM detector would call IMDS at startup.
    os.environ.setdefault("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "azure_app_service")
    # No log export: the Functions host forwards log records to `traces` already. The distro (1.8) reads this only
    # from the environment (a disable_logging argument is overwritten by it).
    os.environ.setdefault("OTEL_LOGS_EXPORTER", "none")
    # Every span: the distro's default rate-limited sampler (5 traces/s) would drop polls of a busy fleet at random,
    # and there are few of them (one per tenant per poll interval). OTEL_TRACES_SAMPLER(_ARG) overrides.
    os.environ.setdefault("OTEL_TRACES_SAMPLER", "always_on")
    from azure.monitor.opentelemetry import configure_azure_monitor
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.resources import Resource

    credential = _auth_credential(env)
    if credential is None:
        log.warning("APPLICATIONINSIGHTS_AUTHENTICATION_STRING has no Authorization=AAD: exporting with the "
                    "connection string alone (refused where local auth is disabled)")
    configure_azure_monitor(
        connection_string=env["APPLICATIONINSIGHTS_CONNECTION_STRING"],
        credential=credential,
        enable_live_metrics=False,
        resource=Resource.create({"service.name": SERVICE_NAME}),
        instrumentation_options={name: {"enabled": False} for name in (
            "azure_sdk", "django", "fastapi", "flask", "httpx", "psycopg2", "requests", "urllib", "urllib3")},
    )
    return _Pipeline(trace.get_tracer_provider(), metrics.get_meter_provider(), "azure")


def _configure_console() -> _Pipeline:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    resource = Resource.create({"service.name": SERVICE_NAME})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60_000)
    return _Pipeline(tracer_provider, MeterProvider(resource=resource, metric_readers=[reader]), "console")


def _configure() -> None:
    global _pipeline
    mode = wanted()
    try:
        _pipeline = _configure_azure(os.environ) if mode == "azure" else (
            _configure_console() if mode == "console" else None)
        if _pipeline is not None:
            log.info("telemetry: %s exporter configured", mode)
    except Exception as exc:  # noqa: BLE001 - telemetry must never stop the connector
        log.warning("telemetry: could not configure the %s exporter: %s", mode, exc)
        _pipeline = None
    finally:
        _decided.set()


def _start() -> bool:
    """Start configuring (once); True once a pipeline is ready."""
    global _started
    if _decided.is_set():
        return _pipeline is not None
    with _lock:
        if not _started:
            _started = True
            if wanted() == "off":
                _decided.set()
                return False
            threading.Thread(target=_configure, name="telemetry-configure", daemon=True).start()
    return False


async def ready(*, wait: bool) -> bool:
    """Make sure configuration has started; with ``wait``, wait until it is done. True when spans are recorded."""
    if _start() or not wait or _decided.is_set():
        # Decided (on or off): nothing to wait for — no thread hand-off per unit of work when telemetry is off.
        return _pipeline is not None
    import asyncio

    await asyncio.to_thread(_decided.wait)
    return _pipeline is not None


def install(tracer_provider: Any, meter_provider: Any) -> None:
    """Use these providers (tests: in-memory or console exporters); replaces any earlier configuration."""
    global _pipeline, _started
    with _lock:
        _pipeline = _Pipeline(tracer_provider, meter_provider, "custom")
        _started = True
        _decided.set()


def reset() -> None:
    """Forget the configuration (tests); the next unit decides again from the environment."""
    global _pipeline, _started
    with _lock:
        _pipeline = None
        _started = False
        _decided.clear()


# ---- units -----------------------------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def unit(name: str, attributes: Mapping[str, Any] | None = None, *, wait: bool = True) -> AsyncIterator[Unit]:
    """Measure one unit of work: ``async with telemetry.unit(POLL, {"tenant_id": tid}) as u: …; u.set(mode="x")``.

    The span (when telemetry is on) is current inside the block, so upstream responses and nested work land in it.
    An exception marks the span as an error and is re-raised. Metrics are recorded when the block ends.
    """
    enabled = await ready(wait=wait)
    work = Unit(name)
    token = _current.set(work)
    started = time.perf_counter()
    span_cm: Any = None
    if enabled and _pipeline is not None:
        kind = getattr(_pipeline.trace.SpanKind, _KINDS.get(name, "INTERNAL"))
        span_cm = _pipeline.tracer.start_as_current_span(f"connector.{name}", kind=kind, record_exception=True,
                                                         set_status_on_exception=True)
        work.span = span_cm.__enter__()
    work.set(**(attributes or {}))
    error: BaseException | None = None
    try:
        yield work
    except BaseException as exc:
        error = exc
        raise
    finally:
        _current.reset(token)
        parent = _current.get()
        if parent is not None:
            # A nested unit (an upload inside a console request) also counts for the enclosing one.
            parent.upstream_requests += work.upstream_requests
            parent.upstream_throttled += work.upstream_throttled
            parent.upstream_errors.extend(work.upstream_errors[: MAX_UPSTREAM_ERRORS - len(parent.upstream_errors)])
        work.set(upstream_requests=work.upstream_requests, upstream_throttled=work.upstream_throttled)
        if work.upstream_errors:
            work.set(upstream_request_id=work.upstream_errors[-1].request_id,
                     upstream_client_request_id=work.upstream_errors[-1].client_request_id)
        elapsed = time.perf_counter() - started
        if _pipeline is not None and span_cm is not None:
            with contextlib.suppress(Exception):
                _record_metrics(_pipeline, work, elapsed, error)
        if span_cm is not None:
            if error is not None:
                span_cm.__exit__(type(error), error, error.__traceback__)
            else:
                span_cm.__exit__(None, None, None)


def _record_metrics(p: _Pipeline, work: Unit, elapsed: float, error: BaseException | None) -> None:
    result = "error" if error is not None else str(work.get("result", "ok"))
    operation = {"operation": work.name}
    if work.name == POLL:
        poll = {"mode": str(work.get("poll.mode", "none")), "result": result}
        p.polls.add(1, poll)
        p.poll_duration.record(elapsed, poll)
        p.pages.add(int(work.get("poll.pages", 0)))
        p.events.add(int(work.get("poll.events_written", 0)))
        p.requests.add(int(work.get("graph.requests", work.upstream_requests)), operation)
        p.resource_units.add(int(work.get("graph.resource_units", 0)), operation)
        p.throttled.add(int(work.get("graph.throttled", work.upstream_throttled)), operation)
        return
    p.requests.add(work.upstream_requests, operation)
    p.throttled.add(work.upstream_throttled, operation)
    if work.name == HEARTBEAT:
        p.heartbeats.add(1, {"result": result})
    elif work.name == UPLOAD:
        p.uploads.add(1, {"kind": str(work.get("upload.kind", "")), "result": result})
    elif work.name == HTTP:
        attrs: dict[str, str | int] = {
            "http.route": str(work.get("http.route", "")),
            "http.request.method": str(work.get("http.request.method", "")),
            "http.response.status_code": int(work.get("http.response.status_code", 0)),
        }
        p.http.add(1, attrs)
        p.http_duration.record(elapsed, attrs)


def poll_result(work: Unit, result: Mapping[str, Any]) -> None:
    """Put a poll's outcome (the dict ``EnrollmentService.handle_message`` returns) on its unit."""
    usage = result.get("usage") or {}
    applied = result.get("applied") or {}
    work.set(
        tenant_id=result.get("tenantId"),
        result=result.get("result"),
        **{
            "poll.mode": result.get("mode"),
            "poll.pages": usage.get("pages"),
            "graph.requests": usage.get("requests"),
            "graph.resource_units": usage.get("resourceUnits"),
            "graph.throttled": usage.get("throttled"),
            "graph.retries": usage.get("retries"),
            "poll.events_written": sum(int(v) for v in applied.values()) if applied else None,
            "poll.staged": result.get("staged") or None,
            "poll.failure_reason": result.get("reason"),
        },
    )
    if result.get("result") == "failed":
        # Error log with what Microsoft support asks for: the failed Graph responses' request ids.
        upstream = work.upstream_summary()
        log.error("connector.poll.failed tenant=%s reason=%s%s", result.get("tenantId"), result.get("reason"),
                  f" upstream: {upstream}" if upstream else "")


def record_poison_length(count: int, queue: str) -> None:
    """The ``connector.queue.poison_length`` gauge (the poison-queue alert reads it from ``customMetrics``)."""
    if _pipeline is not None:
        _pipeline.poison.set(count, {"queue": queue})


def flush() -> None:
    """Export what is buffered (tests, shutdown)."""
    if _pipeline is not None:
        with contextlib.suppress(Exception):
            _pipeline.tracer_provider.force_flush()
        with contextlib.suppress(Exception):
            _pipeline.meter_provider.force_flush()
