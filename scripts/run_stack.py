"""``make run``: the whole local stack — Azurite, the simulator (Microsoft cloud) and devhost running function_app.

    .venv/bin/python scripts/run_stack.py [--once] [--scenario small|M|L|XL] [--seed N] [--port 7071]

Environment: ONCE=1 and SCENARIO=… are accepted too. Live mode provisions a demo tenant through the connector's HTTP
API and prints progress (polls, devices enrolled, heartbeats) until Ctrl-C. At start it writes the stack's app settings
to ``.run/stack.env`` (the operator CLI's default, ``python -m shared_code.cli``) and a console token to
``.run/console-token.txt``, and prints two ready ``curl`` commands. ``--once`` runs one full cycle (timers
fired once, queues drained, a threat report and an inventory request if those routes exist) and prints a JSON
summary as its LAST line, after everything is torn down. Exit codes: 0 ok, 1 a component failed to start, 2 bad
arguments. Features that are not there yet (404 routes, missing timers) report 0 instead of failing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

log = logging.getLogger("run_stack")

# ---- the connector API's shapes, kept in one place (openapi.yaml is the truth; adjust here when it changes) ----
PLATFORMS = ["iOS", "iPadOS", "Android"]


def provisioning_body(sim_tenant: dict[str, Any]) -> dict[str, Any]:
    """Body of ``PUT /api/tenants/{tenantId}`` for a simulator tenant summary."""
    return {"enrollmentGroups": list(sim_tenant["enrollment_groups"]), "platforms": PLATFORMS}


def threat_body() -> dict[str, Any]:
    """Body of ``PUT /api/tenants/{tenantId}/devices/{deviceId}/threat`` (openapi ThreatInput)."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {"level": "high", "detectedAt": now, "threats": ["run_stack demo threat"]}


INVENTORY_BODY: dict[str, Any] = {}
# Paging of GET /api/tenants/{id}/devices: openapi.yaml names the query parameter `cursor` and the list `items`, the
# implementation (shared_code/enrollment/service.py) reads `after` and answers `devices`; both lists are accepted.
DEVICES_CURSOR_PARAM = "after"
DEVICES_PAGE_SIZE = 1000  # openapi `limit` maximum
# Timers fired by --once, in this order; any other timer of the app is fired afterwards.
ONCE_TIMERS = ("dispatch_polls", "send_heartbeats", "poll_upload_results")
# Live demo schedules (NCRONTAB, UTC) used when the environment does not set them: fast enough to watch.
LIVE_SCHEDULES = {
    "POLL_SCHEDULE": "*/30 * * * * *",
    "HEARTBEAT_SCHEDULE": "*/30 * * * * *",
    "UPLOAD_RESULTS_SCHEDULE": "*/10 * * * * *",
}
DRAIN_TIMEOUT = {"small": 120.0, "M": 300.0, "L": 1200.0, "XL": 3600.0}
SIM_START_TIMEOUT = {"small": 60.0, "M": 120.0, "L": 600.0, "XL": 1800.0}


