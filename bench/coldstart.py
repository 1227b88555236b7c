"""Cold start of the function app: process start → first HTTP response, → first Graph response of a poll; idle RSS;
what the HTTP path imports.

Each measurement starts a **fresh** ``python -m devhost`` process running ``function_app.py`` (what a new Functions
instance does: import the app, index it, serve) with the app settings of ``make run``:

* *HTTP*: from ``Popen`` to the first ``200`` of ``GET /api/health`` (polled every 5 ms on a port chosen up front), and
  to the first answer of an authenticated console call (``GET /api/tenants/{id}``: JWT validation, JWKS, a table
  read). Idle RSS (``VmRSS`` of the process) 2 s after that.
* *Poll*: a poll message for a provisioned tenant is put on the queue before the process starts (the message
  ``dispatch_polls`` would send); the time is from ``Popen`` to the simulator's first Graph request for that tenant
  (its counters, read every 5 ms: the response leaves the simulator at that moment, ± 5 ms).
* *Imports*: the same HTTP run with ``-X importtime``; every module is attributed to the stage at which it was imported
  (start-up before the first response, the first health call, the first console call), and the heavy packages
  (msgraph, kiota, azure.identity, azure.keyvault, cryptography, …) are listed with their cumulative import time.
  The importtime run is slower; its times are only used to rank imports.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("msgraph", "msgraph_core", "kiota_abstractions", "kiota_http", "kiota_authentication_azure",
         "kiota_serialization_json", "azure.identity", "azure.keyvault", "azure.data.tables", "azure.storage.queue",
         "msal", "cryptography", "jwt", "aiohttp", "httpx", "orjson")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_rss_mb(pid: int, field: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


class DevhostProcess:
    """``python -m devhost`` in a fresh process on a known port; stderr lines kept with their arrival time."""

    def __init__(self, env: dict[str, str], *, importtime: bool = False) -> None:
        self.port = _free_port()
        full = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "devhost", "--app",
               "function_app:app", "--port", str(self.port), "--no-timers", "--host-json", str(ROOT / "host.json"),
               "--log-level", "WARNING"]
        self.lines: list[tuple[float, str]] = []
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.perf_counter(), line.rstrip("\n")))

    def elapsed(self) -> float:
        """Seconds since Popen."""
        return time.perf_counter() - self.t0

    def stop(self) -> None:
        """Terminate the process (SIGTERM: devhost stops cleanly) and wait."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def first_ok(client: httpx.Client, url: str, limit_s: float, **kw: Any) -> tuple[float, int]:
    """Poll ``url`` until it answers (any status); returns (perf_counter time, status)."""
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        try:
            r = client.get(url, **kw)
            return time.perf_counter(), r.status_code
        except httpx.TransportError:
            time.sleep(0.005)
    raise TimeoutError(f"no answer from {url} within {limit_s} s")


