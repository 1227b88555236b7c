"""Telemetry through devhost: the spans and metrics of one poll (and of the console requests around it), read from
the OpenTelemetry SDK's console exporters, and the upstream request ids of throttled or failed Graph calls.

The exporters write JSON to a buffer instead of stdout; everything else is the production path (shared_code/
telemetry.py with installed providers, the retry layer noting every response, the queue function's poll unit).
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared_code import telemetry
from tests.conftest import REPO
from tests.e2e.conftest import provision


def _json_objects(text: str) -> list[dict[str, Any]]:
    """The JSON documents the console exporters wrote one after another."""
    decoder = json.JSONDecoder()
    out: list[dict[str, Any]] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return out
        obj, index = decoder.raw_decode(text, index)
        out.append(obj)


class Console:
    """Console span and metric exporters writing to buffers, installed as the connector's telemetry."""

    def __init__(self) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        self.span_out, self.metric_out = io.StringIO(), io.StringIO()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=self.span_out)))
        reader = PeriodicExportingMetricReader(ConsoleMetricExporter(out=self.metric_out),
                                               export_interval_millis=3_600_000)
        self.meter_provider = MeterProvider(metric_readers=[reader])
        telemetry.install(self.tracer_provider, self.meter_provider)

    def spans(self, name: str) -> list[dict[str, Any]]:
        return [s for s in _json_objects(self.span_out.getvalue()) if s["name"] == name]

    def metrics(self) -> dict[str, list[dict[str, Any]]]:
        """Metric name → data points of the last export (cumulative)."""
        self.metric_out.truncate(0)
        self.metric_out.seek(0)
        self.meter_provider.force_flush()
        points: dict[str, list[dict[str, Any]]] = {}
        for export in _json_objects(self.metric_out.getvalue()):
            for resource in export["resource_metrics"]:
                for scope in resource["scope_metrics"]:
                    for metric in scope["metrics"]:
                        points[metric["name"]] = metric["data"]["data_points"]
        return points

    def close(self) -> None:
        telemetry.reset()
        self.meter_provider.shutdown()
        self.tracer_provider.shutdown()


@pytest.fixture(scope="module")
def console() -> Iterator[Console]:
    exporters = Console()
    try:
        yield exporters
    finally:
        exporters.close()



def _point(points: list[dict[str, Any]], **attributes: Any) -> dict[str, Any]:
    matching = [p for p in points if all(p["attributes"].get(k) == v for k, v in attributes.items())]
    assert len(matching) == 1, (attributes, points)
    return matching[0]