class StackError(RuntimeError):
    """A component of the stack failed to start (exit code 1)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/run_stack.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--once", action="store_true", default=os.environ.get("ONCE", "") not in ("", "0"),
                   help="one full cycle, then exit with a JSON summary as the last line (env ONCE=1)")
    p.add_argument("--scenario", default=os.environ.get("SCENARIO") or "small",
                   help="simulator scenario of the demo tenant: small, M, L, XL (env SCENARIO)")
    p.add_argument("--seed", type=int, default=int(os.environ.get("SEED", "1")))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7071")),
                   help="devhost HTTP port (0 = any free port; default 7071)")
    p.add_argument("--app", default="function_app:app")
    p.add_argument("--interval", type=float, default=5.0, help="live mode: seconds between progress lines")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (logs, Azurite data) on exit")
    p.add_argument("--verbose", action="store_true", help="log every function invocation")
    p.add_argument("--state-dir", default=os.environ.get("RUN_STATE_DIR") or str(ROOT / ".run"),
                   help="where stack.env and console-token.txt are written (default .run/)")
    args = p.parse_args(argv)
    if args.scenario not in DRAIN_TIMEOUT:
        p.error(f"--scenario must be one of {sorted(DRAIN_TIMEOUT)}, got {args.scenario!r}")
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be 0..65535, got {args.port}")
    return args


def base_settings() -> dict[str, str]:
    """The app settings a developer's ``func start`` would have: local.settings.json(.example) ``Values``.

    Placeholders (``<...>``) are dropped; the simulator/Azurite values set by :func:`build_env` win anyway.
    """
    from devhost.config import load_local_settings

    values: dict[str, str] = {}
    for name in ("local.settings.json.example", "local.settings.json"):
        path = ROOT / name
        if path.exists():
            values.update({k: v for k, v in load_local_settings(path).items() if not v.startswith("<")})
    return values


def build_env(info: dict[str, Any], storage: str) -> dict[str, str]:
    """App settings for the connector from the simulator's info file and Azurite (ARCHITECTURE §5 names)."""
    env = base_settings()
    env |= {
        "AzureWebJobsStorage": storage,
        "CONNECTOR_CLIENT_ID": info["connector"]["client_id"],
        "CONNECTOR_CLIENT_SECRET": info["connector"]["client_secret"],
        "KEY_VAULT_URL": info["key_vault_url"],
        "CONNECTOR_SECRET_NAME": info["connector"]["secret_name"],
        # The cloud the simulator impersonates (SIMULATOR_CLOUD=usgov make run): token scopes follow it.
        "AZURE_CLOUD": info.get("cloud", "public"),
        "AZURE_AUTHORITY_HOST": info["authority"],
        "GRAPH_BASE_URL": info["graph_base_url"],
        "INTUNE_RESOURCE": info["intune_resource"],
        "INTUNE_SERVICE_DOMAINS": info["intune_service_domains"],
        "CONSOLE_API_AUDIENCE": info["console"]["audience"],
        "CONSOLE_API_TENANT_ID": info["console"]["tenant_id"],
        "CONSOLE_ALLOWED_CLIENT_IDS": info["console"]["client_id"],
        "REQUESTS_CA_BUNDLE": info["ca_path"],
        "SSL_CERT_FILE": info["ca_path"],
    }
    # Who reads the vault locally (there is no managed identity): the connector app in the vendor's own tenant with
    # its certificate, via azure-identity's EnvironmentCredential variable names (shared_code/adapters/keyvault.py).
    connector = info["connector"]
    if connector.get("certificate_path"):
        env["AZURE_TENANT_ID"] = connector.get("home_tenant_id") or info["console"]["tenant_id"]
        env["AZURE_CLIENT_ID"] = connector["client_id"]
        env["AZURE_CLIENT_CERTIFICATE_PATH"] = connector["certificate_path"]
    for name, schedule in LIVE_SCHEDULES.items():
        env[name] = os.environ.get(name) or schedule
    return env


def _items(payload: Any) -> list[dict[str, Any]]:
    """List items of a collection response (a bare list, or under value/items/devices)."""
    if isinstance(payload, list):
        return [x for x in payload if isinstance(x, dict)]
    if isinstance(payload, dict):
        for k in ("value", "items", "devices"):
            if isinstance(payload.get(k), list):
                return [x for x in payload[k] if isinstance(x, dict)]
    return []


def _next_cursor(payload: Any) -> str | None:
    """The opaque ``next`` cursor of a page (openapi DevicePage), if any."""
    if isinstance(payload, dict) and isinstance(payload.get("next"), str) and payload["next"]:
        return str(payload["next"])
    return None


def _device_id(device: dict[str, Any]) -> str | None:
    """The id the connector's device routes take (openapi Device: ``deviceId``, else ``id``)."""
    for key in ("deviceId", "id"):
        if isinstance(device.get(key), str) and device[key]:
            return str(device[key])
    return None