def measure(info: dict[str, Any], azurite: Any, tenant: dict[str, Any], log: Any = print) -> dict[str, Any]:
    """All cold-start figures (see the module docstring)."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.queue import QueueClient, TextBase64EncodePolicy

    from bench.stack import PLATFORMS, stack_env

    prefix = f"c{os.urandom(5).hex()}"
    env = stack_env({"info": info, "connection_string": azurite.connection_string, "table_prefix": prefix})
    tid = tenant["tenant_id"]
    admin = httpx.Client(base_url=info["base_url"], timeout=120,
                         verify=ssl.create_default_context(cafile=info["ca_path"]))
    token = admin.post("/_sim/tokens/console", json={"roles": ["Console.Manage", "Console.Read"]}).json()
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    out: dict[str, Any] = {}
    try:
        # 1. HTTP: health, then the first console call (also provisions the tenant for the poll run).
        runs = []
        for i in range(3):
            p = DevhostProcess(env)
            try:
                with httpx.Client(timeout=60, trust_env=False) as http:
                    t_health, _ = first_ok(http, f"http://127.0.0.1:{p.port}/api/health", 60)
                    if i == 0:
                        put = http.put(f"http://127.0.0.1:{p.port}/api/tenants/{tid}", headers=auth,
                                       json={"enrollmentGroups": tenant["enrollment_groups"], "platforms": PLATFORMS})
                        put.raise_for_status()
                    t_api0 = time.perf_counter()
                    r = http.get(f"http://127.0.0.1:{p.port}/api/tenants/{tid}", headers=auth)
                    t_api = time.perf_counter()
                    r.raise_for_status()
                rss_first = _proc_rss_mb(p.proc.pid)
                time.sleep(2)
                runs.append({"first_http_s": round(t_health - p.t0, 3),
                             "first_console_call_s": round(t_api - t_api0, 3),
                             "rss_after_first_response_mb": rss_first, "idle_rss_mb": _proc_rss_mb(p.proc.pid)})
            finally:
                p.stop()
        out["http"] = runs
        log(f"  cold start HTTP: {[r['first_http_s'] for r in runs]} s to the first response, idle RSS "
            f"{[r['idle_rss_mb'] for r in runs]} MiB")

        # 2. Poll: the message is waiting when the process starts.
        from shared_code.enrollment.service import PollMessage

        polls = []
        for _ in range(3):
            admin.post("/_sim/counters/reset")
            with QueueClient.from_connection_string(azurite.connection_string, env["POLL_QUEUE_NAME"],
                                                    message_encode_policy=TextBase64EncodePolicy()) as q:
                with contextlib.suppress(ResourceExistsError):  # it exists after the first run
                    q.create_queue()
                q.send_message(PollMessage(tid, "scheduled", full=True, enqueued_at=time.time()).to_json())
            p = DevhostProcess(env)
            try:
                first_graph = None
                deadline = time.perf_counter() + 120
                while time.perf_counter() < deadline:
                    data = admin.get("/_sim/counters", params={"tenant": tid}).json().get(tid) or {}
                    graph = sum(c["requests"] for label, c in (data.get("routes") or {}).items()
                                if label.startswith("/v1.0") or label.startswith("batch:"))
                    if graph:
                        first_graph = p.elapsed()
                        break
                    time.sleep(0.005)
                polls.append({"first_graph_response_s": round(first_graph, 3) if first_graph else None})
                # Let the poll finish so the next run starts from a quiet queue.
                deadline = time.perf_counter() + 300
                while time.perf_counter() < deadline:
                    with QueueClient.from_connection_string(azurite.connection_string, env["POLL_QUEUE_NAME"]) as q:
                        if not q.get_queue_properties().approximate_message_count:
                            break
                    time.sleep(0.2)
                time.sleep(1)
            finally:
                p.stop()
        out["poll"] = polls
        log(f"  cold start poll: {[r['first_graph_response_s'] for r in polls]} s to the first Graph response")

        # What the app itself costs at start-up, apart from devhost (the Functions host is not Python in Azure).
        probe = ("import time; t = time.perf_counter(); import function_app; "
                 "print(round(time.perf_counter() - t, 3))")
        bare = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            interp = time.perf_counter() - t0
            app_import = float(subprocess.run([sys.executable, "-c", probe], cwd=str(ROOT), check=True, text=True,
                                              capture_output=True, env={**os.environ, **env}).stdout.strip())
            bare.append({"interpreter_start_s": round(interp, 3), "import_function_app_s": app_import})
        out["app_import"] = bare
        log(f"  import function_app: {[b['import_function_app_s'] for b in bare]} s; bare interpreter "
            f"{[b['interpreter_start_s'] for b in bare]} s")

        # 3. What gets imported, and when: start-up, the first console call, the first poll.
        p = DevhostProcess(env, importtime=True)
        try:
            with httpx.Client(timeout=60, trust_env=False) as http:
                t_health, _ = first_ok(http, f"http://127.0.0.1:{p.port}/api/health", 120)
                time.sleep(0.3)
                t_mark = time.perf_counter()
                http.get(f"http://127.0.0.1:{p.port}/api/tenants/{tid}", headers=auth).raise_for_status()
                time.sleep(0.3)
                t_api = time.perf_counter()
                admin.post("/_sim/counters/reset")
                with QueueClient.from_connection_string(azurite.connection_string, env["POLL_QUEUE_NAME"],
                                                        message_encode_policy=TextBase64EncodePolicy()) as q:
                    q.send_message(PollMessage(tid, "scheduled", full=True, enqueued_at=time.time()).to_json())
                deadline = time.perf_counter() + 120
                while time.perf_counter() < deadline:
                    data = admin.get("/_sim/counters", params={"tenant": tid}).json().get(tid) or {}
                    if any(label.startswith("/v1.0") for label in (data.get("routes") or {})):
                        break
                    time.sleep(0.05)
                time.sleep(0.3)
                t_poll = time.perf_counter()
        finally:
            p.stop()
        out["imports"] = imports_report(p.lines, {"start-up (before the first response)": (p.t0, t_health),
                                                  "first console call": (t_mark, t_api),
                                                  "first poll (to its first Graph response)": (t_api, t_poll)})
    finally:
        admin.close()
    return out


def imports_report(lines: list[tuple[float, str]], stages: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Per stage: the slowest top-level imports and the heavy packages (any depth), cumulative seconds."""
    out: dict[str, Any] = {}
    for stage, (lo, hi) in stages.items():
        top: list[tuple[str, float]] = []
        heavy: dict[str, float] = {}
        total = 0.0
        for when, line in lines:
            if not (lo <= when <= hi) or not line.startswith("import time:") or line.count("|") != 2:
                continue
            _, cumulative, raw = line[len("import time:"):].split("|")
            if not cumulative.strip().isdigit():
                continue
            seconds = int(cumulative) / 1e6
            name = raw.rstrip()
            mod = name.strip()
            if len(name) - len(name.lstrip()) <= 1:  # importtime indents nested imports by two spaces per level
                total += seconds
                top.append((mod, round(seconds, 3)))
            if mod in HEAVY:
                heavy[mod] = round(heavy.get(mod, 0.0) + seconds, 3)
        top.sort(key=lambda kv: -kv[1])
        out[stage] = {"total_s": round(total, 3), "top": top[:10], "heavy": heavy}
    return {"stages": out,
            "note": "-X importtime run (slower than a plain start): cumulative seconds, to rank imports"}