async def test_one_poll_is_one_span_with_its_cost_and_metrics_for_the_same(
    sim: Any, api: httpx.AsyncClient, devhost: Any, console: Console, caplog: pytest.LogCaptureFixture
) -> None:
    summary = await provision(sim, api, 1313)
    tid = summary["tenant_id"]
    # Two throttled Graph responses: retried by the transport, counted, and their request ids kept.
    sim.fault("throttle", match={"tenant": tid, "path_prefix": "/v1.0/"}, count=2, retry_after=0.01)
    assert (await api.post(f"/api/tenants/{tid}/sync")).status_code == 202
    await devhost.drain_queues()
    sim.clear_faults()
    status = (await api.get(f"/api/tenants/{tid}")).json()["status"]
    poll_status = status["lastPoll"]
    assert poll_status["result"] == "ok" and poll_status["throttled"] == 2

    [span] = [s for s in console.spans("connector.poll") if s["attributes"].get("connector.tenant_id") == tid]
    attrs = span["attributes"]
    assert span["kind"] == "SpanKind.CONSUMER" and span["status"]["status_code"] == "UNSET"
    assert attrs["connector.result"] == "ok" and attrs["connector.poll.mode"] == "full"
    assert attrs["connector.graph.requests"] == poll_status["requests"] > 0
    assert attrs["connector.graph.resource_units"] == poll_status["resourceUnits"] > 0
    assert attrs["connector.graph.throttled"] == 2 and attrs["connector.upstream_throttled"] == 2
    assert attrs["connector.poll.pages"] > 0
    assert attrs["connector.poll.events_written"] == status["counts"]["enrolled"] > 0
    assert attrs["messaging.message.id"] and attrs["connector.delivery_attempt"] == 1
    # What Microsoft support asks for: each throttled response's request-id and our client-request-id.
    errors = [e["attributes"] for e in span["events"] if e["name"] == "upstream.error"]
    assert [e["http.response.status_code"] for e in errors] == [429, 429]
    assert all(e["upstream.request_id"] and len(e["upstream.client_request_id"]) == 36 for e in errors)
    assert attrs["connector.upstream_request_id"] == errors[-1]["upstream.request_id"]

    # The console requests around it are server spans with the route template, never the raw ids.
    http = [s for s in console.spans("connector.http") if s["attributes"].get("connector.tenant_id") == tid]
    routes = sorted((s["attributes"]["http.request.method"], s["attributes"]["http.route"],
                     s["attributes"]["http.response.status_code"]) for s in http)
    assert routes == [("GET", "/api/tenants/{tenantId}", 200), ("POST", "/api/tenants/{tenantId}/sync", 202),
                      ("PUT", "/api/tenants/{tenantId}", 201)]
    assert all(s["kind"] == "SpanKind.SERVER" for s in http)

    metrics = console.metrics()
    assert _point(metrics["connector.polls"], mode="full", result="ok")["value"] >= 1
    assert _point(metrics["connector.upstream.requests"], operation="poll")["value"] >= poll_status["requests"]
    assert _point(metrics["connector.upstream.throttled"], operation="poll")["value"] >= 2
    assert _point(metrics["connector.graph.resource_units"], operation="poll")["value"] >= poll_status[
        "resourceUnits"]
    assert _point(metrics["connector.poll.events_written"])["value"] >= status["counts"]["enrolled"]
    assert _point(metrics["connector.poll.pages"])["value"] >= attrs["connector.poll.pages"]
    assert _point(metrics["connector.poll.duration"], mode="full", result="ok")["count"] >= 1
    assert _point(metrics["connector.http.requests"], **{"http.route": "/api/tenants/{tenantId}/sync",
                                                         "http.response.status_code": 202})["value"] >= 1

    # A heartbeat and a threat upload are spans of their own, with the tenant and the outcome.
    await devhost.run_timer("send_heartbeats")
    beats = [s for s in console.spans("connector.heartbeat") if s["attributes"].get("connector.tenant_id") == tid]
    assert [b["attributes"]["connector.result"] for b in beats] == ["sent"]
    assert beats[0]["kind"] == "SpanKind.INTERNAL" and beats[0]["attributes"]["connector.upstream_requests"] >= 1
    device = (await api.get(f"/api/tenants/{tid}/devices", params={"limit": 1})).json()["devices"][0]["deviceId"]
    threat = {"level": "high", "detectedAt": "2026-01-05T10:00:00Z"}
    assert (await api.put(f"/api/tenants/{tid}/devices/{device}/threat", json=threat)).status_code == 202
    [upload] = [s for s in console.spans("connector.upload") if s["attributes"].get("connector.tenant_id") == tid]
    assert upload["attributes"]["connector.upload.kind"] and upload["attributes"]["connector.result"] == "Pending"
    await devhost.run_timer("dispatch_polls")  # samples the poison queue for the alert's gauge
    metrics = console.metrics()
    poison_queue = devhost.settings["POLL_QUEUE_NAME"] + "-poison"
    assert _point(metrics["connector.queue.poison_length"], queue=poison_queue)["value"] == 0
    assert _point(metrics["connector.heartbeats"], result="sent")["value"] >= 1
    assert _point(metrics["connector.uploads"], result="Pending")["value"] >= 1

    # A poll that fails: the span says so and the error log names the Graph request ids.
    sim.fault("status", match={"tenant": tid, "path_prefix": "/v1.0/"}, unlimited=True, status=503, retry_after=0.01)
    caplog.set_level(logging.ERROR, logger="connector.telemetry")
    caplog.set_level(logging.WARNING, logger="connector.http")
    try:
        assert (await api.post(f"/api/tenants/{tid}/sync", params={"full": "true"})).status_code == 202
        await devhost.drain_queues()
        # A console request Graph refuses: 503 to the caller, the request ids in the warning.
        assert (await api.post(f"/api/tenants/{tid}/sync", params={"dryRun": "true"})).status_code == 503
    finally:
        sim.clear_faults()
    [warning] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("upstream unavailable")]
    assert "upstream: 503 request-id=" in warning and "client-request-id=" in warning
    failed = [s for s in console.spans("connector.poll")
              if s["attributes"].get("connector.tenant_id") == tid and s["attributes"]["connector.result"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["attributes"]["connector.poll.failure_reason"]
    assert {e["attributes"]["http.response.status_code"] for e in failed[0]["events"]} == {503}
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("connector.poll.failed")]
    assert f"tenant={tid}" in line and "503 request-id=" in line and "client-request-id=" in line


def test_without_configuration_opentelemetry_is_never_imported() -> None:
    code = (
        "import asyncio, sys\n"
        "import function_app\n"
        "from shared_code import telemetry\n"
        "async def main():\n"
        "    async with telemetry.unit(telemetry.POLL, {'tenant_id': 'x'}) as u:\n"
        "        telemetry.note_response(429, {'request-id': 'r'}, {'client-request-id': 'c'}, 'h')\n"
        "    assert u.upstream_throttled == 1 and u.upstream_errors[0].request_id == 'r'\n"
        "asyncio.run(main())\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'azure.monitor')))\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS_", "OTEL_"))}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_with_a_connection_string_the_distro_is_configured_with_the_entra_identity() -> None:
    # The distro is configured for real (nothing is sent: statsbeat off, the exporter only sends on export).
    code = (
        "import asyncio, logging\n"
        "from shared_code import telemetry\n"
        "async def main():\n"
        "    async with telemetry.unit(telemetry.POLL, {'tenant_id': 't'}) as u:\n"
        "        assert u.span is not None and u.span.is_recording()\n"
        "asyncio.run(main())\n"
        "from opentelemetry import trace\n"
        "from azure.identity import ManagedIdentityCredential\n"
        "assert type(trace.get_tracer_provider()).__module__.startswith('opentelemetry.sdk')\n"
        "cred = telemetry._auth_credential({'APPLICATIONINSIGHTS_AUTHENTICATION_STRING':\n"
        "                                   'ClientId=11111111-2222-3333-4444-555555555555;Authorization=AAD'})\n"
        "assert isinstance(cred, ManagedIdentityCredential)\n"
        "assert telemetry._auth_credential({}) is None\n"
        "# Logs stay with the Functions host (no second copy in traces).\n"
        "assert not [h for h in logging.getLogger().handlers if 'opentelemetry' in type(h).__module__]\n"
        "print(telemetry._pipeline.mode)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS_", "OTEL_"))}
    env |= {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                                                 "IngestionEndpoint=https://127.0.0.1:9/",
        "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "ClientId=11111111-2222-3333-4444-555555555555;"
                                                     "Authorization=AAD",
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
    }
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip().endswith("azure"), done.stdout + done.stderr


def test_otel_traces_exporter_console_prints_the_spans_locally() -> None:
    code = (
        "import asyncio\n"
        "from shared_code import telemetry\n"
        "async def main():\n"
        "    async with telemetry.unit(telemetry.POLL, {'tenant_id': 't1'}) as u:\n"
        "        u.set(result='ok')\n"
        "asyncio.run(main())\n"
        "telemetry.flush()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS_", "OTEL_"))}
    env["OTEL_TRACES_EXPORTER"] = "console"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    [span] = [s for s in _json_objects(done.stdout) if s.get("name") == "connector.poll"]
    assert span["attributes"]["connector.tenant_id"] == "t1" and span["resource"]["attributes"][
        "service.name"] == "mtd-connector"
    metrics = [m["name"] for e in _json_objects(done.stdout) if "resource_metrics" in e
               for r in e["resource_metrics"] for s in r["scope_metrics"] for m in s["metrics"]]
    assert "connector.polls" in metrics