def _field(r: httpx.Response, name: str) -> Any:
    """A top-level field of a JSON object response (None if absent or not JSON)."""
    try:
        data = r.json()
    except ValueError:
        return None
    return data.get(name) if isinstance(data, dict) else None


def _enrolled_from_status(tenant: dict[str, Any] | None) -> int | None:
    """``status.counts.enrolled`` of ``GET /api/tenants/{id}`` (openapi Tenant), when the connector reports it."""
    status = (tenant or {}).get("status")
    counts = status.get("counts") if isinstance(status, dict) else None
    value = counts.get("enrolled") if isinstance(counts, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Stack:
    """Owns the three components and tears them down in reverse order."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="mtd-run-"))
        self.azurite: Any = None
        self.sim_proc: Any = None
        self.info: dict[str, Any] = {}
        self.host: Any = None
        self.sim: httpx.AsyncClient | None = None
        self.api: httpx.AsyncClient | None = None
        self.tenants: list[dict[str, Any]] = []
        self.token = ""
        self.notes: dict[str, Any] = {}

    # ---------------------------------------------------------------- start
    async def start(self) -> None:
        from devhost import AzuriteError, DevHost, DevHostError, load_app, start_azurite
        from simulator import launch

        scenario = self.args.scenario
        t0 = time.monotonic()
        try:
            self.azurite = await asyncio.to_thread(start_azurite, self.workdir / "azurite")
        except AzuriteError as exc:
            raise StackError(f"Azurite failed to start: {exc}") from exc
        self.notes["azurite_start_s"] = round(self.azurite.startup_seconds, 2)
        progress(f"Azurite ready in {self.azurite.startup_seconds:.2f}s (queue port {self.azurite.queue_port})")

        t1 = time.monotonic()
        try:
            self.info, self.sim_proc = await asyncio.to_thread(
                launch.start, self.workdir / "simulator", scenario=scenario, tenants=1, seed=self.args.seed,
                timeout=SIM_START_TIMEOUT[scenario],
            )
        except Exception as exc:
            raise StackError(f"simulator failed to start: {exc}") from exc
        self.notes["simulator_start_s"] = round(time.monotonic() - t1, 2)
        self.sim = httpx.AsyncClient(base_url=self.info["base_url"], verify=self.info["ca_path"], timeout=120)
        self.tenants = list(self.info.get("tenants") or [])
        if not self.tenants:
            r = await self.sim.post("/_sim/tenants", json={"scenario": scenario, "seed": self.args.seed})
            if r.status_code != 200:
                raise StackError(f"simulator refused to create a {scenario} tenant: {r.status_code} {r.text}")
            self.tenants = [r.json()]
        first = self.tenants[0]
        progress(f"simulator ready at {self.info['base_url']} in {self.notes['simulator_start_s']}s; "
                 f"demo tenant {first['tenant_id']} ({scenario}, groups {first['enrollment_groups']})")

        env = build_env(self.info, self.azurite.connection_string)
        # The app reads settings from the environment, possibly at import time: export before importing it.
        os.environ.update(env)
        try:
            app = load_app(self.args.app)
            self.host = DevHost(
                app, env, port=self.args.port, host_json=ROOT / "host.json", enable_timers=not self.args.once,
                max_polling_interval=2.0,
            )
            await self.host.start()
        except DevHostError as exc:
            raise StackError(f"devhost failed to start {self.args.app}: {exc}") from exc
        self.api = httpx.AsyncClient(base_url=self.host.base_url, timeout=300)
        progress(f"devhost serving {len(self.host.functions)} functions on {self.host.base_url}")
        for line in self.host.describe():
            progress(f"  {line}")

        r = await self.sim.post("/_sim/tokens/console", json={"roles": ["Console.Manage", "Console.Read"]})
        if r.status_code != 200:
            raise StackError(f"simulator did not mint a console token: {r.status_code} {r.text}")
        self.token = r.json()["access_token"]
        self.notes["stack_start_s"] = round(time.monotonic() - t0, 2)
        self.write_access(env)

    def write_access(self, env: dict[str, str]) -> None:
        """Write the settings for the CLI and a console token, and print how to try the API."""
        import jwt

        from shared_code.cli import write_env_file

        state = Path(self.args.state_dir)
        write_env_file(state / "stack.env", env)
        token_file = state / "console-token.txt"
        token_file.write_text(self.token + "\n")
        token_file.chmod(0o600)
        expires = datetime.fromtimestamp(int(jwt.decode(self.token, options={"verify_signature": False})["exp"]), UTC)
        tid = self.tenants[0]["tenant_id"]
        auth = f'-H "Authorization: Bearer $(cat {token_file})"'
        progress(f"console token (Console.Manage + Console.Read, valid until {expires:%H:%M} UTC) in {token_file}; "
                 "try:")
        progress(f"  curl -s {auth} {self.host.base_url}/api/tenants/{tid}")
        progress(f'  curl -s -X POST {auth} "{self.host.base_url}/api/tenants/{tid}/sync?dryRun=true"')
        progress(f"operator CLI against this stack (settings in {state / 'stack.env'}): "
                 f"{sys.executable} -m shared_code.cli tenants")

    async def stop(self) -> None:
        from simulator import launch

        if self.host is not None:
            with contextlib.suppress(Exception):
                await self.host.stop()
        for client in (self.api, self.sim):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        if self.sim_proc is not None:
            with contextlib.suppress(Exception):
                launch.stop(self.sim_proc)
        if self.azurite is not None:
            self.azurite.stop()
        if self.args.keep:
            print(f"kept {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ---------------------------------------------------------------- API helpers
    async def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        assert self.api is not None
        headers = {"Authorization": f"Bearer {self.token}", **kw.pop("headers", {})}
        return await self.api.request(method, path, headers=headers, **kw)

    async def provision(self) -> int:
        ok = 0
        for t in self.tenants:
            r = await self.call("PUT", f"/api/tenants/{t['tenant_id']}", json=provisioning_body(t))
            if r.status_code < 300:
                ok += 1
                progress(f"provisioned tenant {t['tenant_id']}: HTTP {r.status_code}")
            else:
                progress(f"provisioning tenant {t['tenant_id']} answered HTTP {r.status_code} "
                         f"{'(route not there yet)' if r.status_code == 404 else r.text[:200]}")
        return ok

    async def tenant_status(self, tid: str) -> dict[str, Any] | None:
        r = await self.call("GET", f"/api/tenants/{tid}")
        if r.status_code != 200:
            return None
        with contextlib.suppress(ValueError):
            data = r.json()
            return data if isinstance(data, dict) else None
        return None

    async def devices(self, tid: str, limit_pages: int = 1000) -> list[dict[str, Any]] | None:
        """Enrolled devices from ``GET /api/tenants/{id}/devices`` (all pages); None if the route is absent."""
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        cursor: str | None = None
        for _ in range(limit_pages):
            params = {"limit": str(DEVICES_PAGE_SIZE), **({DEVICES_CURSOR_PARAM: cursor} if cursor else {})}
            r = await self.call("GET", f"/api/tenants/{tid}/devices", params=params)
            if r.status_code != 200:
                return out or None
            try:
                payload = r.json()
            except ValueError:
                return None
            page = [d for d in _items(payload) if str(d.get("id")) not in seen]
            if not page:
                break  # a cursor that does not advance must not loop forever
            seen.update(str(d.get("id")) for d in page)
            out.extend(page)
            cursor = _next_cursor(payload)
            if cursor is None:
                break
        return out

    async def devices_enrolled(self, tid: str) -> int:
        """``status.counts.enrolled`` of the tenant, else the enrolled devices counted from the devices route."""
        n = _enrolled_from_status(await self.tenant_status(tid))
        if n is not None:
            self.notes["devices_enrolled_source"] = "status.counts"
            return n
        devs = await self.devices(tid)
        if not devs:
            return 0
        self.notes["devices_enrolled_source"] = "devices route"
        states = [str(d.get("state", "enrolled")).lower() for d in devs]
        return sum(1 for s in states if s in ("enrolled", "active"))

    async def devices_expected(self, t: dict[str, Any]) -> int:
        assert self.sim is not None
        params = [("groups", g) for g in t["enrollment_groups"]] + [("platforms", ",".join(PLATFORMS))]
        r = await self.sim.get(f"/_sim/tenants/{t['tenant_id']}/truth", params=params)
        return len(r.json().get("devices", [])) if r.status_code == 200 else 0

    async def intune_snapshot(self, tid: str) -> dict[str, Any]:
        assert self.sim is not None
        r = await self.sim.get(f"/_sim/intune/{tid}")
        return r.json() if r.status_code == 200 else {}

    async def fire(self, name: str) -> bool:
        """Run one timer now and drain the queues it fed; False if it failed."""
        from devhost import InvocationError

        ok = True
        try:
            await self.host.run_timer(name)
        except InvocationError as exc:
            ok = False
            progress(f"timer {name} failed: {exc.__cause__!r}")
        await self.drain()
        return ok

    async def drain(self) -> None:
        try:
            await self.host.drain_queues(timeout=DRAIN_TIMEOUT[self.args.scenario])
        except TimeoutError as exc:
            progress(f"queues not drained: {exc}")
            self.notes["drain_timeouts"] = self.notes.get("drain_timeouts", 0) + 1

    # ---------------------------------------------------------------- modes
    async def once(self) -> dict[str, Any]:
        t0 = time.monotonic()
        provisioned = await self.provision()
        await self.drain()
        timers = list(self.host.timer_names)
        order = [n for n in ONCE_TIMERS if n in timers] + sorted(n for n in timers if n not in ONCE_TIMERS)
        fired: dict[str, bool] = {}
        for name in order:
            if name == "poll_upload_results":
                continue  # after the threat/inventory requests below
            fired[name] = await self.fire(name)

        t = self.tenants[0]
        tid = t["tenant_id"]
        devices = await self._some_devices(t)
        threat_dev = _device_id(devices[0]) if devices else None
        # App Sync (inventory) exists for iOS/iPadOS only (reference/intune.md; the simulator enforces it).
        inv_dev = next((_device_id(d) for d in devices if d.get("operatingSystem") in ("iOS", "iPadOS")), None)
        threat_ok = inventories = 0
        inventory_requested = False
        extra: dict[str, Any] = {}
        if threat_dev:
            r = await self.call("PUT", f"/api/tenants/{tid}/devices/{threat_dev}/threat", json=threat_body())
            threat_ok = int(r.status_code < 300)
            progress(f"threat report for device {threat_dev}: HTTP {r.status_code}")
        else:
            progress("no device to report a threat for (nothing enrolled yet)")
        if inv_dev:
            r = await self.call("POST", f"/api/tenants/{tid}/devices/{inv_dev}/inventory", json=INVENTORY_BODY)
            inventory_requested = r.status_code < 300
            progress(f"inventory request for iOS/iPadOS device {inv_dev}: HTTP {r.status_code}")
        if threat_ok or inventory_requested:
            await self.drain()
            await self._settle_intune(tid)
        if "poll_upload_results" in timers:
            fired["poll_upload_results"] = await self.fire("poll_upload_results")
        if threat_ok:
            r = await self.call("GET", f"/api/tenants/{tid}/devices/{threat_dev}/threat")
            extra["threat_status"] = _field(r, "status")
        if inventory_requested:
            r = await self.call("GET", f"/api/tenants/{tid}/devices/{inv_dev}/inventory")
            status = _field(r, "requestStatus")
            # Fetched = Intune answered the App Sync request (openapi UploadStatus: Succeeded is final and good).
            inventories = int(r.status_code == 200 and status == "Succeeded")
            extra["inventory_status"] = status
            extra["inventory_apps"] = _field(r, "appCount")
            if status != "Succeeded":
                extra["inventory_error"] = _field(r, "requestError")
            progress(f"inventory fetch for device {inv_dev}: HTTP {r.status_code}, requestStatus {status}")

        snapshot = await self.intune_snapshot(tid)
        counters = self.host.counters()
        return {
            "tenants": provisioned,
            "devices_enrolled": sum([await self.devices_enrolled(x["tenant_id"]) for x in self.tenants]),
            "devices_expected": sum([await self.devices_expected(x) for x in self.tenants]),
            "heartbeats_sent": int(snapshot.get("heartbeat_count") or 0),
            "threat_reports_accepted": threat_ok,
            "inventories_fetched": inventories,
            "scenario": self.args.scenario,
            "intune_status": snapshot.get("status"),
            "timers_fired": fired,
            "invocations": sum(c["invocations"] for c in counters.values()),
            "function_failures": {n: c["failures"] for n, c in counters.items() if c["failures"]},
            "poisoned": {n: c["poisoned"] for n, c in counters.items() if c["poisoned"]},
            **extra,
            "cycle_s": round(time.monotonic() - t0, 2),
            **self.notes,
        }

    async def _some_devices(self, t: dict[str, Any]) -> list[dict[str, Any]]:
        """Enrolled devices; without a devices route, the devices the simulator says should be enrolled."""
        devs = await self.devices(t["tenant_id"])
        if devs is None and self.sim is not None:
            r = await self.sim.get(f"/_sim/tenants/{t['tenant_id']}/truth")
            devs = r.json().get("devices", []) if r.status_code == 200 else []
        return [d for d in devs or [] if _device_id(d)]

    async def _settle_intune(self, tid: str) -> None:
        """Let the simulated Intune finish processing uploads (simulated clock) before results are polled."""
        assert self.sim is not None
        seconds = int((await self.intune_snapshot(tid)).get("config", {}).get("processing_seconds") or 0)
        if seconds:
            await self.sim.post("/_sim/clock/advance", json={"seconds": seconds + 1})

    async def live(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.provision()
        first_poll = None
        if "dispatch_polls" in self.host.timer_names:
            first_poll = asyncio.create_task(self.fire("dispatch_polls"))  # a first poll now, not at the next tick
        progress("live: timers on their schedules "
                 + ", ".join(f"{k}={v}" for k, v in LIVE_SCHEDULES.items() if k in os.environ)
                 + " — Ctrl-C to stop")
        t0 = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.args.interval)
            if stop.is_set():
                break
            c = self.host.counters()
            parts = [f"t+{time.monotonic() - t0:.0f}s"]
            for name in (*ONCE_TIMERS, "poll_tenant"):
                if name in c:
                    parts.append(f"{name}={c[name]['successes']}" + (f"/{c[name]['failures']}✗"
                                                                     if c[name]["failures"] else ""))
            for t in self.tenants:
                snap = await self.intune_snapshot(t["tenant_id"])
                parts.append(f"devices={await self.devices_enrolled(t['tenant_id'])}/"
                             f"{await self.devices_expected(t)}")
                parts.append(f"heartbeats={snap.get('heartbeat_count', 0)} intune={snap.get('status', '?')}")
            with contextlib.suppress(Exception):
                queued = await self.host.queue_counts()
                parts.append("queues=" + ",".join(f"{k}:{v}" for k, v in queued.items() if v) if any(
                    queued.values()) else "queues=empty")
            progress(" ".join(parts))
        if first_poll is not None and not first_poll.done():
            first_poll.cancel()


def progress(line: str) -> None:
    print(line, flush=True)


async def amain(args: argparse.Namespace) -> int:
    stack = Stack(args)
    summary: dict[str, Any] | None = None
    try:
        await stack.start()
        if args.once:
            summary = await stack.once()
        else:
            await stack.live()
    except StackError as exc:
        print(f"run_stack: error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        await stack.stop()
    if summary is not None:
        # Last line of the run, after teardown, so nothing can print after it.
        print(json.dumps(summary, sort_keys=False), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("azure", "msal", "urllib3", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
