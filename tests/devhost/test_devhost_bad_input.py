"""Bad input to devhost gets a clear error, never a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import azure.functions as func
import pytest

from devhost import DevHost, DevHostError, load_app
from devhost.__main__ import main
from devhost.config import load_host_json, parse_timespan

ROOT = Path(__file__).resolve().parents[2]


def _timer_app(schedule: str) -> func.FunctionApp:
    app = func.FunctionApp()

    @app.timer_trigger(arg_name="t", schedule=schedule)
    def every(t: func.TimerRequest) -> None: ...

    return app


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:app", "cannot import app module 'no_such_module_xyz'"),
        ("tests.devhost.devhost_sample_app:missing", "has no attribute 'missing'"),
        ("json:dumps", "not an azure.functions.FunctionApp"),
        ("bad spec:", "must look like 'module:attr'"),
    ],
)
def test_load_app_errors(spec, message):
    with pytest.raises(DevHostError, match=message):
        load_app(spec)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("* * *", "needs 6 fields"),
        ("99 * * * * *", "invalid NCRONTAB"),
        ("0 */5 * * * * * *", "needs 6 fields"),
        ("%NOT_SET_ANYWHERE_X%", "'NOT_SET_ANYWHERE_X'.*is not set"),
        ("00:00:xx", "needs 6 fields|TimeSpan"),
    ],
)
def test_bad_schedules(schedule, message):
    with pytest.raises(DevHostError, match=message) as info:
        DevHost(_timer_app(schedule), {}, port=0, host_json={})
    assert "every" in str(info.value)  # names the function


def test_good_schedules_5_fields_and_timespan():
    DevHost(_timer_app("*/5 * * * *"), {}, port=0, host_json={})
    DevHost(_timer_app("00:00:30"), {}, port=0, host_json={})
    DevHost(_timer_app("%S%"), {"S": "0 */5 * * * *"}, port=0, host_json={})


def test_unsupported_binding_and_trigger_fail_loudly():
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name="in", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="out", connection="AzureWebJobsStorage")
    def relay(msg: func.QueueMessage, out: func.Out[str]) -> None: ...

    with pytest.raises(DevHostError, match=r"relay.*binding 'out' of type 'queue'.*not supported"):
        DevHost(app, {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, port=0, host_json={})

    app2 = func.FunctionApp()

    @app2.blob_trigger(arg_name="blob", path="c/{name}", connection="AzureWebJobsStorage")
    def on_blob(blob: func.InputStream) -> None: ...

    with pytest.raises(DevHostError, match="trigger type 'blobTrigger' is not supported"):
        DevHost(app2, {}, port=0, host_json={})


def test_queue_trigger_config_errors():
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name="%Q%", connection="MyStorage")
    def q(msg: func.QueueMessage) -> None: ...

    with pytest.raises(DevHostError, match="'Q'"):
        DevHost(app, {}, port=0, host_json={})
    with pytest.raises(DevHostError, match="connection setting 'MyStorage' is not set"):
        DevHost(app, {"Q": "jobs"}, port=0, host_json={})
    with pytest.raises(DevHostError, match="lower-case"):
        DevHost(app, {"Q": "Jobs", "MyStorage": "x"}, port=0, host_json={})
    # AzureWebJobs<Name> fallback, as the host resolves connections.
    DevHost(app, {"Q": "jobs", "AzureWebJobsMyStorage": "UseDevelopmentStorage=true"}, port=0, host_json={})


def test_bad_routes_and_duplicate_routes():
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="a/{id:regex(^x$)}")
    def r1(req: func.HttpRequest) -> str:
        return ""

    with pytest.raises(DevHostError, match="constraint 'regex'"):
        DevHost(app, {}, port=0, host_json={})

    app2 = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app2.route(route="same", methods=["GET"])
    def one(req: func.HttpRequest) -> str:
        return ""

    @app2.route(route="same", methods=["GET"])
    def two(req: func.HttpRequest) -> str:
        return ""

    with pytest.raises(DevHostError, match="both serve GET /api/same"):
        DevHost(app2, {}, port=0, host_json={})


def test_unbound_parameter():
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="x")
    def x(req: func.HttpRequest, extra: str) -> str:
        return ""

    with pytest.raises(DevHostError, match=r"\['extra'\] are not bound"):
        DevHost(app, {}, port=0, host_json={})


@pytest.mark.parametrize(
    ("host_json", "message"),
    [
        ({"extensions": {"queues": {"batchSize": 64}}}, "batchSize: must be between 1 and 32"),
        ({"extensions": {"queues": {"maxPollingInterval": "soon"}}}, "TimeSpan"),
        ({"extensions": {"queues": {"messageEncoding": "utf8"}}}, "messageEncoding"),
        ({"extensions": {"queues": {"maxDequeueCount": "5"}}}, "expected an integer"),
        ({"extensions": {"queues": {"maxPollingInterval": "00:00:00.05"}}}, "at least"),
    ],
)
def test_bad_host_json(host_json, message):
    with pytest.raises(DevHostError, match=message):
        load_host_json(host_json)


def test_host_json_file_errors(tmp_path):
    bad = tmp_path / "host.json"
    bad.write_text("{nope")
    with pytest.raises(DevHostError, match="invalid JSON"):
        load_host_json(bad)
    with pytest.raises(DevHostError, match="not found"):
        load_host_json(tmp_path / "missing.json")
    assert parse_timespan("1.02:03:04.5", what="x") == 93784.5


def test_cli_bad_args_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--port", "abc"])
    assert info.value.code == 2
    assert "not a port number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--bogus"])


def test_cli_unknown_app_module_clear_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "devhost", "--app", "no_such_module_xyz:app", "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "devhost: error: cannot import app module 'no_such_module_xyz'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_serves_app_and_stops_on_sigterm(tmp_path):
    """`python -m devhost` end to end: private Azurite, HTTP served, clean exit on SIGTERM, nothing left behind."""
    import signal
    import urllib.request

    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TICK_SCHEDULE": "0 0 0 1 1 *",
        "SLOW_SCHEDULE": "0 0 0 1 1 *",
        "WORK_QUEUE": "cli-work",
    }
    env.pop("AzureWebJobsStorage", None)
    log = open(tmp_path / "devhost.log", "w")  # noqa: SIM115 - a file, not a pipe nobody drains
    proc = subprocess.Popen(
        [sys.executable, "-m", "devhost", "--app", "tests.devhost.devhost_sample_app:app", "--port", "0", "--azurite"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    log.close()
    try:
        assert proc.stdout is not None
        base = None
        for line in proc.stdout:
            if line.startswith("devhost: listening on "):
                base = line.split()[-1]
                break
        assert base, (tmp_path / "devhost.log").read_text()
        with urllib.request.urlopen(f"{base}/api/items/cli?x=1", timeout=30) as r:
            assert r.status == 200
            assert json.loads(r.read())["route_params"] == {"item_id": "cli"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
